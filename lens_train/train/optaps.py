"""Op-level taps: interception scoped to the one module that runs the tapped ops.

An :class:`OpScope` belongs to one module. Its function mode is pushed by that
module's forward pre-hook and popped by its post-hook, and popped again while a
submodule runs (ops there belong to the submodule, as in the capture engine), so
ops anywhere else cost nothing. While active it counts the ops of each type run
directly by the current call; an op whose ``(type, index)`` is wanted hands its
output to the tap. The granularity (which calls are ops, how Python
``torch.nn.functional`` functions are decomposed) is the capture engine's, so
indices match the example pass that resolved the names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..capture.calls import _THIN_FUNCTIONS, COMPOSITE, OP, _undispatched_copy, classify_call, is_thin_wrapper, op_outputs
from ..capture.scoping import remove_mode
from ..errors import EditError

_Tensor = torch.Tensor
_stack_len = torch._C._len_torch_function_stack
_stack_at = torch._C._get_function_stack_at
_push = torch._C._push_on_torch_function_stack
_pop = torch._C._pop_torch_function_stack
_KINDS: dict[Any, tuple[str, str, int]] = {}
_CLONES: dict[Any, Any] = {}

# (op type, index among ops of that type in the call) -> [(output index, tap numbers)]
Wanted = dict[tuple[str, int], list[tuple[int, tuple[int, ...]]]]
# (tap numbers, value, edit?) -> the value the model continues with
Take = Callable[..., Any]


@dataclass(slots=True)
class _Frame:
    """One active call of the scope's module."""

    counts: dict[str, int] = field(default_factory=dict)
    paused: int = 0
    pushed: bool = False
    ops: int = 0
    last: tuple[str, tuple[int, ...]] | None = None  # (type, tap numbers) of the latest op
    last_outputs: int = 0  # its number of output tensors


def _kind(func: Any) -> tuple[str, str, int]:
    try:
        return _KINDS[func]
    except KeyError:
        names = _KINDS[func] = classify_call(func)
        return names
    except TypeError:  # unhashable callables
        return classify_call(func)


class _OpMode(TorchFunctionMode):
    def __init__(self, scope: OpScope) -> None:
        super().__init__()
        self.scope = scope

    def __torch_function__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        frames = self.scope.frames
        if not frames or frames[-1].paused:
            return func(*args, **kwargs)
        name, layer_type, kind = _kind(func)
        if kind == OP:
            result = func(*args, **kwargs)
            return self.scope.count(frames[-1], name, layer_type, args, kwargs, result)
        if kind == COMPOSITE:
            return self.scope.run_composite(frames[-1], func, args, kwargs)
        return func(*args, **kwargs)  # metadata reads and Python conditions are not ops


