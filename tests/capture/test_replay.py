"""ModelLog.save_new_activations: same graph, new input, labels kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import DifferentPathError


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        if h.mean() > 0:
            h = torch.relu(self.b(h))
        else:
            h = torch.sigmoid(self.b(h))
        return h * 2


def _inputs(model: Gated) -> tuple[torch.Tensor, torch.Tensor]:
    pos = torch.ones(1, 3)
    sign = model.a(pos).mean() > 0
    return (pos, -pos) if sign else (-pos, pos)


def test_refreshes_every_activation_in_place() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    log = lt.log_forward_pass(model, torch.randn(2, 3), activation_postfunc=lambda t: t.mean())
    layers_before = list(log.layers)
    labels = log.layer_labels
    x = torch.randn(5, 3)
    assert log.save_new_activations(model, x) is log
    assert log.layer_labels == labels and all(a is b for a, b in zip(log.layers, layers_before))
    h = model[0](x)
    assert torch.equal(log["linear_1_1"].activation, h)
    assert torch.equal(log["relu_1_2"].activation, h.relu())
    assert torch.allclose(log["linear_2_3"].transformed_activation, model(x).mean())
    assert log["linear_2_3"].tensor_shape == (5, 2)
    assert not log["relu_1_2"].activation.requires_grad


def test_train_mode_and_gradients_are_honoured() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    log = lt.log_forward_pass(model, torch.randn(2, 3), save_gradients=True)
    log[-1].activation.sum().backward()
    x = torch.randn(4, 3)
    log.save_new_activations(model, x)
    assert log["tanh_1_2"].activation.requires_grad and log["tanh_1_2"].gradient is None
    log[-1].activation.sum().backward()
    assert log["linear_1_1"].gradient.shape == (4, 4)
    assert torch.allclose(log["linear_1_1"].gradient, 1 - torch.tanh(model[0](x)) ** 2)


def test_only_the_saved_layers_are_refreshed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    log = lt.log_forward_pass(model, torch.randn(2, 3), layers_to_save=["relu_1_2"])
    x = torch.randn(3, 3)
    log.save_new_activations(model, x)
    assert torch.equal(log["relu_1_2"].activation, model[1](model[0](x)))
    assert log["linear_1_1"].activation is None


def test_dropout_repeats_with_the_logged_seed() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    x = torch.randn(4, 8)
    log = lt.log_forward_pass(model, x, random_seed=3)
    first = log["dropout_1_2"].activation.clone()
    log.save_new_activations(model, x)
    assert torch.equal(log["dropout_1_2"].activation, first)
    log.save_new_activations(model, x, random_seed=4)
    assert not torch.equal(log["dropout_1_2"].activation, first)


def test_a_different_branch_raises_and_leaves_the_log_alone() -> None:
    torch.manual_seed(0)
    model = Gated()
    same, other = _inputs(model)
    log = lt.log_forward_pass(model, same)
    before = {layer.layer_label: layer.activation for layer in log}
    log.save_new_activations(model, same * 2)
    with pytest.raises(DifferentPathError, match=r"operation #\d+ was (relu|sigmoid)_1_\d+ .* but is (sigmoid|relu)_1_\d+"):
        log.save_new_activations(model, other)
    assert [layer.layer_label for layer in log] == list(before)


def test_a_different_number_of_loop_passes_raises() -> None:
    class Repeat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor, n: int) -> torch.Tensor:
            for _ in range(n):
                x = self.cell(x)
            return x

    model = Repeat()
    log = lt.log_forward_pass(model, torch.ones(1, 2), input_kwargs={"n": 2})
    with pytest.raises(DifferentPathError, match="different path"):
        log.save_new_activations(model, torch.ones(1, 2), input_kwargs={"n": 3})
