"""log_forward_pass(..., save_gradients=True): a gradient on every saved layer pass."""

from __future__ import annotations

import torch
from torch import nn

import lens_train as lt
from lens_train.capture.gradients import gradient_layers, zero_gradients
from tests.models import InPlaceViews, TanhLoop


def _mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(5, 3)


def test_every_saved_layer_gets_its_gradient() -> None:
    model, x = _mlp()
    log = lt.log_forward_pass(model, x, save_gradients=True)
    assert log.meta["train_mode"] and log["relu_1_2"].activation.requires_grad
    log[-1].activation.sum().backward()
    w2 = model[2].weight
    pre = model[0](x)
    g_relu = torch.ones(5, 2) @ w2
    assert torch.allclose(log["linear_2_3"].gradient, torch.ones(5, 2))
    assert torch.allclose(log["relu_1_2"].gradient, g_relu)
    assert torch.allclose(log["linear_1_1"].gradient, g_relu * (pre > 0))
    assert gradient_layers(log) == ["linear_1_1", "relu_1_2", "linear_2_3", "output_1_4"]
    assert "Gradient: shape=(5, 4), dtype=torch.float32, size=80 B" in str(log["relu_1_2"])


def test_backward_from_an_intermediate_layer_accumulates_like_grad() -> None:
    model, x = _mlp()
    log = lt.log_forward_pass(model, x, save_gradients=True)
    log["relu_1_2"].activation.sum().backward(retain_graph=True)
    assert log["linear_2_3"].gradient is None
    first = log["linear_1_1"].gradient.clone()
    assert torch.allclose(first, (model[0](x) > 0).float())
    log["relu_1_2"].activation.sum().backward()
    assert torch.allclose(log["linear_1_1"].gradient, 2 * first)
    zero_gradients(log)
    assert gradient_layers(log) == []


def test_recurrent_passes_each_get_their_own_gradient() -> None:
    torch.manual_seed(0)
    model, x = TanhLoop(2, steps=3), torch.randn(1, 2)
    log = lt.log_forward_pass(model, x, save_gradients=True)
    log[-1].activation.sum().backward()
    # reference: the same loop with retain_grad on every step
    h, steps = x, []
    for _ in range(3):
        h = torch.tanh(model.cell(h))
        h.retain_grad()
        steps.append(h)
    h.sum().backward()
    passes = log.layer_passes(log["tanh_1:1"].layer_label_no_pass)
    assert len(passes) == 3
    for layer, ref in zip(passes, steps):
        assert torch.allclose(layer.gradient, ref.grad, atol=1e-6), layer.layer_label
    assert not torch.allclose(passes[0].gradient, passes[2].gradient)


def test_in_place_ops_give_the_value_before_and_after() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 1)), torch.randn(6, 3)
    log = lt.log_forward_pass(model, x, save_gradients=True)
    assert log["relu_1_2"].is_inplace
    log[-1].activation.sum().backward()
    g_after = torch.ones(6, 1) @ model[2].weight
    mask = (model[0](x) > 0).float()
    assert torch.allclose(log["relu_1_2"].gradient, g_after)
    assert torch.allclose(log["linear_1_1"].gradient, g_after * mask)


def test_only_saved_layers_get_gradients_and_default_is_off() -> None:
    model, x = _mlp()
    log = lt.log_forward_pass(model, x, layers_to_save=["relu_1_2"], save_gradients=True)
    log.output.sum().backward()
    assert gradient_layers(log) == ["relu_1_2"]
    plain = lt.log_forward_pass(model, x)
    assert not plain["relu_1_2"].activation.requires_grad and plain.meta["save_gradients"] is False



def test_in_place_op_on_a_view_gets_the_slice_of_its_bases_gradient() -> None:
    torch.manual_seed(0)
    model, x = InPlaceViews(), torch.randn(3, 4)
    log = lt.log_forward_pass(model, x, save_gradients=True)
    log[-1].activation.sum().backward()
    model.retain = True  # reference: the gradient of y after the in-place op, from autograd itself
    model(x).sum().backward()
    y_new = model.seen["y"].grad
    y_old = y_new.clone()
    y_old[0] *= 3  # y[0].mul_(3): row 0 of y before the op gets 3 times the gradient
    assert torch.allclose(log["mul_1_2"].gradient, y_old)  # y before the op
    assert torch.allclose(log["mul_3_5"].gradient, y_new)  # the engine's record of y after it
    assert torch.allclose(log["mul_2_4"].gradient, y_new[0])  # the view after the op: both of its uses
    assert log["getitem_1_3"].gradient is None  # autograd routes the view's old value through y
