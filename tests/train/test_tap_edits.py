"""taps.edit: outputs and gradients bit-identical to hand-written references; when edits apply; errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

import lens_train as lt
from lens_train.errors import EditError, LayerNotFoundError, TapError, UnsupportedModelError
from tests.models import TanhLoop


class Net(nn.Module):
    """Modules to edit, ops in the body to edit, and an optional hand-written edit of ``mul_1``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.act = nn.ReLU()
        self.b = nn.Linear(6, 3)
        self.ref = None  # the reference for op-level edits: the model's own code computes the edit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.act(self.a(x)))
        s = h * 2.0  # mul_1_4
        if self.ref is not None:
            s = self.ref(s)
        return self.b(torch.sigmoid(s))


STEERING = torch.linspace(-1, 1, 6)
EDITS = [
    ("zero", lambda x: x * 0),
    ("mean", lambda x: x * 0 + x.mean(0, keepdim=True)),
    (lt.edits.noise(0.5, relative=True), lambda x: x + 0.5 * x.detach().std(correction=0) * torch.randn_like(x)),
    ("detach", lambda x: x.detach()),
    (lambda x: x + STEERING, lambda x: x + STEERING),  # a steering vector
    (torch.full((6,), 0.25), lambda x: x * 0 + torch.full((6,), 0.25)),
]
IDS = ["zero", "mean", "noise", "detach", "callable", "tensor"]


def _pair(cls: type = Net, *args: object) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = cls(*args)
    b = cls(*args)
    b.load_state_dict(a.state_dict())
    return a, b


def _step(model: nn.Module, x: torch.Tensor, seed: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(x)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    return out.detach(), [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


def _same(a: tuple, b: tuple) -> bool:
    (out_a, grads_a), (out_b, grads_b) = a, b
    same_grads = all((g is None and h is None) or torch.equal(g, h) for g, h in zip(grads_a, grads_b))
    return torch.equal(out_a, out_b) and same_grads


@pytest.mark.parametrize(("spec", "expression"), EDITS, ids=IDS)
def test_a_module_edit_equals_a_forward_hook_returning_the_edited_output(spec, expression) -> None:
    edited, reference = _pair()
    x = torch.randn(5, 4)
    taps = lt.Taps(edited, edits={"a": spec})
    hook = reference.a.register_forward_hook(lambda m, i, o: expression(o))
    for _ in range(2):  # the second step runs with what the first learned (clone policy)
        with taps:
            got = _step(edited, x)
        assert _same(got, _step(reference, x))
    hook.remove()
    taps.remove()
    assert _same(_step(edited, x), _step(reference, x))  # nothing left behind


@pytest.mark.parametrize(("spec", "expression"), EDITS, ids=IDS)
def test_an_op_label_edit_equals_the_model_computing_the_edit(spec, expression) -> None:
    edited, reference = _pair()
    x = torch.randn(5, 4)
    reference.ref = expression
    taps = lt.Taps(edited, edits={"mul_1": spec}, example_input=x)
    assert taps.selection.specs[0].kind == "op"
    with taps:
        got = _step(edited, x)
    assert _same(got, _step(reference, x))
    assert torch.equal(taps["mul_1"], taps["mul_1"]) and taps.original("mul_1").shape == (5, 6)


def test_one_pass_of_a_recurrent_layer_is_edited_by_label_pass_and_by_module_pass() -> None:
    x = torch.randn(2, 3)
    for key in ("tanh_1:2", "cell:2"):
        edited, reference = _pair(TanhLoop)
        calls = []

        def hook(module, args, out):
            calls.append(1)
            return out * 0 + 0.5 if len(calls) == 2 else None

        target = reference.cell if key.startswith("cell") else None
        if target is None:  # the tanh op of pass 2: reference by hand
            def forward(v: torch.Tensor, steps=reference.steps, cell=reference.cell) -> torch.Tensor:
                for k in range(steps):
                    v = torch.tanh(cell(v))
                    v = v * 0 + 0.5 if k == 1 else v
                return v
            reference.forward = forward
        else:
            target.register_forward_hook(hook)
        taps = lt.Taps(edited, edits={key: lambda v: v * 0 + 0.5}, example_input=x)
        with taps:
            got = _step(edited, x)
        assert _same(got, _step(reference, x)), key
        assert taps.num_passes(key) == 3


def test_a_glob_edits_every_match_and_taps_give_the_edited_values() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3))
    taps = lt.Taps(model, edits={"[01]": lambda x: x * 0 + 1.0})
    with taps:
        out = model(torch.randn(2, 3))
    assert torch.equal(out, model[2](torch.ones(2, 3)))
    assert all(torch.equal(v, torch.ones(2, 3)) for v in taps["[01]"].values())
    assert set(taps.keys()) == {"0", "1"}


