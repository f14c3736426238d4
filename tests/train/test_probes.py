"""Probes: accuracy on separable features, detached features, regression, state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import InvalidArgumentError


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def test_probe_reaches_high_accuracy_on_a_separable_layer() -> None:
    x, y = _data()
    model = nn.Sequential(nn.Identity(), nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    probes = lt.Probes(["0", "2"], num_classes=2, lr=0.05)
    taps = lt.Taps(model, probes.layers)
    for _ in range(60):
        with taps:
            model(x)
        probes.update(taps, y)
    probes.reset("train")
    with taps:
        model(x)
    probes.update(taps, y)
    assert probes.compute()["0"] > 0.95
    probes.evaluate(taps, y)
    assert set(probes.compute("val")) == {"0", "2"}
    assert all(p.grad is None for p in model.parameters())  # features are detached


def test_training_accuracy_is_measured_before_the_update() -> None:
    x, y = _data()
    model = nn.Sequential(nn.Identity())
    probes = lt.Probes(["0"], num_classes=2, lr=0.5)
    probes.setup(model, x)
    head = probes.heads["0"]
    expected = float(((head(x).argmax(1)) == y).float().mean())
    taps = lt.Taps(model, ["0"])
    with taps:
        model(x)
    probes.update(taps, y)
    assert probes.compute()["0"] == pytest.approx(expected)


def test_regression_probe_and_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    target = x @ torch.tensor([1.0, -2.0, 0.5])
    model = nn.Sequential(nn.Identity())
    probes = lt.Probes(["0"], task="regression", lr=0.1)
    taps = lt.Taps(model, ["0"])
    for _ in range(150):
        with taps:
            model(x)
        probes.update(taps, target)
    probes.reset()
    probes.evaluate(taps, target)
    assert probes.compute("val")["0"] > 0.95
    clone = lt.Probes(["0"], task="regression", lr=0.1)
    clone.load_state_dict(probes.state_dict())
    assert torch.equal(clone.heads["0"].body.weight, probes.heads["0"].body.weight)
    assert torch.equal(clone.heads["0"].norm.running_var, probes.heads["0"].norm.running_var)
    assert clone.optimizer.state_dict()["state"].keys() == probes.optimizer.state_dict()["state"].keys()


def test_token_pooling_and_errors() -> None:
    probes = lt.Probes(["0"], num_classes=3, pool=0)
    assert probes._features(torch.randn(2, 5, 7)).shape == (2, 7)
    with pytest.raises(InvalidArgumentError, match="num_classes"):
        lt.Probes(["0"])
    with pytest.raises(InvalidArgumentError, match="pool"):
        lt.Probes(["0"], num_classes=2, pool="max")


def test_regression_metrics_equal_manual_mse_and_r2() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    target = torch.stack([x @ torch.tensor([1.0, -2.0, 0.5]), x[:, 0] * 3], 1) + 0.3 * torch.randn(32, 2)
    model = nn.Sequential(nn.Identity())
    probes = lt.Probes(["0"], task="regression", num_outputs=2, lr=0.05)
    taps = lt.Taps(model, ["0"])
    for _ in range(20):
        with taps:
            model(x)
        probes.update(taps, target)
    probes.evaluate(taps, target)
    with torch.no_grad():
        pred = probes.heads["0"](x)
    residual = ((pred - target) ** 2).sum(0)
    total = ((target - target.mean(0)) ** 2).sum(0)
    got = probes.compute_all("val")["0"]
    assert got["mse"] == pytest.approx(float(((pred - target) ** 2).mean()), rel=1e-5)
    assert got["r2"] == pytest.approx(float((1 - residual / total).mean()), rel=1e-5)  # averaged over outputs


_MAPS, _TOKENS = torch.randn(5, 3, 4, 2), torch.randn(5, 6, 7)


@pytest.mark.parametrize(("pool", "x", "expected"), [
    ("avg", _MAPS, _MAPS.mean((2, 3))), ("flatten", _MAPS, _MAPS.flatten(1)),
    ("avg", _TOKENS, _TOKENS.mean(1)), (2, _TOKENS, _TOKENS[:, 2]),
])
def test_probe_pooling_options(pool: object, x: torch.Tensor, expected: torch.Tensor) -> None:
    probes = lt.Probes(["0"], num_classes=2, pool=pool)
    probes.setup(nn.Sequential(nn.Identity()), x)
    head = probes.heads["0"]
    assert head.in_features == expected.shape[1] and torch.equal(probes._features(x), expected)
    taps = lt.Taps(nn.Sequential(nn.Identity()), ["0"])
    with taps:
        taps.model(x)
    probes.update(taps, torch.zeros(5, dtype=torch.long))
    probes.evaluate(taps, torch.zeros(5, dtype=torch.long))
    want = float((head(expected).argmax(1) == 0).float().mean())
    assert probes.compute("val")["0"] == pytest.approx(want)


def _tapped(x: torch.Tensor) -> lt.Taps:
    model = nn.Sequential(nn.Identity(), nn.Linear(4, 3))
    taps = lt.Taps(model, ["1"])
    with taps:
        model(x)
    return taps


@pytest.mark.parametrize("call", ["update", "evaluate"])
def test_bad_class_targets_raise_with_layer_value_and_fix(call: str) -> None:
    x, y = _data()
    taps = _tapped(x)
    probes = lt.Probes(["1"], num_classes=2)
    with pytest.raises(InvalidArgumentError, match=r"probes\.%s: probe on layer '1' \(num_classes=2\).*torch\.float32.*targets\.long\(\)" % call):
        getattr(probes, call)(taps, y.float())
    y_big = y.clone()
    y_big[3] = 12
    with pytest.raises(InvalidArgumentError, match=r"layer '1' got class label 12, outside \[0, num_classes=2\).*num_classes=13\)"):
        getattr(probes, call)(taps, y_big)
    with pytest.raises(InvalidArgumentError, match=r"class label -1.*remap"):
        getattr(probes, call)(taps, y - 1)
    assert not probes.heads  # nothing was built from the bad call
    probes.update(taps, y)
    getattr(probes, call)(taps, y)  # the fixed call works


def test_bad_regression_targets_raise_with_dtype_and_width() -> None:
    x, _ = _data()
    taps = _tapped(x)
    probes = lt.Probes(["1"], task="regression", num_outputs=2)
    with pytest.raises(InvalidArgumentError, match=r"task='regression', num_outputs=2\) needs float targets.*torch\.int64.*targets\.float\(\)"):
        probes.update(taps, torch.zeros(128, 2, dtype=torch.long))
    probes.update(taps, torch.zeros(128, 2))
    with pytest.raises(InvalidArgumentError, match=r"layer '1' \(num_outputs=2\) predicts shape \(128, 2\).*\(128,\)"):
        probes.evaluate(taps, torch.zeros(128))


def _blobs(scale: float, n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    centers = torch.randn(4, 6, generator=g) * 2
    return (centers[y] + torch.randn(n, 6, generator=g)) * scale, y


def _train(probes: lt.Probes, x: torch.Tensor, y: torch.Tensor, steps: int) -> lt.Taps:
    model = nn.Sequential(nn.Identity())
    taps = lt.Taps(model, ["0"])
    for _ in range(steps):
        with taps:
            model(x)
        probes.update(taps, y)
    return taps


def test_top_k_accuracy_and_loss_against_manual_values() -> None:
    x, y = _blobs(1.0)
    torch.manual_seed(0)
    probes = lt.Probes(["0"], num_classes=4, top_k=2, lr=0.01)
    taps = _train(probes, x, y, 3)
    probes.reset()
    probes.evaluate(taps, y)
    head = probes.heads["0"].eval()
    with torch.no_grad():
        logits = head(x)
    got = probes.compute_all("val")["0"]
    assert got["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    top2 = logits.topk(2, dim=1).indices
    assert got["top2_accuracy"] == pytest.approx(float((top2 == y[:, None]).any(1).float().mean()))
    assert got["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)


@pytest.mark.parametrize("scale", [1e-2, 1e2])
def test_standardized_features_make_one_learning_rate_fit_every_scale(scale: float) -> None:
    # BatchNorm without affine: the same lr learns the same probe whatever the features' scale.
    accuracy = {}
    for s in (1.0, scale):
        x, y = _blobs(s)
        torch.manual_seed(0)  # the same initial probe
        probes = lt.Probes(["0"], num_classes=4, lr=1e-2)
        taps = _train(probes, x, y, 60)
        probes.evaluate(taps, y)
        accuracy[s] = probes.compute("val")["0"]
    assert not any(p.requires_grad for p in probes.heads["0"].norm.parameters())  # no learned affine
    assert accuracy[scale] == pytest.approx(accuracy[1.0], abs=0.02) and accuracy[1.0] > 0.8
    torch.manual_seed(0)
    plain = lt.Probes(["0"], num_classes=4, lr=1e-2, standardize=False)
    _train(plain, x, y, 60)
    assert plain.compute("train")["0"] < accuracy[1.0] - 0.1  # unscaled features learn worse at this lr


def test_mlp_probe_learns_what_a_linear_probe_cannot() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 2, generator=g)
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()  # XOR: not linearly separable
    linear, mlp = lt.Probes(["0"], num_classes=2, lr=0.05), lt.Probes(["0"], num_classes=2, lr=0.05, hidden=32)
    for probes in (linear, mlp):
        taps = _train(probes, x, y, 300)
        probes.evaluate(taps, y)
    assert isinstance(mlp.heads["0"].body, nn.Sequential)
    assert mlp.compute("val")["0"] > 0.9 > linear.compute("val")["0"]


def test_evaluate_before_any_update_raises() -> None:
    probes = lt.Probes(["1"], num_classes=3)
    with pytest.raises(InvalidArgumentError, match="never trained.*probes.update"):
        probes.evaluate(_tapped(torch.randn(4, 4)), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(InvalidArgumentError, match="top_k must be a positive int, got 0"):
        lt.Probes(["1"], num_classes=3, top_k=0)


def test_state_of_plain_linear_probes_still_loads() -> None:
    probes = lt.Probes(["0"], num_classes=3, standardize=False)
    old = {"heads": {"0.weight": torch.ones(3, 4), "0.bias": torch.zeros(3)}, "in_features": {"0": 4}, "optimizer": None}
    probes.load_state_dict(old)
    assert torch.equal(probes.heads["0"].body.weight, torch.ones(3, 4)) and probes.num_updates == 1
