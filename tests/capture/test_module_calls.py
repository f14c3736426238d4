"""How a capture follows module calls: forward wrappers on hook-free modules, hooks on the others."""

import copy
import gc
import inspect
import types
import weakref

import pytest
import torch
from torch import nn

import lens_train as lt


class _Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return torch.relu(self.lin(x)) * scale


class _Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _Inner()
        self.direct = _Inner()
        self.seen: list[list[str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(list(inspect.signature(self.inner.forward).parameters))
        x = self.inner(x)
        return self.direct.forward(x)  # not a module call: no hook would see it either


def _summary(log: lt.ModelLog) -> tuple:
    return (log.layer_labels, [(m.address, [c["inputs"] for c in m.calls], [c["outputs"] for c in m.calls])
                               for m in log.modules.values()],
            [layer.containing_modules for layer in log.layers])


def _no_trace(model: nn.Module) -> bool:
    return all("forward" not in vars(m) and not m._forward_hooks and not m._forward_pre_hooks
               and not m._forward_hooks_always_called for m in model.modules())


def test_hook_free_and_hooked_modules_give_the_same_log() -> None:
    model, x = _Outer(), torch.randn(2, 3)
    wrapped = lt.log_forward_pass(model, x)
    handle = nn.modules.module.register_module_forward_hook(lambda m, a, o: None)  # global: every module hooked
    try:
        hooked = lt.log_forward_pass(model, x)
    finally:
        handle.remove()
    assert _summary(wrapped) == _summary(hooked)
    # direct.forward(x) is no module call (no hook would see it); the Linear it calls is one
    assert [m.address for m in wrapped.modules.values()] == ["inner", "inner.lin", "direct.lin"]
    assert _no_trace(model)


def test_forward_keeps_its_signature_while_captured() -> None:
    model = _Outer()
    lt.log_forward_pass(model, torch.randn(2, 3))
    assert model.seen == [["x", "scale"]]


def test_a_forward_set_on_the_instance_is_followed_and_put_back() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    own = model[1].forward = lambda x: torch.tanh(x)
    log = lt.log_forward_pass(model, torch.randn(2, 3))
    assert log["tanh_1_2"].containing_modules == ["1:1"]
    assert vars(model[1])["forward"] is own and "forward" not in vars(model[0])


def test_a_raising_module_leaves_the_call_stack_and_the_model_clean() -> None:
    class Fails(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("boom")

    model = nn.Sequential(nn.Linear(3, 3), nn.Sequential(Fails()))
    with pytest.raises(ValueError, match="boom"):
        lt.log_forward_pass(model, torch.randn(2, 3))
    assert _no_trace(model)
    log = lt.log_forward_pass(model[0], torch.randn(2, 3))  # the next capture starts from an empty stack
    assert log["linear_1_1"].containing_modules == []


def test_a_module_edit_reaches_the_caller_on_both_paths() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(2, 3)
    wrapped = lt.intervene(model, x, edits={"1": "zero"})
    handle = nn.modules.module.register_module_forward_pre_hook(lambda m, a: None)
    try:
        hooked = lt.intervene(model, x, edits={"1": "zero"})
    finally:
        handle.remove()
    expected = model[2].bias.detach().expand(2, 1)
    assert torch.equal(wrapped.output.detach(), expected) and torch.equal(hooked.output.detach(), expected)
    assert _no_trace(model)


def test_a_module_calls_tensors_die_with_the_capture_without_the_cycle_collector() -> None:
    refs = []

    class Keeps(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            refs.append(weakref.ref(x))  # the Linear's output: alive only through a frame the capture kept, if any
            return (x * 3).sum(dim=1)

    model = nn.Sequential(nn.Linear(3, 3), Keeps())
    enabled = gc.isenabled()
    gc.disable()
    try:
        lt.log_forward_pass(model, torch.randn(2, 3), layers_to_save=None)
        assert refs and refs[0]() is None
    finally:
        if enabled:
            gc.enable()


def test_a_hook_added_during_the_pass_keeps_the_call_followed() -> None:
    class Hooks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            handle = self.lin.register_forward_hook(lambda m, a, o: None)  # torch now calls lin on its slow path
            try:
                return self.lin(x)
            finally:
                handle.remove()

    log = lt.log_forward_pass(Hooks(), torch.randn(2, 3))
    assert log["linear_1_1"].containing_modules == ["lin:1"]


@pytest.mark.parametrize("copier", [copy.deepcopy, copy.copy])
def test_a_copy_made_during_the_pass_runs_its_own_forward(copier) -> None:
    # a copy of a module takes its instance attributes along, the capture's forward wrapper included
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = 1.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    class Copies(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.scaled = Scaled()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            other = copier(self.scaled)
            other.scale = 0.0
            return self.scaled(self.lin(x)) + other(x)

    model, x = Copies(), torch.randn(2, 3)
    log = lt.log_forward_pass(model, x)
    assert torch.allclose(log.output, model.lin(x))
    assert _no_trace(model)


def test_a_copy_kept_after_the_pass_holds_nothing_of_the_capture() -> None:
    from lens_train.capture.module_calls import ModuleCalls
    from lens_train.capture.records import OpRecord

    kept = []

    class Keeps(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            kept.append(copy.deepcopy(self.lin))  # e.g. a teacher made lazily in forward
            return self.lin(x)

    model, x = Keeps(), torch.randn(2, 3)
    lt.log_forward_pass(model, x)
    reachable, todo = set(), [kept[0]]
    while todo:  # everything the copy holds, transitively (a function: its closure, not its globals)
        obj = todo.pop()
        if id(obj) in reachable or isinstance(obj, (type, types.ModuleType, types.CodeType)):
            continue
        reachable.add(id(obj))
        assert not isinstance(obj, (ModuleCalls, OpRecord)), "a copy kept the capture's state alive"
        if isinstance(obj, types.FunctionType):
            todo.extend(cell.cell_contents for cell in obj.__closure__ or ())
            todo.extend(vars(obj).values())
        else:
            todo.extend(gc.get_referents(obj))
    assert torch.allclose(kept[0](x), model.lin(x))  # and it runs its own forward


class _NoForward(nn.Module):
    """A module whose forward cannot even be read: wrapping it fails half-way through attaching."""

    @property
    def forward(self) -> None:  # type: ignore[override]
        raise RuntimeError("no forward here")


@pytest.mark.parametrize("hot", [True, False])
def test_a_half_finished_attach_is_undone(monkeypatch: pytest.MonkeyPatch, hot: bool) -> None:
    from lens_train.capture import recorder

    if not hot:
        monkeypatch.setattr(recorder, "_hotpath", None)
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), _NoForward(), nn.Linear(3, 3))
    model[1].register_forward_pre_hook(lambda m, a: None)
    hooks = dict(model[1]._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="no forward here"):
        lt.log_forward_pass(model, torch.randn(2, 3))
    assert all("forward" not in vars(m) for m in model.modules()) and not model[0]._forward_hooks
    assert dict(model[1]._forward_pre_hooks) == hooks and not model[1]._forward_hooks
    del model[2]
    log = lt.log_forward_pass(model, torch.randn(2, 3))  # (and the model captures as before)
    assert [m for m in log.modules] == ["0", "1", "2"] and _no_trace(nn.Sequential(model[0], model[2]))
