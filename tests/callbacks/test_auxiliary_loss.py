"""AuxiliaryLossCallback: real Trainer runs against a hand-written training_step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from tests.callbacks.lit_models import LitNet, assert_same_weights, fit, loaders, trainer, weights

import lens_train as lt
from lens_train.callbacks import AuxiliaryLossCallback
from lens_train.errors import InvalidArgumentError
from lens_train.train.schedules import linear_warmup


class RecordInitial(pl.Callback):
    """Copies the auxiliary heads as they are when training starts."""

    def __init__(self, cb: AuxiliaryLossCallback) -> None:
        self.cb = cb
        self.initial: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.initial = {k: v.detach().clone() for k, v in self.cb.aux.state_dict().items()}


class HandAux(LitNet):
    """The same loss, written by hand: deep supervision on layer1 with a head submodule."""

    def __init__(self, weight_at: Any, **kw: Any) -> None:
        super().__init__(**kw)
        self.aux_head = torch.nn.Linear(16, 3)
        self.weight_at = weight_at

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        h1 = self.net.layer1(x)
        loss = F.cross_entropy(self.net.head(self.net.layer2(h1)), y)
        aux = F.cross_entropy(self.aux_head(h1.float()).float(), y)
        return loss + self.weight_at(self.global_step) * aux


def run_pair(tmp_path: Any, weight: float = 0.3, schedule: Any = None, weight_at: Any = None,
             **trainer_kw: Any) -> tuple[LitNet, HandAux, AuxiliaryLossCallback]:
    torch.manual_seed(0)
    module = LitNet()
    start = weights(module)
    cb = AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)}, weight=weight, schedule=schedule)
    rec = RecordInitial(cb)
    fit(tmp_path / "cb", module, [cb, rec], **trainer_kw)
    hand = HandAux(weight_at or (lambda step: weight))
    hand.load_state_dict({**start, "aux_head.weight": rec.initial["terms.0.head.weight"],
                          "aux_head.bias": rec.initial["terms.0.head.bias"]})
    fit(tmp_path / "hand", hand, **trainer_kw)
    return module, hand, cb


def test_final_weights_equal_hand_written_step(tmp_path):
    module, hand, cb = run_pair(tmp_path)
    assert_same_weights(module.net, hand.net, atol=1e-5)
    assert torch.allclose(cb.aux.state_dict()["terms.0.head.weight"], hand.aux_head.weight, atol=1e-5)
    plain = LitNet()
    torch.manual_seed(0)
    plain = LitNet()
    fit(tmp_path / "plain", plain)
    assert not torch.allclose(plain.net.layer1[0].weight, module.net.layer1[0].weight, atol=1e-4)


def test_module_is_restored_and_its_checkpoint_stays_strict(tmp_path):
    module = LitNet()
    cb = AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)})
    fit(tmp_path, module, [cb])
    for name in ("training_step", "validation_step", "configure_optimizers"):
        assert name not in module.__dict__
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())
    assert set(module.state_dict()) == set(LitNet().state_dict())
    assert set(cb.state_dict()["aux"]) == {"terms.0.head.weight", "terms.0.head.bias"}


def test_logs_terms_and_total_without_rewriting_user_metrics(tmp_path):
    module = LitNet()
    cb = AuxiliaryLossCallback({"layer1": lt.losses.l1_activity()}, weight=0.5)
    t = fit(tmp_path, module, [cb], max_epochs=1)
    logged = t.logged_metrics
    assert {"train_loss", "lens/total_loss", "aux/layer1", "val/aux/layer1", "val_loss"} <= set(logged)
    total, user, term = (float(logged[k]) for k in ("lens/total_loss", "train_loss", "aux/layer1"))
    assert total == pytest.approx(user + term, rel=1e-5)
    assert float(logged["val/aux/layer1"]) > 0


def test_dict_returned_by_training_step(tmp_path):
    torch.manual_seed(0)
    a, b = LitNet(return_dict=True), LitNet()
    b.load_state_dict(a.state_dict())
    fit(tmp_path / "a", a, [AuxiliaryLossCallback({"layer2": lt.losses.l2_activation()}, weight=0.1)])
    fit(tmp_path / "b", b, [AuxiliaryLossCallback({"layer2": lt.losses.l2_activation()}, weight=0.1)])
    assert_same_weights(a, b)


def test_gradient_accumulation_with_global_step_schedule(tmp_path):
    warm = linear_warmup(3)
    module, hand, _ = run_pair(tmp_path, weight=1.0, schedule=warm, weight_at=warm, accumulate_grad_batches=2)
    assert_same_weights(module.net, hand.net, atol=1e-5)


def test_bf16_mixed_on_cpu(tmp_path):
    module = LitNet()
    cb = AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)}, weight=0.3)
    t = fit(tmp_path, module, [cb], max_epochs=1, precision="bf16-mixed")
    assert torch.isfinite(t.logged_metrics["aux/layer1"])
    assert cb.aux.terms[0].head.weight.dtype == torch.float32
    head_grad_seen = cb.aux.terms[0].head.weight.grad
    assert head_grad_seen is not None and head_grad_seen.abs().sum() > 0


def test_manual_optimization_raises_pointing_to_lens_module(tmp_path):
    class Manual(LitNet):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(InvalidArgumentError, match="LensModule"):
        fit(tmp_path, Manual(), [AuxiliaryLossCallback({"layer1": lt.losses.l1_activity()})])


def test_exception_in_step_restores_the_module(tmp_path):
    class Boom(LitNet):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            if batch_idx == 1:
                raise RuntimeError("boom")
            return super().training_step(batch, batch_idx)

    module = Boom()
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path, module, [AuxiliaryLossCallback({"layer1": lt.losses.l1_activity()})])
    assert "training_step" not in module.__dict__
    assert not any(m._forward_hooks for m in module.modules())


def test_heads_get_their_own_group_when_optimizer_skips_self_parameters(tmp_path):
    class NetOnly(LitNet):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.net.parameters(), lr=0.1)

    cb = AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)})
    rec = RecordInitial(cb)
    t = fit(tmp_path, NetOnly(), [cb, rec], max_epochs=1)
    assert len(t.optimizers[0].param_groups) == 2
    assert not torch.equal(rec.initial["terms.0.head.weight"], cb.aux.terms[0].head.weight)


def test_batches_without_targets_fail_naming_batch_to_targets(tmp_path):
    class Unlabelled(LitNet):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self(batch["pixels"]).square().mean()

    data = [{"pixels": x} for x, _ in loaders()[0].dataset]
    loader = torch.utils.data.DataLoader(data, batch_size=16)
    cb = AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)}, batch_to_input="pixels")
    t = trainer(tmp_path, [cb], max_epochs=1)
    with pytest.raises(InvalidArgumentError, match="batch_to_targets"):
        t.fit(Unlabelled(), loader)


def test_deep_supervision_head_accuracy_is_logged_in_validation(tmp_path):
    cb = AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3, hidden=8)}, weight=0.3)
    t = fit(tmp_path, LitNet(), [cb], max_epochs=2)
    acc = float(t.callback_metrics["val/aux/layer1/acc"])
    assert 0.0 <= acc <= 1.0 and "aux/layer1/acc" not in t.callback_metrics  # never a training term


@pytest.mark.slow
def test_shipped_deep_supervision_head_learns_blocks_1_of_the_digits_cnn(tmp_path):
    # The shipped term (flatten + MLP head) must use what blocks.1 knows; average pooling barely learned.
    from hydra import compose, initialize_config_dir

    from lens_train.cli import config_dir
    from lens_train.experiments import Classifier, DigitsCNN, DigitsDataModule
    from lens_train.experiments.builders import build_lens_callbacks

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["lens=[aux_loss]"])
    (cb,) = build_lens_callbacks(cfg.lens)
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[cb])
    trainer.fit(Classifier(DigitsCNN()), datamodule=DigitsDataModule())
    assert float(trainer.callback_metrics["val/aux/blocks.1/acc"]) > 0.9
