"""CausalImportanceCallback: values equal a hand-written ablation; logs, plot, state; training untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lens_train.callbacks import CausalImportanceCallback
from lens_train.errors import EditError, InvalidArgumentError
from lens_train.train.importance import layer_importance
from tests.callbacks.lit_models import LitNet, assert_same_weights, fit, loaders, trainer


def _by_hand(module: LitNet, layer: str, metric: str) -> tuple[float, float]:
    """(baseline, ablated) with a forward hook that mean-ablates ``layer``, eval mode, no grad."""
    x, y = next(iter(loaders()[1]))  # the first validation batch
    score = (lambda out: (out.argmax(-1) == y).float().mean().item()) if metric == "accuracy" else \
        (lambda out: F.cross_entropy(out, y).item())
    module.eval()
    with torch.no_grad():
        base = score(module(x))
        hook = module.net.get_submodule(layer).register_forward_hook(lambda m, i, o: o * 0 + o.mean(0, keepdim=True))
        ablated = score(module(x))
        hook.remove()
    module.train()
    return base, ablated


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_importance_equals_a_hand_written_ablation_and_is_logged(tmp_path, metric: str) -> None:
    module = LitNet(batchnorm=True)
    cb = CausalImportanceCallback(layers=["layer1", "layer2"], metric=metric)
    t = fit(tmp_path, module, [cb], max_epochs=2)
    assert [e["epoch"] for e in cb.history] == [0, 1] and [e["step"] for e in cb.history] == [4, 8]
    for layer in ("layer1", "layer2"):
        base, ablated = _by_hand(module, layer, metric)
        expected = base - ablated if metric == "accuracy" else ablated - base
        assert cb.history[-1]["importance"][layer] == pytest.approx(expected, abs=1e-5)
        assert float(t.logged_metrics[f"importance/{layer}"]) == pytest.approx(expected, abs=1e-5)
    assert cb.history[-1]["baseline"] == pytest.approx(base, abs=1e-5)
    assert (cb.directory / "plots" / "importance.png").stat().st_size > 1000
    assert (cb.directory / "importance" / "reference_targets.safetensors").is_file()


def test_measuring_leaves_training_untouched(tmp_path) -> None:
    torch.manual_seed(0)
    a, b = LitNet(batchnorm=True, dropout=0.3), LitNet(batchnorm=True, dropout=0.3)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    fit(tmp_path / "a", a, [CausalImportanceCallback(layers=["layer1", "layer2", "head"], ablation="zero")])
    torch.manual_seed(1)
    fit(tmp_path / "b", b)
    assert_same_weights(a, b)  # BatchNorm statistics and the dropout RNG included
    assert all(not m._forward_hooks for m in a.modules())


def test_every_n_epochs_and_the_history_survive_a_checkpoint(tmp_path) -> None:
    cb = CausalImportanceCallback(layers=["layer1"], every_n_epochs=2)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, LitNet(), [cb, ckpt], max_epochs=4, enable_checkpointing=True)
    assert [e["epoch"] for e in cb.history] == [1, 3]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    (state,) = [v for k, v in saved.items() if k.startswith("CausalImportanceCallback")]
    assert state["history"] == cb.history
    resumed = CausalImportanceCallback(layers=["layer1"], every_n_epochs=2)
    train, val = loaders()
    trainer(tmp_path / "resumed", [resumed], max_epochs=6).fit(LitNet(), train, val,
                                                               ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [e["epoch"] for e in resumed.history] == [1, 3, 5]
    assert resumed.history[:2] == cb.history


def test_layer_importance_leaves_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5),
                                torch.nn.Linear(8, 3)).train()
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    base, drops = layer_importance(model, x, y, ["0", "1"], "zero", "loss")
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    assert torch.equal(rng, torch.get_rng_state())
    assert set(drops) == {"0", "1"} and base > 0


def test_constructor_validation() -> None:
    with pytest.raises(InvalidArgumentError, match="every_n_epochs must be a positive int"):
        CausalImportanceCallback(layers=["a"], every_n_epochs=0)
    with pytest.raises(InvalidArgumentError, match="metric must be one of"):
        CausalImportanceCallback(layers=["a"], metric="f1")
    with pytest.raises(EditError, match="Unknown edit 'zeros'"):
        CausalImportanceCallback(layers=["a"], ablation="zeros")
    with pytest.raises(InvalidArgumentError, match="layers must be"):
        CausalImportanceCallback(layers=[])
