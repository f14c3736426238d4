"""lt.Extract: sub-models cut from the logged graph."""

from __future__ import annotations

import pytest
import torch
from tests.models import InPlaceViews
from torch import nn

import lens_train as lt
from lens_train.errors import DifferentPathError, IncompatibleInputError, InvalidArgumentError, LayerNotFoundError


class Block(nn.Module):
    """A ResNet basic block (BatchNorm left out so train/eval do not matter)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        return self.relu(out + x)


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = Block(4)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block(torch.relu(self.stem(x)))
        return self.fc(h.view(x.size(0), -1))


class Gated(nn.Module):
    """Python control flow on a tensor value."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        if h.sum() > 0:
            return self.b(h)
        return -h


def _resnet() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return ResNetLike().eval(), torch.randn(2, 3, 6, 6)


def test_outputs_equal_the_full_models_saved_activations() -> None:
    model, x = _resnet()
    log = lt.log_forward_pass(model, x)
    conv1 = log["block.conv1"].layer_label
    sub = lt.Extract(model, x, node_in={conv1: "h"}, node_out={"block.conv2": "c2", "fc": "logits"})
    (skip,) = sub.summary.extra_inputs
    out = sub(h=log[conv1].activation, **{skip: log[skip].activation})
    assert list(out) == ["c2", "logits"]
    assert torch.allclose(out["c2"], log["block.conv2"].activation, atol=1e-6)
    assert torch.allclose(out["logits"], log["fc"].activation, atol=1e-6)
    as_tuple = lt.Extract(model, x, node_in=[conv1], node_out=["block.conv2", "fc"])
    c2, logits = as_tuple(log[conv1].activation, **{skip: log[skip].activation})
    assert torch.allclose(logits, log["fc"].activation, atol=1e-6)


def test_cropping_a_block_at_its_skip_connection_reports_the_extra_input() -> None:
    model, x = _resnet()
    log = lt.log_forward_pass(model, x)
    conv1 = log["block.conv1"].layer_label
    sub = lt.Extract(model, x, node_in=conv1, node_out="block")
    skip = log.modules["block"].calls[0]["inputs"][0]
    assert list(sub.summary.extra_inputs) == [skip]
    assert sub.summary.extra_inputs[skip] == (2, 4, 6, 6)
    assert skip in str(sub.summary)
    with pytest.raises(InvalidArgumentError, match=skip):
        sub(log[conv1].activation)
    out = sub(log[conv1].activation, **{skip: log[skip].activation})
    assert torch.allclose(out, log["block"].activation, atol=1e-6)
    # the cropped ops are exactly the rest of the block
    assert [lab.split("_")[0] for lab in sub.summary.ops] == ["relu", "conv2d", "add", "relu"]


def test_batch_size_read_with_size_follows_the_new_input() -> None:
    model, x = _resnet()
    log = lt.log_forward_pass(model, x)
    relu = log["block"].layer_label
    head = lt.Extract(model, x, node_in=relu, node_out="fc")
    h = torch.randn(7, 4, 6, 6)  # example batch was 2; x.size(0) came from the model input
    assert torch.allclose(head(h), model.fc(h.view(7, -1)), atol=1e-6)
    whole = lt.Extract(model, x, node_out="fc")  # from the model's own input
    x5 = torch.randn(5, 3, 6, 6)
    assert torch.allclose(whole(x5), model(x5), atol=1e-6)


def test_gradients_through_the_sub_model_match_the_full_model() -> None:
    model, x = _resnet()
    log = lt.log_forward_pass(model, x, save_gradients=True)
    stem = log["stem"].layer_label
    h = log[stem].activation
    log[-1].activation.sum().backward()
    full_grads = {n: p.grad.clone() for n, p in model.block.named_parameters()}
    full_h_grad = log[stem].gradient
    model.zero_grad()
    sub = lt.Extract(model, x, node_in=stem, node_out="fc")
    h2 = h.detach().clone().requires_grad_(True)
    sub(h2).sum().backward()
    for n, p in model.block.named_parameters():
        assert torch.allclose(p.grad, full_grads[n], atol=1e-5), n
    assert torch.allclose(h2.grad, full_h_grad, atol=1e-5)
    assert set(dict(sub.named_parameters())) >= {"model.block.conv1.weight"}


def test_in_place_ops_do_not_change_the_callers_tensor() -> None:
    model, x = _resnet()
    log = lt.log_forward_pass(model, x)
    conv1 = log["block.conv1"].layer_label  # next op is the in-place ReLU
    sub = lt.Extract(model, x, node_in=conv1, node_out="block.conv2")
    h = torch.randn(2, 4, 6, 6)
    before = h.clone()
    out = sub(h)
    assert torch.equal(h, before)
    assert torch.allclose(out, model.block.conv2(torch.relu(before)), atol=1e-6)


