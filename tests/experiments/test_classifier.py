"""The experiments' LightningModule."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lens_train.errors import InvalidArgumentError
from lens_train.experiments import Classifier, DigitsMLP, SyntheticDataModule


def test_logged_metrics_match_manual_values(tmp_path) -> None:
    torch.manual_seed(0)
    dm = SyntheticDataModule(num_samples=200, num_classes=4, batch_size=200, val_fraction=0.2, test_fraction=0.2)
    module = Classifier(DigitsMLP(hidden=[16, 16], num_classes=4), num_classes=4, lr=1e-2)
    trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    trainer.fit(module, dm)
    result = trainer.test(module, dm, verbose=False)[0]
    x, y = dm.test_set.tensors
    with torch.no_grad():
        logits = module(x)
    assert result["test/loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert result["test/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert trainer.lr_scheduler_configs[0].interval == "step"


def test_checkpoint_round_trip_needs_the_net(tmp_path) -> None:
    module = Classifier(DigitsMLP(hidden=[8, 8]), num_classes=10, lr=0.01)
    trainer = L.Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, limit_val_batches=0)
    dm = SyntheticDataModule(num_samples=64)
    trainer.fit(module, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded = Classifier.load_from_checkpoint(path, net=DigitsMLP(hidden=[8, 8]), weights_only=False)
    assert loaded.hparams.lr == 0.01
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), loaded.state_dict().values()))


def test_bad_lr() -> None:
    with pytest.raises(InvalidArgumentError, match="model.lr"):
        Classifier(DigitsMLP(), lr=0)
