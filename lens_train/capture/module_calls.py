"""Which module calls are running while a forward pass is captured: forward pre/post hooks.

:class:`ModuleCalls` keeps the stack of open calls (``(address, pass)`` pairs, read by
the recorder for every op it records) and one :class:`ModuleCall` per call, with the
records that went in and came out. Its hooks are installed by :meth:`ModuleCalls.attach`
and removed by :meth:`ModuleCalls.detach` (the recorder calls both on every exit path).
With the C extension (``_hotpath``), the wrappers open and close calls in C, on these same
lists and dicts; the methods here run on the hook path and for outputs holding dicts or
dataclasses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .calls import _flatten_output, _tensors_in
from .model_index import ModuleFacts, module_facts, walk_modules
from .records import OpRecord, stored_prototype

_Tensor = torch.Tensor
_getframe = sys._getframe


@dataclass(slots=True)
class ModuleCall:
    """One call of one module during the forward pass."""

    address: str
    module_type: str
    pass_num: int
    depth: int
    parent: tuple[str, int] | None
    input_records: list[int] = field(default_factory=list)
    output_records: list[int] = field(default_factory=list)
    first_op: int = -1
    last_op: int = -1


class ModuleCalls:
    """The module calls of one forward pass of ``model`` (its own call is not one: it is the pass).

    ``lookup(tensor)`` gives the record that owns a tensor (or None); ``records`` is the
    recorder's record list, read for the ops each call spans.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> calls = ModuleCalls(model, lambda t: None, [])
        >>> calls.attach()
        >>> _ = model(torch.ones(1, 2))
        >>> calls.detach()
        >>> [(c.address, c.module_type, c.depth) for c in calls.calls], calls.stack
        ([('0', 'Linear', 1), ('1', 'ReLU', 1)], ())
    """

    def __init__(self, model: nn.Module, lookup: Callable[[torch.Tensor], OpRecord | None], records: list[OpRecord],
                 modules: tuple[tuple[str, nn.Module], ...] | None = None, open_calls: Any = None,
                 edit_output: Callable[[ModuleCall, Any], Any] | None = None, hot: Any = None,
                 owner: dict[int, OpRecord] | None = None, facts: ModuleFacts | None = None) -> None:
        self.model = model
        self.edit_output = edit_output  # (call, output) -> replacement output or None (interventions)
        self.open_calls = open_calls  # told the frame of each call (lens_train.capture.callsites.OpenCalls)
        self.calls: list[ModuleCall] = []
        self.stack: tuple[tuple[str, int], ...] = ()
        self._lookup = lookup
        self._records = records
        self._open: list[ModuleCall] = []
        self._count: dict[str, int] = {}
        self._hooked: list[nn.Module] = []
        self._wrapped: list[tuple[nn.Module, Any, Any]] = []  # (module, its own forward attribute or _ABSENT, wrapper)
        self._live: list[Any] = []  # while attached, what the wrappers call: [C call state] or [open, close]
        self._hook_id = -1
        # the C extension (lens_train.capture._hotpath) and the owner map it looks tensors up in:
        # wrappers then open and close calls in C (not under module edits: those stay in Python)
        self._hot = hot if owner is not None and open_calls is not None else None
        self._owner = owner
        self._modules = modules if modules is not None else walk_modules(model)
        self._facts = facts if facts is not None else module_facts(self._modules)
        self._addresses = self._facts.names
        self._types = self._facts.types

    def attach(self) -> None:
        """Start tracking every submodule (once per module, also when it is shared).

        A module without hooks of its own gets a wrapper around its ``forward`` (an
        instance attribute, removed by :meth:`detach`): torch then keeps calling it on
        its fast path, where hooks would send every call through the slow one (most of
        a module call's cost under capture). A module with hooks (or any global module
        hook) gets forward pre/post hooks instead, exactly where ``register_forward_pre_hook``
        and ``register_forward_hook(always_call=True)`` put them (last, so they see what
        the model's own hooks did), under one fresh handle id for the whole model.
        Either way a call is seen with the same arguments and output.
        """
        hook_id = self._hook_id = RemovableHandle.next_id
        RemovableHandle.next_id += 1
        pre, post = self._pre_hook, self._post_hook
        wrap = not _global_hooks()
        self._live[:] = (self._hot_calls(),) if self._hot is not None and self.edit_output is None else (
            self._opened, self._closed)
        hooked, wrapped, live = self._hooked, self._wrapped, self._live
        root = self.model
        # calls tracked in C: its version of _wrapper's tracked_forward (it passes torch's frame, not its own)
        hot = self._hot.Wrapper if len(live) == 1 else None
        modules: list[nn.Module] = self._facts.unique
        if hot is not None and wrap:  # the modules without hooks wrapped in C, the others left to this loop
            modules = self._hot.attach(modules, root, live, _CALL_IMPL, _CALL_WITH_HOOKS, wrapped, _ABSENT)
        for module in modules:
            if module is root:
                continue
            if wrap and not (module._forward_pre_hooks or module._forward_hooks or module._backward_hooks
                             or module._backward_pre_hooks):
                state = module.__dict__
                wrapper = (hot(module, module.forward, live, _CALL_IMPL, _CALL_WITH_HOOKS) if hot is not None
                           else self._wrapper(module, module.forward))
                # listed before installing: detach() also undoes a half-finished attach()
                wrapped.append((module, state.get("forward", _ABSENT), wrapper))
                state["forward"] = wrapper
                continue
            hooked.append(module)  # before installing: detach() also undoes a half-finished attach()
            module._forward_pre_hooks[hook_id] = pre
            module._forward_hooks[hook_id] = post
            module._forward_hooks_always_called[hook_id] = True

    def detach(self) -> None:
        """Remove every wrapper and hook :meth:`attach` installed."""
        self._live.clear()
        if self._hot is not None:
            self._hot.detach(self._wrapped, _ABSENT)
        for module, previous, wrapper in self._wrapped:
            state = module.__dict__
            if state.get("forward") is wrapper:  # (a forward the model set meanwhile is its own)
                if previous is _ABSENT:
                    del state["forward"]
                else:
                    state["forward"] = previous
        self._wrapped.clear()
        hook_id = self._hook_id
        for module in self._hooked:
            module._forward_pre_hooks.pop(hook_id, None)
            module._forward_hooks.pop(hook_id, None)
            module._forward_hooks_always_called.pop(hook_id, None)
        self._hooked.clear()

    def _hot_calls(self) -> Any:
        """The C state of this capture's calls: the same lists and dicts, and these methods for the rest."""
        calls = self.open_calls
        return self._hot.Calls(
            tracker=self, calls=self.calls, open=self._open, count=self._count, addresses=self._addresses,
            types=self._types, records=self._records, owner=self._owner, above=calls.above, codes=calls.codes,
            stop=calls.stop, call_type=ModuleCall, tensor_type=_Tensor, py_closed=self._closed, call_proto=_CALL_PROTO,
            call_init=_CALL_INIT)

    def _wrapper(self, module: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
        """``forward`` of ``module``, opening and closing a module call around it."""
        live = self._live  # emptied by detach(): a wrapper a copy of the module kept holds nothing of the capture

        def tracked_forward(*args: Any, **kwargs: Any) -> Any:
            # (no local holds this frame: a frame holding itself would outlive the call, with its tensors)
            caller = _getframe(1)
            if caller.f_code is not _CALL_IMPL and caller.f_code is not _CALL_WITH_HOOKS:
                return forward(*args, **kwargs)  # module.forward(x): no module call (as for hooks)
            owner = caller.f_locals.get("self")
            if owner is not module or not live:  # a copy of the module took this attribute along
                return type(owner).forward(owner, *args, **kwargs)
            opened, closed = live
            call = opened(module, args, _getframe())
            try:
                output = forward(*args, **kwargs)
            except BaseException:
                closed(call, None, _getframe(), failed=True)
                raise
            return closed(call, output, _getframe())

        tracked_forward.__wrapped__ = forward  # inspect.signature(module.forward) still reads the real one
        return tracked_forward

    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        self._opened(module, args, _getframe(1))  # torch's frame that runs this call's hooks and forward

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if self._addresses.get(id(module)) is None or not self._open:
            return None
        replaced = self._closed(self._open[-1], output, _getframe(1))
        return None if replaced is output else replaced

    def _opened(self, module: nn.Module, args: tuple, frame: Any) -> ModuleCall | None:
        """A call of ``module`` starts in ``frame`` (the frame that runs its forward): open it."""
        address = self._addresses.get(id(module))
        if address is None:
            return None
        count = self._count
        n = count[address] = count.get(address, 0) + 1
        stack = self.stack
        if len(args) == 1 and isinstance(args[0], _Tensor):  # the common call: one tensor
            rec = self._lookup(args[0])
            inputs = [rec.index] if rec is not None else []
        else:
            inputs = [rec.index for rec in map(self._lookup, _tensors_in(args)) if rec is not None]
        call = ModuleCall(address, self._types.get(id(module)) or type(module).__name__, n, len(stack) + 1,
                          stack[-1] if stack else None, inputs, [], len(self._records))
        self.calls.append(call)
        self._open.append(call)
        self.stack = (*stack, (address, n))
        if self.open_calls is not None:
            self.open_calls.enter(frame)
        return call

    def _closed(self, call: ModuleCall | None, output: Any, frame: Any, failed: bool = False) -> Any:
        """``call`` returned ``output`` (or raised): close it; the output, or an intervention's replacement."""
        if call is None or not self._open or self._open[-1] is not call:
            return output
        self._open.pop()
        self.stack = self.stack[:-1]
        if self.open_calls is not None:
            self.open_calls.exit(frame)
        call.last_op = len(self._records) - 1
        if failed:
            return output
        key = (call.address, call.pass_num)
        for t in (output,) if isinstance(output, _Tensor) else _flatten_output(output):
            rec = self._lookup(t)
            if rec is not None:
                if key not in rec.output_of_modules:
                    rec.output_of_modules += (key,)
                call.output_records.append(rec.index)
        if self.edit_output is not None:
            replaced = self.edit_output(call, output)
            if replaced is not None:
                return replaced
        return output


# the ModuleCall fields the C side passes for each call (the first 8), and the defaults of the others
_CALL_INIT, _CALL_PROTO = stored_prototype(ModuleCall, 8)


def _global_hooks() -> bool:
    """Whether any global module hook is registered (``torch.nn.modules.module.register_module_forward_hook``...)."""
    return any(getattr(_module_mod, name, None) for name in _GLOBAL_HOOKS)


_module_mod = sys.modules[nn.Module.__module__]
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")
_ABSENT = object()
# torch runs a module's forward from _call_impl (no hooks) or from its nested ``inner`` (hooks added during the pass)
_CALL_IMPL = nn.Module._call_impl.__code__
_CALL_WITH_HOOKS = next(c for c in _CALL_IMPL.co_consts if isinstance(c, CodeType) and c.co_name == "inner")