class OpScope:
    """The op-level taps inside one module (internal to :class:`lens_train.Taps`)."""

    def __init__(self, address: str, wanted: Wanted, take: Take, uncapture: Callable[[int], bool]) -> None:
        self.address = address
        self.wanted = wanted
        self.take = take
        self.uncapture = uncapture
        self.frames: list[_Frame] = []
        self.mode = _OpMode(self)

    # -- module boundaries ------------------------------------------------------------
    def enter(self) -> None:
        """The scope's module starts a call: count afresh and intercept."""
        frame = _Frame()
        self.frames.append(frame)
        _push(self.mode)
        frame.pushed = True

    def exit(self) -> None:
        """The scope's module call ends."""
        if self.frames:
            frame = self.frames.pop()
            if frame.pushed:
                self._pop_mode()

    def pause(self) -> None:
        """A submodule starts: its ops are not this call's."""
        if not self.frames:
            return
        frame = self.frames[-1]
        frame.paused += 1
        if frame.paused == 1 and frame.pushed and self._on_top():
            _pop()
            frame.pushed = False

    def resume(self) -> None:
        """The submodule returned."""
        if not self.frames or not self.frames[-1].paused:
            return
        frame = self.frames[-1]
        frame.paused -= 1
        if frame.paused == 0 and not frame.pushed:
            _push(self.mode)
            frame.pushed = True

    def reset(self) -> None:
        """Leave no mode behind (after an exception or an interrupt inside the forward pass)."""
        while self.frames:
            self.exit()
        remove_mode(self.mode)  # pushed by an enter that was interrupted before it could note it

    def _on_top(self) -> bool:
        n = _stack_len()
        return n > 0 and _stack_at(n - 1) is self.mode

    def _pop_mode(self) -> None:
        if self._on_top():
            _pop()
            return
        # a user mode pushed inside the module and left on the stack: remove ours only
        saved = []
        while _stack_len() and _stack_at(_stack_len() - 1) is not self.mode:
            saved.append(_pop())
        if _stack_len():
            _pop()
        for mode in reversed(saved):
            _push(mode)

    # -- the hot path -----------------------------------------------------------------
    def taps(self) -> set[int]:
        """The tap numbers of this scope."""
        return {tap for hits in self.wanted.values() for _, taps in hits for tap in taps}

    def count(self, frame: _Frame, name: str, layer_type: str, args: tuple, kwargs: dict, result: Any,
              edit: bool = True) -> Any:
        """Count one op; hand its output to the taps that want it. Returns the result the model continues
        with (an edit replaces the tapped output in it)."""
        outputs = op_outputs(name, args, kwargs, result)
        if not outputs:
            return result
        counts = frame.counts
        n = counts.get(layer_type, 0)
        counts[layer_type] = n + 1
        frame.ops += 1
        frame.last = (layer_type, ())
        frame.last_outputs = len(outputs)
        hits = self.wanted.get((layer_type, n))
        if hits is None:
            return result
        for out_index, taps in hits:
            t = _pick(outputs, out_index)
            if t is not None:
                new = self.take(taps, t, edit)
                frame.last = (layer_type, frame.last[1] + taps)
                if new is not t:
                    result = _replace(result, t, new, name, args, kwargs, layer_type)
        return result

    def run_composite(self, frame: _Frame, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run a Python ``torch.nn.functional`` function with interception on inside it."""
        clone = _CLONES.get(func)
        if clone is None:
            clone = _CLONES[func] = _undispatched_copy(func)
        before = frame.ops
        _push(self.mode)
        try:
            result = clone(*args, **kwargs)
        finally:
            _pop()
        if frame.last is not None and is_thin_wrapper(frame.ops - before, frame.last_outputs, result):
            return self._as_thin(frame, func, args, kwargs, result)
        return result

    def _as_thin(self, frame: _Frame, func: Any, args: tuple, kwargs: dict, result: Any) -> Any:
        # A wrapper around one op is one op named after the function (the engine's rule).
        layer_type, taps = frame.last
        frame.counts[layer_type] -= 1
        frame.ops -= 1
        edited = False
        for tap in taps:
            edited = self.uncapture(tap) or edited
        _THIN_FUNCTIONS.add(func)
        _KINDS.pop(func, None)
        name, thin_type, _ = _kind(func)
        # An edit of the one op inside already shaped ``result``: it is not applied twice.
        return self.count(frame, name, thin_type, args, kwargs, result, edit=not edited)


def _replace(result: Any, old: torch.Tensor, new: Any, name: str, args: tuple, kwargs: dict, layer_type: str) -> Any:
    """``result`` with the tapped output ``old`` replaced by its edited value ``new``."""
    in_place = name == "__setitem__" or "out" in kwargs or (name.endswith("_") and not name.startswith("__")
                                                              and bool(args) and args[0] is old)
    if in_place:
        raise EditError(
            f"Cannot edit the output of the in-place op {name!r} ({layer_type}): it writes into an existing tensor, "
            "which the model keeps using whatever the op returns. Edit the op or module that computes that tensor, "
            "or the next op that reads it."
        )
    if result is old:
        return new
    if isinstance(result, (tuple, list)) and any(r is old for r in result):
        items = [new if r is old else r for r in result]
        if type(result) is list:
            return items
        if type(result) is tuple:
            return tuple(items)
        return type(result)(*items) if hasattr(result, "_fields") else type(result)(items)
    raise EditError(f"Cannot edit this output of {name!r} ({layer_type}): it is not one of the tensors the op "
                    "returns (an in-place op on a view also changes its base). Edit the op that computes it.")


def _pick(outputs: list[torch.Tensor], index: int) -> torch.Tensor | None:
    if index < len(outputs):
        return outputs[index]
    if index == len(outputs) and outputs and outputs[0]._base is not None:
        return outputs[0]._base  # an in-place op on a view also changes its base
    return None