def test_a_different_branch_raises() -> None:
    torch.manual_seed(0)
    model = Gated()
    x = torch.ones(1, 3)
    taken = bool(torch.tanh(model.a(x)).sum() > 0)
    log = lt.log_forward_pass(model, x)
    out_label = log.output_layers[0]
    sub = lt.Extract(model, x, node_in=log["a"].layer_label, node_out=out_label)
    h = torch.full((1, 3), 2.0 if taken else -2.0)
    expected = model.b(torch.tanh(h)) if taken else -torch.tanh(h)
    assert torch.allclose(sub(h), expected, atol=1e-6)
    with pytest.raises(DifferentPathError, match="different path"):
        sub(-h)


def test_size_comparisons_guard_the_path() -> None:
    class Crop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(x)
            if y.size(1) > 4:
                y = y[:, :4]
            return y * 2

    x = torch.randn(2, 6)
    sub = lt.Extract(Crop(), x, node_in="relu_1_1", node_out="mul_1_3")
    assert sub(torch.ones(3, 8)).shape == (3, 4)
    with pytest.raises(DifferentPathError, match="size comparison"):
        sub(torch.ones(3, 3))


def test_transformer_block_follows_batch_and_sequence_length() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.Sequential(nn.Linear(4, 8), layer, nn.Linear(8, 3)).train()
    x = torch.randn(2, 5, 4)
    sub = lt.Extract(model, x, node_in={"linear_1_1": "h"}, node_out="2")
    h = torch.randn(3, 7, 8)
    assert torch.allclose(sub(h), model[2](layer(h)), atol=1e-5)


def test_mode_dependent_ops_refuse_another_mode() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2)).train()
    x = torch.ones(2, 3)
    sub = lt.Extract(model, x, node_in="linear_1_1", node_out="linear_2_3")
    sub.eval()
    with pytest.raises(DifferentPathError, match="train mode"):
        sub(torch.ones(2, 3))


def test_bad_node_names_and_inputs() -> None:
    model, x = _resnet()
    with pytest.raises(LayerNotFoundError):
        lt.Extract(model, x, node_in="conv2d_99", node_out="fc")
    with pytest.raises(InvalidArgumentError, match="node_out"):
        lt.Extract(model, x, node_in="fc")
    log = lt.log_forward_pass(model, x, layers_to_save=None)
    with pytest.raises(InvalidArgumentError, match="does not depend"):
        lt.Extract(model, x, node_in=log["fc"].layer_label, node_out="stem")
    sub = lt.Extract(model, x, node_in={log["stem"].layer_label: "h"}, node_out="fc")
    with pytest.raises(InvalidArgumentError, match="not an input"):
        sub(torch.ones(2, 4, 6, 6), hh=torch.ones(1))
    with pytest.raises(InvalidArgumentError, match="positional"):
        sub(torch.ones(2, 4, 6, 6), torch.ones(1))