def test_eval_mode_is_untouched_by_default_and_during_chooses() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    taps = lt.Taps(model, edits={"0": "zero"})
    model.eval()
    with taps:
        assert torch.equal(model(x), model[1](model[0](x)))
    assert taps.step == 0  # eval blocks do not count as steps
    taps.edit({"0": "zero"}, during="eval")
    with taps:
        assert torch.equal(model(x), model[1](model[0](x) * 0))
    model.train()
    with taps:
        assert torch.equal(model(x), model[1](model[0](x)))
    taps.edit({"0": "zero"}, during="all")
    with taps:
        assert torch.equal(model(x), model[1](model[0](x) * 0))
    with pytest.raises(lt.errors.InvalidArgumentError, match="during must be one of"):
        lt.Taps(model, edits={"0": "zero"}, during="training")


def test_edits_apply_only_inside_with_taps_and_clear_edits_removes_them() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    x = torch.randn(4, 3)
    taps = lt.Taps(model, ["1"], edits={"0": "zero"})
    plain = model[1](model[0](x))
    assert torch.equal(model(x), plain)
    with taps:
        assert not torch.equal(model(x), plain)
    taps.clear_edits()
    with taps:
        assert torch.equal(model(x), plain)
    assert taps.edits == {} and "0" in taps.keys()
    taps.edit({"0": "zero"})
    with taps:
        assert not torch.equal(model(x), plain)
    with taps, pytest.raises(TapError, match="Change edits between steps"):
        taps.edit({})


def test_taps_edit_adds_new_layers_ops_included_without_an_example() -> None:
    model = Net()
    x = torch.randn(2, 4)
    taps = lt.Taps(model, ["b"])
    taps.edit({"mul_1": "zero"})  # an op label: resolved on the next step
    with taps:
        out = model(x)
    assert torch.equal(out, model.b(torch.sigmoid(torch.zeros(2, 6))))
    assert not taps["mul_1"].abs().sum() and taps.original("mul_1").abs().sum() > 0


def test_the_step_counts_training_blocks_and_can_be_set() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    seen = []
    taps = lt.Taps(model, edits={"0": lambda x, step: seen.append(step) or x})
    for _ in range(3):
        with taps:
            model(torch.ones(1, 2))
    taps.step = 100
    with taps:
        model(torch.ones(1, 2))
    assert seen == [0, 1, 2, 100] and taps.step == 101


def test_stochastic_layer_dropout_follows_its_schedule() -> None:
    torch.manual_seed(0)
    block = nn.Linear(4, 4)
    model = nn.Sequential(nn.Linear(4, 4), block)
    x = torch.randn(3, 4)

    def drop(v: torch.Tensor, step: int) -> torch.Tensor:
        rate = min(1.0, step / 10)  # no dropout at step 0, always dropped from step 10
        return v * (torch.rand(()) >= rate).to(v.dtype)

    taps = lt.Taps(model, edits={"1": drop})
    dropped = []
    for _ in range(12):
        with taps:
            dropped.append(not model(x).abs().sum().item())
    assert dropped[0] is False and dropped[-2:] == [True, True] and 0 < sum(dropped) < 12


def test_a_view_written_in_place_after_its_edit_raises_with_the_fix() -> None:
    class ViewNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.a(x) * 1.0
            v = h[:, :3]  # getitem_1: a view of h
            h.mul_(2.0)  # changes v too; an edited v cannot follow
            return v.sum(1) + h.sum(1)

    model = ViewNet()
    x = torch.randn(2, 4)
    taps = lt.Taps(model, edits={"getitem_1": "zero"}, example_input=x)
    with pytest.raises(TapError, match=r"wrote in place into the original value of the edited layer 'getitem_1_3'.*"
                                       r"nn.ReLU\(inplace=False\)"):
        with taps:
            model(x)
    taps.edit({"mul_1": "zero"})  # not a view: the in-place write reaches the edited value, as with a hook
    with taps:
        assert not model(x).abs().sum()


