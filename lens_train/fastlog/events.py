"""The light interceptor behind fastlog: torch calls and submodule returns become events.

An :class:`EventStream` is a ``TorchFunctionMode`` (for ops) plus forward hooks on the
model's modules (for module calls and for where the model's own call begins and ends).
Per event it builds one small :class:`RecordContext` and hands it, with the tensor, to
a handler; nothing else is kept, so it costs a few microseconds per op instead of a
full :class:`~lens_train.ModelLog`. It uses the capture engine's classification of
torch calls, so op types and granularity (which Python ``torch.nn.functional``
functions count as one op) are the same as in ``log_forward_pass``.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..capture.calls import (
    _THIN_FUNCTIONS,
    COMPOSITE,
    METADATA,
    _flatten_output,
    _is_inplace,
    _undispatched_copy,
    classify_call,
    inplace_target,
    is_thin_wrapper,
    op_outputs,
)
from ..capture.model_index import first_names
from .context import RecordContext

_Tensor = torch.Tensor
_KINDS: dict[Any, tuple[str, str, int]] = {}
_CLONES: dict[Any, Any] = {}
_MULTI_OP: set[Any] = set()  # Python functionals seen to run several ops: decomposed without buffering
Handler = Callable[[RecordContext, torch.Tensor], None]


class EventStream(TorchFunctionMode):
    """Calls ``handler(ctx, tensor)`` for every op output and submodule output of ``model``.

    Interception is on only while the model itself runs (from its forward pre-hook to
    its forward hook); the code around the model call runs untouched.
    """

    def __init__(self, model: nn.Module, handler: Handler, on_call_start: Callable[[], None],
                 on_call_end: Callable[[bool], None], history_size: int = 8) -> None:
        super().__init__()
        self.model = model
        self.handler = handler
        self.on_call_start = on_call_start
        self.on_call_end = on_call_end
        self.history_size = history_size
        self.before_inplace: Callable[[torch.Tensor], None] | None = None
        self.rollout = 0
        self._addresses = first_names(model.named_modules(remove_duplicate=False))
        self._classes = {id(m): type(m).__name__ for m in model.modules()}
        self._handles: list[Any] = []
        self._depth = 0
        self._frames: list[list] = []  # buffers of composite functions being learned
        self.reset()

    def reset(self) -> None:
        """Start a new rollout: counts, module passes and history begin again."""
        self._type_counts: dict[str, int] = {}
        self._module_calls: dict[str, int] = {}
        self._stack: list[tuple[str, str, int]] = []
        self._index = 0
        self._view_bases: set[int] = set()
        self._history: deque[RecordContext] = deque(maxlen=self.history_size)

    # -- installing -------------------------------------------------------------------
    def install(self) -> None:
        """Register the module hooks (the mode itself is entered per model call)."""
        for module in self.model.modules():
            if module is self.model:
                self._handles.append(module.register_forward_pre_hook(self._root_pre))
                self._handles.append(module.register_forward_hook(self._root_post, always_call=True))
            else:
                self._handles.append(module.register_forward_pre_hook(self._pre))
                self._handles.append(module.register_forward_hook(self._post, always_call=True))

    def uninstall(self) -> None:
        """Remove every hook and leave the mode if a failed call left it entered."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._depth:
            self._depth = 0
            TorchFunctionMode.__exit__(self, None, None, None)

    # -- module hooks -------------------------------------------------------------------
    def _root_pre(self, module: nn.Module, args: tuple) -> None:
        self._depth += 1
        if self._depth == 1:
            self.on_call_start()
            TorchFunctionMode.__enter__(self)

    def _root_post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0:
            TorchFunctionMode.__exit__(self, None, None, None)
            # torch calls this hook with output None from its exception handler when forward
            # raised; exc_info alone would also be set for a call made inside a user's except block
            self.on_call_end(output is not None or sys.exc_info()[0] is None)

    def _pre(self, module: nn.Module, args: tuple) -> None:
        address = self._addresses.get(id(module))
        if address is None or not self._depth:
            return
        n = self._module_calls.get(address, 0) + 1
        self._module_calls[address] = n
        self._stack.append((address, self._classes.get(id(module), type(module).__name__), n))

    def _post(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self._stack or self._addresses.get(id(module)) != self._stack[-1][0]:
            return
        address, cls, n = self._stack.pop()
        if sys.exc_info()[0] is not None:
            return
        # the mode is on here: the handler's own tensor calls must not become events
        with torch._C.DisableTorchFunction():
            tensors = _flatten_output(output)
            label = f"{address}:{n}"
            for i, t in enumerate(tensors):
                self._emit("module", label if len(tensors) == 1 else f"{label}[{i}]", cls.lower(), cls,
                           address, cls, n, t, i)

    # -- the hot path -----------------------------------------------------------------
    def __torch_function__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001
        if kwargs is None:
            kwargs = {}
        try:
            names = _KINDS[func]
        except (KeyError, TypeError):
            names = classify_call(func)
            try:
                _KINDS[func] = names
            except TypeError:
                pass
        kind = names[2]
        if kind >= METADATA:
            return func(*args, **kwargs)
        if kind == COMPOSITE:
            return self._composite(func, args, kwargs)
        name = names[0]
        inplace = _is_inplace(name, kwargs)
        if inplace and self.before_inplace is not None:
            target = inplace_target(args, kwargs)
            if isinstance(target, _Tensor):
                self.before_inplace(target)
        result = func(*args, **kwargs)
        outputs = op_outputs(name, args, kwargs, result)
        produced = len(outputs)
        if outputs and outputs[0]._base is not None:
            outputs = self._with_view_base(outputs, args, inplace)
        if self._frames:
            frame = self._frames[-1]
            frame[0] += 1
            frame[2] = produced
            frame[1].extend((names, t, i, tuple(self._stack)) for i, t in enumerate(outputs))
        else:
            for i, t in enumerate(outputs):
                self._op_event(names, t, i)
        return result

    def _with_view_base(self, outputs: list[torch.Tensor], args: tuple, inplace: bool) -> list[torch.Tensor]:
        """Mirror the capture engine's records for views, so type counts match the log's labels.

        The engine records a tensor once it is an op's argument (parameters aside). An
        in-place op on a view of such a tensor changes that base too, and the engine adds
        a record for the base's new value (same op type, next output index): fastlog adds
        the same event. A base counts as recorded once a view was taken of it directly.
        """
        if inplace:
            base = outputs[0]._base
            return [*outputs, base] if id(base) in self._view_bases else outputs
        for t in outputs:
            base = t._base
            if base is not None and not isinstance(base, nn.Parameter) and any(base is a for a in args):
                self._view_bases.add(id(base))
        return outputs

    def _op_event(self, names: tuple, t: torch.Tensor, out_index: int) -> None:
        layer_type = names[1]
        n = self._type_counts.get(layer_type, 0) + 1
        self._type_counts[layer_type] = n
        if self._stack:
            address, cls, passes = self._stack[-1]
        else:
            address, cls, passes = "", "", 0
        self._emit("op", f"{layer_type}_{n}", layer_type, names[0], address, cls, passes, t, out_index)

    def _emit(self, kind: str, label: str, layer_type: str, func_name: str, address: str, cls: str,
              passes: int, t: torch.Tensor, out_index: int) -> None:
        history = self._history
        ctx = RecordContext(kind, label, layer_type, func_name, address, cls, passes, t.shape, t.dtype,
                            t.device, t.requires_grad, self._index, out_index, self.rollout, history)
        self._index += 1
        try:
            self.handler(ctx, t)
        finally:
            ctx.history = ()
            history.append(ctx)

    def _composite(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run a Python functional with interception on inside (see the capture engine)."""
        clone = _CLONES.get(func)
        if clone is None:
            clone = _CLONES[func] = _undispatched_copy(func)
        learning = func not in _MULTI_OP
        if learning:
            self._frames.append([0, [], 0])
        TorchFunctionMode.__enter__(self)
        try:
            result = clone(*args, **kwargs)
        finally:
            TorchFunctionMode.__exit__(self, None, None, None)
            if learning:
                count, pending, produced = self._frames.pop()
        if learning:
            self._learned(func, count, pending, produced, result)
        return result

    def _learned(self, func: Any, count: int, pending: list, produced: int, result: Any) -> None:
        if pending and is_thin_wrapper(count, produced, result):
            names = classify_call(func)[:2] + (0,)  # one op: named after the function called
            pending = [(names, t, i, stack) for _n, t, i, stack in pending]
            _THIN_FUNCTIONS.add(func)
            _KINDS.pop(func, None)
        elif count >= 1:
            _MULTI_OP.add(func)
        if self._frames:
            self._frames[-1][0] += count
            self._frames[-1][1].extend(pending)
            self._frames[-1][2] = produced
            return
        saved = self._stack
        for names, t, i, stack in pending:
            self._stack = list(stack)
            self._op_event(names, t, i)
        self._stack = saved