class Sized(nn.Module):
    """Sizes of every kind: traced (batch), matched (read from the model input), fixed (float math, unseen)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        half = int(h.size(1) * 0.5)  # leaves integer arithmetic: fixed at 4
        k = h.view(h.size(0), 2, half)
        pos = torch.arange(x.size(0))  # read from the model input, which the sub-model never sees
        width = torch.zeros(x.size(1))  # x.size(1) == 5: no sub-model input dimension is 5
        return self.out(k.reshape(h.size(0), -1)) + pos[:, None] + width.sum()


def test_fixed_and_matched_sizes_are_listed_per_op() -> None:
    torch.manual_seed(0)
    model, x = Sized(), torch.randn(3, 5)
    log = lt.log_forward_pass(model, x)
    relu, view = log["relu_1"].layer_label, log["view_1"].layer_label
    arange, zeros = log["arange_1"].layer_label, log["zeros_1"].layer_label
    sub = lt.Extract(model, x, node_in={relu: "h"}, node_out=log.output_layers[0])
    fixed, matched = sub.summary.fixed_sizes, sub.summary.matched_sizes
    assert len(fixed) == 2 and fixed[0].startswith(f"{view}: view size argument(s) 2, 4: plain ints")
    assert fixed[1].startswith(f"{zeros}: size(1) of input_1_0 stays 5")
    assert matched == [f"{arange}: size(0) of input_1_0 (3 on the example) follows size(0) of input {relu}, "
                       "which had the same size on the example"]
    assert f"fixed size: {fixed[0]}" in str(sub.summary) and f"matched size: {matched[0]}" in str(sub.summary)
    h = torch.randn(6, 8)  # another batch size: traced and matched sizes follow it
    ref = model.out(h) + torch.arange(6)[:, None]
    assert torch.allclose(sub(h=h), ref, atol=1e-6)


def test_an_input_the_fixed_sizes_do_not_fit_raises_a_clear_error() -> None:
    torch.manual_seed(0)
    model, x = Sized(), torch.randn(3, 5)
    log = lt.log_forward_pass(model, x)
    relu, view = log["relu_1"].layer_label, log["view_1"].layer_label
    sub = lt.Extract(model, x, node_in={relu: "h"}, node_out=log.output_layers[0])
    with pytest.raises(IncompatibleInputError, match=rf"replaying {view} failed with .*Inputs: h 6x10 \(example 3x8\)\. "
                       rf"{view} uses sizes that do not follow the input: view size argument\(s\) 2, 4") as info:
        sub(torch.randn(6, 10))  # 10 features cannot be viewed as (6, 2, 4)
    assert isinstance(info.value.__cause__, RuntimeError) and "lt.Extract(model, example" in str(info.value)
    assert "sub.summary.fixed_sizes" in str(info.value)
    with pytest.raises(ValueError):  # IncompatibleInputError is a ValueError for user code
        sub(torch.randn(6, 10))


def test_unknown_node_names_list_the_closest_nodes_and_get_nodes() -> None:
    model, x = _resnet()
    nodes = lt.get_nodes(model, x)
    relu = next(n for n in nodes if n.startswith("relu_1_"))
    typo = relu.replace("relu", "relu_")
    with pytest.raises(LayerNotFoundError, match=rf"node_in='{typo}' is not a node .*Closest: '{relu}'.*lt\.get_nodes\(model, x\)"):
        lt.Extract(model, x, node_in=typo, node_out="fc")
    with pytest.raises(LayerNotFoundError, match=r"node_out='fcc' .*Closest: .*lt\.get_nodes"):
        lt.Extract(model, x, node_out={"fcc": "logits"})



def test_in_place_op_on_a_view_replays_and_spares_the_callers_tensor() -> None:
    torch.manual_seed(0)
    model, x = InPlaceViews(), torch.randn(3, 4)
    log = lt.log_forward_pass(model, x)
    out = log.output_layers[0]
    for node_in in ("linear_1_1", "mul_1_2"):  # the view is taken inside the sub-model / of its input
        sub = lt.Extract(model, x, node_in=node_in, node_out=out)
        assert torch.allclose(sub(log[node_in].activation), log[out].activation)
        h = torch.randn(5, 4)
        before = h.clone()
        expected = model.tail(h * 1 if node_in == "linear_1_1" else h.clone())
        assert torch.allclose(sub(h), expected) and torch.equal(h, before)


def test_sub_model_takes_the_source_models_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 2))
    x = torch.randn(5, 4)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        sub = lt.Extract(model, x, node_in="linear_1", node_out="linear_2")
        assert sub.training == model.training == (mode == "train")
        h = model[0](x)
        if mode == "eval":
            assert torch.allclose(sub(h), model[1:](h))  # the first call works, same values as the model
        else:
            assert sub(h).shape == (5, 2)
    sub.eval()  # a mode change that really changes the path still says what to do
    with pytest.raises(DifferentPathError, match="Re-extract after model.eval"):
        sub(model[0](x))


def test_every_node_of_a_loop_is_listed_and_usable() -> None:
    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.GRUCell(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.zeros(x.shape[0], 3)
            for _ in range(4):
                h = self.cell(x, h)
            return h

    model, x = Loop(), torch.randn(2, 3)
    nodes = lt.get_nodes(model, x)
    assert [n for n in nodes if n.startswith("grucell")] == [f"grucell_1_2:{i}" for i in range(1, 5)]
    log = lt.log_forward_pass(model, x, layers_to_save=nodes)
    assert [layer.layer_label for layer in log.layers if layer.is_saved] == nodes
    taps = lt.Taps(model, nodes, example_input=x)
    with taps:
        model(x)
    assert all(taps[n] is not None for n in nodes)
    taps.remove()
    sub = lt.Extract(model, x, node_in="grucell_1_2:1", node_out="grucell_1_2:3")
    out = sub(log["grucell_1_2:1"].activation, input_1_0=x)  # the loop also reads x
    assert torch.allclose(out, log["grucell_1_2:3"].activation)