def test_an_in_place_op_output_cannot_be_edited() -> None:
    class InPlace(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x * 1.0
            h.add_(1.0)
            return h

    x = torch.randn(2, 3)
    taps = lt.Taps(InPlace(), edits={"add_1": "zero"}, example_input=x)
    with pytest.raises(EditError, match=r"in-place op 'add_'.*Edit the op or module that computes"):
        with taps:
            taps.model(x)


def test_wrong_results_and_selectors_name_the_layer_and_the_fix() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    taps = lt.Taps(model, edits={"0": lambda x: x[:, :2]})
    with pytest.raises(EditError, match=r"The edit of '0' returned shape \(5, 2\), but the activation has shape \(5, 4\)"):
        with taps:
            model(torch.randn(5, 3))
    with pytest.raises(LayerNotFoundError, match="no module or op named '2'"):
        lt.Taps(model, edits={"2": "zero"}, example_input=torch.randn(1, 3))
    with pytest.raises(lt.errors.InvalidArgumentError, match="edits must be a dict"):
        lt.Taps(model, edits=["0"])
    with pytest.raises(UnsupportedModelError, match="nn.DataParallel"):
        lt.Taps(nn.DataParallel(model), edits={"0": "zero"})


def test_the_model_is_untouched_after_remove() -> None:
    model = Net()
    x = torch.randn(2, 4)
    before = model(x)
    taps = lt.Taps(model, edits={"a": "zero", "mul_1": "mean"}, example_input=x)
    with taps:
        assert not torch.equal(model(x), before)
    taps.remove()
    assert torch.equal(model(x), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_activation_checkpointing_recomputes_module_edits() -> None:
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
            self.out = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(checkpoint(self.inner, x, use_reentrant=False))

    edited, reference = _pair(Checkpointed)
    x = torch.randn(3, 4)
    taps = lt.Taps(edited, edits={"inner.1": lambda v: v * 3.0})
    reference.inner[1].register_forward_hook(lambda m, i, o: o * 3.0)
    with taps:
        got = _step(edited, x)
    assert _same(got, _step(reference, x))
    edited.zero_grad()
    with taps:  # backward after the block, as most loops do: the recomputation is edited too
        out = edited(x)
    (out * torch.arange(3.0).view(3, 1)).sum().backward()
    assert _same((out.detach(), [p.grad.clone() for p in edited.parameters()]), _step(reference, x))
    plain = Checkpointed()
    plain.load_state_dict(edited.state_dict())
    assert _same(_step(edited, x), _step(plain, x))  # a forward outside the block: unedited, recomputed unedited
    noisy, noisy_reference = _pair(Checkpointed)  # the recomputation draws the same noise (RNG restored)
    taps = lt.Taps(noisy, edits={"inner.1": lt.edits.noise(0.5)})
    noisy_reference.inner[1].register_forward_hook(lambda m, i, o: o + 0.5 * torch.randn_like(o))
    torch.manual_seed(1)
    with taps:
        out = noisy(x)
    (out * torch.arange(3.0).view(3, 1)).sum().backward()
    assert _same((out.detach(), [p.grad.clone() for p in noisy.parameters()]), _step(noisy_reference, x))


def test_a_module_with_a_tuple_output_gets_builtins_per_tensor_and_callables_whole() -> None:
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, (h, c) = self.lstm(x)
            return self.head(out[:, -1] + h[0] + c[0])

    x = torch.randn(2, 5, 3)
    for spec, expression in [("mean", lambda o: (o[0] * 0 + o[0].mean(0, keepdim=True),
                                                 tuple(t * 0 + t.mean(0, keepdim=True) for t in o[1]))),
                             (lambda o: (o[0] * 2, o[1]), lambda o: (o[0] * 2, o[1]))]:
        edited, reference = _pair(Recurrent)
        reference.lstm.register_forward_hook(lambda m, i, o, f=expression: f(o))
        with lt.Taps(edited, edits={"lstm": spec}):
            got = _step(edited, x)
        assert _same(got, _step(reference, x))


def test_edits_that_checkpointing_cannot_recompute_raise_with_the_fix() -> None:
    class Checkpointed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Net()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.inner, x, use_reentrant=False)

    x = torch.randn(3, 4)
    for edits, message in [({"inner.a:1": "zero"}, "names one pass"), ({"mul_1": "zero"}, "Op-level edits inside")]:
        model = Checkpointed()
        taps = lt.Taps(model, edits=edits, example_input=x)
        with taps:
            out = model(x)
        with pytest.raises(TapError, match=message):
            out.sum().backward()
