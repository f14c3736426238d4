"""``lt.intervene``: edits, weights and submodules, against hand-written references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import EditError, InvalidArgumentError, LayerNotFoundError


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.norm, self.head = nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(x)))


def _net() -> Net:
    torch.manual_seed(0)
    return Net()


def _state(model: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    return [(n, t.detach().clone(), t._version) for n, t in model.state_dict(keep_vars=True).items()]


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


EDITS = {
    "zero": lambda: "zero",
    "mean": lambda: lt.edits.mean(),
    "reference mean": lambda: lt.edits.mean(reference=torch.full((6,), 0.5)),
    "callable": lambda: (lambda x: 2 * x - 1),
    "tensor": lambda: torch.linspace(0, 1, 6),
    "detach": lambda: "detach",
}
# the expression each edit stands for (lens_train.train.edits documents them)
REFERENCE = {
    "zero": lambda x: x * 0,
    "mean": lambda x: x * 0 + x.mean(0, keepdim=True),
    "reference mean": lambda x: x * 0 + torch.full((6,), 0.5),
    "callable": lambda x: 2 * x - 1,
    "tensor": lambda x: x * 0 + torch.linspace(0, 1, 6),
    "detach": lambda x: x.detach(),
}


@pytest.mark.parametrize("kind", sorted(EDITS))
@pytest.mark.parametrize("selector", ["blocks.1.act", "gelu_2_6"])
def test_output_and_gradients_equal_a_forward_hook(kind: str, selector: str) -> None:
    x = torch.randn(5, 4)
    model = _net().train()
    hook = model.blocks[1].act.register_forward_hook(lambda m, i, o: REFERENCE[kind](o))
    want = model(x)
    want.square().sum().backward()
    want_grads = _grads(model)
    hook.remove()

    model = _net().train()
    before = _state(model)
    log = lt.intervene(model, x, edits={selector: EDITS[kind]()}, train_mode=True)
    assert torch.equal(log.output, want)
    log.output.square().sum().backward()
    got = _grads(model)
    assert got.keys() == want_grads.keys() and all(torch.equal(got[n], want_grads[n]) for n in got)
    layer = log["gelu_2_6"]
    assert layer.edit is not None and torch.equal(layer.activation, REFERENCE[kind](layer.original_activation))
    assert all(n == m and torch.equal(a, b) and v == w for (n, a, v), (m, b, w) in zip(before, _state(model)))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_an_op_inside_a_module_and_one_pass_of_a_recurrent_layer() -> None:
    torch.manual_seed(0)
    cell = nn.GRUCell(3, 3)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x: torch.Tensor, edit_pass: int = 0) -> torch.Tensor:
            h = torch.zeros(2, 3)
            for step in range(3):
                h = self.cell(x, h)
                h = torch.tanh(h)
                if step + 1 == edit_pass:
                    h = h * 0.5
            return h

    x = torch.randn(2, 3)
    want = Loop()(x, edit_pass=2)
    log = lt.intervene(Loop(), x, edits={"tanh_1_3:2": lambda h: h * 0.5})
    assert torch.equal(log.output, want)
    assert [layer.edit is not None for layer in log.layer_passes("tanh_1_3")] == [False, True, False]
    everywhere = lt.intervene(Loop(), x, edits={"tanh_1_3": "zero"})
    assert all(layer.edit for layer in everywhere.layer_passes("tanh_1_3")) and not everywhere.output.any()


def test_globs_edit_every_match() -> None:
    x = torch.randn(2, 4)
    log = lt.intervene(_net(), x, edits={"blocks.*.act": "zero"})
    assert [log[f"blocks.{i}.act"].edit is not None for i in range(2)] == [True, True]
    assert set(log.meta["edits"]) == {"blocks.0.act:1", "blocks.1.act:1"}


def test_other_weights_and_other_submodules_leave_the_model_as_it_was() -> None:
    x = torch.randn(3, 4)
    model = _net()
    before = _state(model)
    w = torch.randn(3, 4)
    want = torch.func.functional_call(model, {"head.weight": w}, (x,))
    assert torch.equal(lt.intervene(model, x, params={"head.weight": w}).output, want)
    swapped = _net()
    swapped.blocks[0].act = nn.Tanh()
    log = lt.intervene(model, x, modules={"blocks.0.act": nn.Tanh()})
    assert torch.equal(log.output, swapped(x)) and log.modules["blocks.0.act"].module_type == "Tanh"
    assert isinstance(model.blocks[0].act, nn.GELU)
    assert all(torch.equal(a, b) and v == w_ for (_, a, v), (_, b, w_) in zip(before, _state(model)))


def test_tied_weights_are_replaced_together_and_restored_after_an_error() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    model, x = Tied(), torch.randn(1, 2)
    weight = model.a.weight
    log = lt.intervene(model, x, params={"a.weight": torch.eye(2)})
    assert torch.equal(log.output, x)
    assert model.a.weight is weight and model.b.weight is weight

    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        lt.intervene(model, x, modules={"b": Boom()}, params={"a.weight": torch.eye(2)})
    assert type(model.b) is nn.Linear and model.a.weight is weight and model.b.weight is weight


def test_bad_requests_name_the_fix() -> None:
    model, x = _net(), torch.randn(2, 4)
    with pytest.raises(LayerNotFoundError, match="blocks.1.act"):
        lt.intervene(model, x, edits={"blocks.1.actt": "zero"})
    with pytest.raises(EditError, match=r"'blocks.1.act:1'.*shape \(2, 3\).*\(2, 6\)"):
        lt.intervene(model, x, edits={"blocks.1.act": lambda t: t[:, :3]})
    with pytest.raises(EditError, match="float64.*float32"):
        lt.intervene(model, x, edits={"gelu_1_2": lambda t: t.double()})
    with pytest.raises(LayerNotFoundError, match="head.weight"):
        lt.intervene(model, x, params={"head.weigth": torch.zeros(3, 4)})
    with pytest.raises(InvalidArgumentError, match=r"\(3, 4\)"):
        lt.intervene(model, x, params={"head.weight": torch.zeros(4, 3)})
    with pytest.raises(TypeError, match="nn.Module"):
        lt.intervene(model, x, modules={"blocks.0.act": torch.tanh})

    class InPlace(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            y.add_(1)
            return y

    with pytest.raises(InvalidArgumentError, match="in place"):
        lt.intervene(InPlace(), x, edits={"add_1_2": "zero"})


def test_an_edited_log_round_trips_through_a_bundle(tmp_path) -> None:
    log = lt.intervene(_net(), torch.randn(2, 4), edits={"blocks.0.act": "zero"})
    lt.save(log, tmp_path / "b")
    loaded = lt.load(tmp_path / "b")
    layer = loaded["blocks.0.act"]
    assert layer.edit == log["blocks.0.act"].edit
    assert torch.equal(layer.original_activation, log["blocks.0.act"].original_activation)
    assert "Edited" in str(log["blocks.0.act"])


def test_a_module_that_returns_its_input_unchanged_cannot_be_edited_alone() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Identity(), nn.ReLU())
    with pytest.raises(InvalidArgumentError, match="returns a tensor it was given"):
        lt.intervene(model, torch.randn(1, 2), edits={"1": "zero"})


def test_gradients_of_an_edited_layer_are_those_of_the_edited_value() -> None:
    x = torch.randn(3, 4)
    model = _net().train()
    kept = {}

    def hook(module, inputs, output):
        kept["edited"] = edited = output * 2
        edited.retain_grad()
        return edited

    handle = model.blocks[1].act.register_forward_hook(hook)
    model(x).square().sum().backward()
    handle.remove()
    log = lt.intervene(_net().train(), x, edits={"blocks.1.act": lambda t: t * 2}, save_gradients=True)
    log.output.square().sum().backward()
    assert torch.allclose(log["blocks.1.act"].gradient, kept["edited"].grad)
