"""ProbeCallback: accuracy per layer, own optimizer, state in checkpoints."""

from __future__ import annotations

import pytest
import torch

from lens_train.callbacks import ProbeCallback
from lens_train.errors import InvalidArgumentError
from tests.callbacks.lit_models import LitNet, assert_same_weights, fit, loaders


@pytest.mark.slow
def test_probes_learn_and_log_train_and_val_accuracy(tmp_path):
    module = LitNet()
    cb = ProbeCallback(layers=["layer1", "layer2"], num_classes=3, lr=0.05)
    t = fit(tmp_path, module, [cb], max_epochs=8)
    logged = t.logged_metrics
    for layer in ("layer1", "layer2"):
        assert 0.7 < float(logged[f"probe/{layer}/train_acc"]) <= 1.0
        assert 0.0 <= float(logged[f"probe/{layer}/val_acc"]) <= 1.0
    # The logged validation accuracy is the probe's accuracy on the validation set.
    x, y = next(iter(loaders(batch_size=32)[1]))
    module.eval()
    with torch.no_grad():
        pred = cb.probes.heads["layer2"](module.net.layer2(module.net.layer1(x)))
    assert float(logged["probe/layer2/val_acc"]) == pytest.approx(float((pred.argmax(1) == y).float().mean()))


def test_probes_do_not_change_the_model(tmp_path):
    torch.manual_seed(0)
    a, b = LitNet(), LitNet()
    b.load_state_dict(a.state_dict())
    fit(tmp_path / "a", a, [ProbeCallback(layers=["layer1"], num_classes=3)])
    fit(tmp_path / "b", b)
    assert_same_weights(a, b)


def test_state_dict_round_trip(tmp_path):
    cb = ProbeCallback(layers=["layer1"], num_classes=3)
    fit(tmp_path, LitNet(), [cb], max_epochs=1)
    state = cb.state_dict()
    other = ProbeCallback(layers=["layer1"], num_classes=3)
    other.load_state_dict(state)
    other.build(LitNet(), torch.zeros(2, 8))
    assert torch.equal(other.probes.heads["layer1"].body.weight, cb.probes.heads["layer1"].body.weight)
    assert other.probes.optimizer.state_dict()["state"][0]["step"] == 4


def test_constructor_validation():
    with pytest.raises(InvalidArgumentError, match="num_classes must be an int >= 2"):
        ProbeCallback(layers=["layer1"], num_classes=1)


def test_probe_callback_logs_top_k_and_loss_and_builds_mlp_probes(tmp_path):
    cb = ProbeCallback(layers=["layer2"], num_classes=3, lr=0.05, hidden=8, top_k=2)
    t = fit(tmp_path, LitNet(), [cb], max_epochs=2)
    for split in ("train", "val"):
        for name in ("acc", "top2_acc", "loss"):
            assert f"probe/layer2/{split}_{name}" in t.logged_metrics
    assert float(t.logged_metrics["probe/layer2/val_top2_acc"]) >= float(t.logged_metrics["probe/layer2/val_acc"])
    assert isinstance(cb.probes.heads["layer2"].body, torch.nn.Sequential)


def test_op_labels_listed_for_a_train_mode_batchnorm_model_work_in_the_callbacks(tmp_path):
    """get_nodes on the freshly built (train-mode) model names ops the callbacks resolve (in eval mode) too."""
    import lens_train as lt
    from tests.callbacks.lit_models import FEATURES

    module = LitNet(batchnorm=True).train()
    nodes = lt.get_nodes(module.net, torch.randn(4, FEATURES))
    relus = [n for n in nodes if n.startswith("relu_")]
    assert relus == ["relu_1_5", "relu_2_7"] and not any("bk" in n for n in nodes)
    cb = ProbeCallback(layers=relus, num_classes=3)
    trainer = fit(tmp_path, module, [cb], max_epochs=1)
    assert {f"probe/{n}/train_acc" for n in relus} <= set(trainer.callback_metrics)
