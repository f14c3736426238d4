"""Interception of one forward pass: every torch call becomes an :class:`OpRecord`.

A :class:`Recorder` is a ``TorchFunctionMode`` plus forward hooks on the model's
modules. It is entered with ``with recorder:`` and removes everything it installed on
every exit path. The hot path (``__torch_function__``) only looks up parents, runs
the op, and appends records; labels and structure are derived afterwards.

Granularity: an operation is a torch-level call a user could have written (a torch
function, ``torch.nn.functional`` function, Tensor method, operator, indexing, or a
tensor-valued property). A Python-implemented ``torch.nn.functional`` function that
runs several ops (``multi_head_attention_forward``, ``normalize``...) is decomposed
into those ops; one that runs a single op is recorded once, under its own name.
Metadata reads (``.shape``, ``.dim()``, ``.dtype``) are not operations.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from .records import OpRecord, TensorArg, ViewBaseTemplate, make_ref

_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor

_TORCH_DIR = os.path.dirname(torch.__file__)
_LENS_DIR = os.path.dirname(os.path.dirname(__file__))
_Tensor = torch.Tensor
_Parameter = nn.Parameter
_perf = time.perf_counter
_INPLACE_DUNDERS = frozenset({"__setitem__"})
_TYPE_RENAMES = {torch._C.TensorBase.div: "truediv", torch.Tensor.__rdiv__: "rtruediv"}
_FUNCTIONAL_GLOBALS = torch.nn.functional.__dict__
_OP, _COMPOSITE, _METADATA, _BOOL = range(4)
OP, COMPOSITE, METADATA, BOOL = _OP, _COMPOSITE, _METADATA, _BOOL
# Calls that read metadata and never produce a tensor: skipped without any work.
_METADATA_NAMES = frozenset({
    "shape", "dtype", "device", "dim", "size", "numel", "nelement", "requires_grad", "is_floating_point",
    "is_complex", "__len__", "stride", "is_contiguous", "data_ptr", "element_size", "ndim", "ndimension",
    "is_cuda", "layout", "names", "is_sparse", "storage_offset", "get_device", "_version", "grad_fn",
    "is_leaf", "is_quantized", "is_meta", "is_nested", "__format__", "__repr__", "__hash__", "__index__",
    "__int__", "__float__", "item", "tolist", "untyped_storage", "is_mkldnn",
})
# Ops that update running-statistics buffers inside the kernel without bumping their version.
_HIDDEN_BUFFER_WRITERS = frozenset({"batchnorm", "instancenorm"})
# torch.nn.functional functions seen to run exactly one op: recorded as that one op
# without re-entering them (learned on first use, shared by all captures).
_THIN_FUNCTIONS: set[Any] = set()
_NO_GRAD_FALSE = lambda *a, **k: False  # noqa: E731 - stands in for has_torch_function*


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


@dataclass(frozen=True, slots=True)
class CapturePlan:
    """What one capture saves; compiled once before the forward pass runs."""

    save: str | frozenset[int] = "all"  # "all", "none", or record indices
    train_mode: bool = False
    postfunc: Callable[[torch.Tensor], Any] | None = None
    save_raw: bool = True
    record_rng: bool = False
    keep_templates: bool = False
    sink: Callable[[OpRecord], None] | None = None

    def saves(self, index: int) -> bool:
        s = self.save
        return s == "all" or (s != "none" and index in s)


def op_type(func: Any) -> tuple[str, str]:
    """(function name, layer type) of a torch callable: ``max_pool2d`` -> ``maxpool2d``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # tensor-valued property such as .T or .real
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    renamed = _TYPE_RENAMES.get(func) if _hashable(func) else None
    return name, renamed or name.replace("_", "").lower()


def classify_call(func: Any) -> tuple[str, str, int]:
    """(function name, layer type, kind) of a torch callable seen by a function mode.

    ``kind`` is ``OP`` (an operation), ``COMPOSITE`` (a Python ``torch.nn.functional``
    function to run with interception on inside), ``METADATA`` (a read such as ``.shape``:
    not an operation) or ``BOOL`` (``Tensor.__bool__``: a Python condition).

    Example:
        >>> import torch
        >>> classify_call(torch.relu)[0], classify_call(torch.Tensor.dim)[2] == METADATA
        ('relu', True)
    """
    name, layer_type = op_type(func)
    if type(func) is types.FunctionType and func.__globals__ is _FUNCTIONAL_GLOBALS and func not in _THIN_FUNCTIONS:
        kind = _COMPOSITE
    elif name == "__bool__":
        kind = _BOOL
    elif name in _METADATA_NAMES:
        kind = _METADATA
    else:
        kind = _OP
    return name, layer_type, kind


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _is_inplace(name: str, kwargs: dict) -> bool:
    if name.endswith("_") and not name.endswith("__"):
        return True
    return name in _INPLACE_DUNDERS or kwargs.get("inplace") is True or "out" in kwargs


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, _Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        out = []
        for v in value:
            if isinstance(v, _Tensor):
                out.append(v)
            elif isinstance(v, (tuple, list)):
                out.extend(t for t in v if isinstance(t, _Tensor))
        return out
    return []


def _canonical_offsets(code: Any) -> list[int]:
    """Instruction index -> the first instruction index with the same source position.

    Python compiles some code twice (a ``while`` condition before the loop and again at
    its end; ``finally`` bodies): both copies must give one call site.
    """
    positions = getattr(code, "co_positions", None)
    if positions is None:  # Python 3.10: instruction offsets only
        return list(range(len(code.co_code) // 2))
    first: dict[Any, int] = {}
    return [i if pos[0] is None else first.setdefault(pos, i) for i, pos in enumerate(positions())]


def _frame_kind(code: Any) -> int:
    """0: lens_train's own frame (ignored), 1: library frame, 2: user-code frame."""
    f = code.co_filename
    if f.startswith(_LENS_DIR):
        return 0
    return 1 if f.startswith(_TORCH_DIR) or f.startswith("<frozen") else 2


class Recorder(TorchFunctionMode):
    """Records every torch operation of one forward pass of ``model``.

    Use through :func:`lens_train.log_forward_pass`; the recorder itself is internal.
    """

    def __init__(self, model: nn.Module, plan: CapturePlan, stop_code: Any) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.records: list[OpRecord] = []
        self.module_calls: list[ModuleCall] = []
        self.error_record: str | None = None
        self._stop_code = stop_code
        self._owner: dict[int, OpRecord] = {}
        self._by_storage: dict[int, list[OpRecord]] = {}
        self._stack: tuple[tuple[str, int], ...] = ()
        self._open_calls: list[ModuleCall] = []
        self._calls_per_module: dict[str, int] = {}
        self._pending_branch: list[OpRecord] = []
        self._op_count = 0
        self._type_cache: dict[Any, tuple[str, str]] = {}
        self._code_kind: dict[Any, tuple[int, list[int]]] = {}
        self._clones: dict[Any, Any] = {}
        self._handles: list[Any] = []
        self._saved_from_numpy: Any = None
        self.addresses = _first_names(model.named_modules(remove_duplicate=False))
        self.param_addresses = _first_names(model.named_parameters(remove_duplicate=False))
        self.buffer_addresses = _first_names(model.named_buffers(remove_duplicate=False))
        self._module_types = {id(m): type(m).__name__ for m in model.modules()}

    # -- entering and leaving ---------------------------------------------------------
    def __enter__(self) -> Recorder:
        for module in self.model.modules():
            if module is self.model:
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook))
            self._handles.append(module.register_forward_hook(self._post_hook, always_call=True))
        self._saved_from_numpy = torch.from_numpy
        torch.from_numpy = self._from_numpy
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            torch.from_numpy = self._saved_from_numpy
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._owner.clear()

    # -- module hooks -------------------------------------------------------------------
    def _pre_hook(self, module: nn.Module, args: tuple) -> None:
        address = self.addresses.get(id(module))
        if address is None:
            return
        n = self._calls_per_module.get(address, 0) + 1
        self._calls_per_module[address] = n
        call = ModuleCall(address, self._module_types.get(id(module), type(module).__name__), n,
                          len(self._stack) + 1, self._stack[-1] if self._stack else None)
        call.first_op = len(self.records)
        for t in _tensors_in(args):
            rec = self._lookup(t)
            if rec is not None:
                call.input_records.append(rec.index)
        self.module_calls.append(call)
        self._open_calls.append(call)
        self._stack = self._stack + ((address, n),)

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        address = self.addresses.get(id(module))
        if address is None or not self._open_calls:
            return
        call = self._open_calls.pop()
        self._stack = self._stack[:-1]
        call.last_op = len(self.records) - 1
        key = (call.address, call.pass_num)
        for t in _flatten_output(output):
            rec = self._lookup(t)
            if rec is not None:
                if key not in rec.output_of_modules:
                    rec.output_of_modules += (key,)
                call.output_records.append(rec.index)

    # -- the hot path ---------------------------------------------------------------
    def __torch_function__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        try:
            names = self._type_cache[func]
        except (KeyError, TypeError):
            names = self._classify(func)
        kind = names[2]
        if kind == _METADATA:
            return func(*args, **kwargs)
        if kind == _COMPOSITE:
            return self._run_python_function(func, args, kwargs)
        if kind == _BOOL:
            result = func(*args, **kwargs)
            self._note_condition(args[0], result)
            return result
        name = names[0]
        inplace = _is_inplace(name, kwargs)
        parents, params = self._parents(args, kwargs)
        plan = self.plan
        template = self._template(args, kwargs) if plan.keep_templates else None
        rng = torch.get_rng_state() if plan.record_rng else None
        if inplace:
            self.copy_on_write(kwargs["out"] if "out" in kwargs else args[0])
        start = _perf()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._add_note(exc, names[1])
            raise
        elapsed = _perf() - start
        if name == "__setitem__":
            outputs = [args[0]]
        elif "out" in kwargs and isinstance(kwargs["out"], _Tensor):
            outputs = [kwargs["out"]]
        else:
            outputs = _tensors_in(result)
        if outputs:
            self._record_op(func, names, outputs, parents, params, elapsed, inplace, rng, template)
        if names[1] in _HIDDEN_BUFFER_WRITERS:
            self._forget_buffers(args, kwargs)
        return result

    def _forget_buffers(self, args: tuple, kwargs: dict) -> None:
        """Buffers an op updated inside its kernel (no version bump): their next read is a new value."""
        for t in (*args, *kwargs.values()):
            if isinstance(t, _Tensor) and id(t) in self.buffer_addresses:
                self._owner.pop(id(t), None)

    def _classify(self, func: Any) -> tuple[str, str, int]:
        names = classify_call(func)
        if _hashable(func):
            self._type_cache[func] = names
        return names

    def _record_op(self, func, names, outputs, parents, params, elapsed, inplace, rng, template):  # noqa: ANN001
        callsite, frames = self._callsite()
        op_id = self._op_count
        self._op_count += 1
        for i, t in enumerate(outputs):
            rec = self._new_record(names, func, op_id, i, parents, callsite, frames, t)
            rec.param_ids = params
            rec.time_s = elapsed
            rec.is_inplace = inplace
            rec.rng_state = rng
            rec.call_template = template
            rec.is_internally_generated = not parents
            self._finish(rec, t)
        target = outputs[0]
        if inplace and target._base is not None:
            base = target._base
            base_rec = self._owner.get(id(base))
            if base_rec is not None and base_rec.tensor_ref() is base:
                # the base changed through its view: a new value of the base, fed by the view
                view_rec = len(self.records) - len(outputs)
                rec = self._new_record(names, func, op_id, len(outputs), [(base_rec.index, "base"), (view_rec, "view")],
                                       callsite, frames, base)
                rec.is_inplace = True
                rec.source_name = "view-base"
                rec.rng_state = rng
                if template is not None:
                    rec.call_template = ViewBaseTemplate(template, tuple(target.shape), tuple(target.stride()),
                                                         target.storage_offset() - base.storage_offset())
                self._finish(rec, base)

    def _new_record(self, names, func, op_id, out_index, parents, callsite, frames, t) -> OpRecord:  # noqa: ANN001
        rec = OpRecord(len(self.records), names[0], names[1], func, op_id, out_index, list(parents),
                       self._stack, callsite, frames)
        if self._pending_branch:
            for cond in self._pending_branch:
                cond.branch_starts += (rec.index,)
            self._pending_branch = []
        return rec

    def _finish(self, rec: OpRecord, t: torch.Tensor, clone: bool = False) -> None:
        """Describe ``t`` on ``rec``, save it if planned, and make ``rec`` its owner."""
        rec.shape = tuple(t.shape)
        rec.dtype = t.dtype
        rec.device = t.device
        rec.nbytes = t.nelement() * t.element_size()
        rec.requires_grad = t.requires_grad
        gf = t.grad_fn
        rec.grad_fn_name = type(gf).__name__ if gf is not None else None
        rec.version = t._version
        rec.tensor_ref = make_ref(t)
        self.records.append(rec)
        self._owner[id(t)] = rec
        if self.plan.saves(rec.index):
            self._save(rec, t, clone)
        if self.plan.sink is not None:
            self.plan.sink(rec)

    def _save(self, rec: OpRecord, t: torch.Tensor, clone: bool = False) -> None:
        plan = self.plan
        value = t if plan.train_mode else t.detach()
        if clone:
            value = value.clone()
        if plan.postfunc is not None:
            rec.transformed_activation = plan.postfunc(value)
        if plan.save_raw:
            rec.activation = value
            if not clone and value.layout == torch.strided and value.device.type != "meta":
                self._by_storage.setdefault(_storage_key(value), []).append(rec)

    def copy_on_write(self, target: Any) -> None:
        """Clone saved values that share ``target``'s memory before an in-place op changes it."""
        if not isinstance(target, _Tensor) or not self._by_storage:
            return
        for rec in self._by_storage.pop(_storage_key(target), ()):
            if rec.activation is not None:
                rec.activation = rec.activation.clone()

    # -- parents, sources, call sites -------------------------------------------------
    def _lookup(self, t: torch.Tensor) -> OpRecord | None:
        rec = self._owner.get(id(t))
        if rec is not None and rec.tensor_ref() is t:
            return rec
        return None

    def _parents(self, args: tuple, kwargs: dict) -> tuple[list, tuple]:
        parents: list[tuple[int, Any]] = []
        params: list[int] = []
        for pos, a in enumerate(args):
            if isinstance(a, _Tensor):
                self._link(a, pos, parents, params)
            elif isinstance(a, (list, tuple)):
                for j, b in enumerate(a):
                    if isinstance(b, _Tensor):
                        self._link(b, (pos, j), parents, params)
        for key, a in kwargs.items():
            if isinstance(a, _Tensor) and key != "out":
                self._link(a, key, parents, params)
        return parents, tuple(params)

    def _link(self, t: torch.Tensor, pos: Any, parents: list, params: list) -> None:
        rec = self._owner.get(id(t))
        if rec is None or rec.tensor_ref() is not t:
            if isinstance(t, _Parameter):
                params.append(id(t))
                return
            rec = self._source(t)
        elif rec.version != t._version:
            rec = self._refresh(t)
        parents.append((rec.index, pos))

    def _refresh(self, t: torch.Tensor) -> OpRecord:
        """A record for the new value of ``t``, changed in place through another view or inside a C op.

        A view of a recorded base becomes ``as_strided(base)`` of the base's current
        record; anything else (a buffer updated by BatchNorm...) enters as a new source.
        """
        base = t._base
        base_rec = self._lookup(base) if base is not None else None
        if base_rec is None or base_rec.version != base._version:
            return self._source(t)
        geometry = (tuple(t.shape), tuple(t.stride()), t.storage_offset() - base.storage_offset())
        callsite, frames = self._callsite()
        rec = self._new_record(("as_strided", "asstrided"), torch.as_strided, self._op_count, 0,
                               [(base_rec.index, 0)], callsite, frames, t)
        self._op_count += 1
        rec.source_name = "view-refresh"
        if self.plan.keep_templates:
            rec.call_template = ((TensorArg(base_rec.index), *geometry), {})
        self._finish(rec, t)
        return rec

    def _source(self, t: torch.Tensor, name: str | None = None) -> OpRecord:
        """A record for a tensor that enters the graph without an op: input, buffer, constant."""
        if _is_functorch_wrapped(t):
            raise UnsupportedModelError(
                "torch.func transforms (vmap, grad, jacrev, functional_call inside a transform...) cannot be logged "
                "inside forward: their ops run on wrapped tensors whose values do not exist outside the transform. "
                "Log the model with the transform removed (e.g. run the function on the whole batch, or use "
                "torch.autograd.grad instead of torch.func.grad)."
            )
        address = self.buffer_addresses.get(id(t))
        if name is not None:
            names = ("input", "input")
        elif address is not None:
            names = ("buffer", "buffer")
        else:
            names = ("tensor", "tensor")
        rec = OpRecord(len(self.records), names[0], names[1], None, self._op_count, 0, [],
                       self._stack, (), ())
        self._op_count += 1
        rec.is_input = name is not None
        rec.source_name = name
        rec.is_buffer = address is not None
        rec.buffer_address = address
        rec.is_internally_generated = name is None and address is None
        # buffers change inside C ops (BatchNorm running stats), unseen: snapshot them now
        self._finish(rec, t, clone=address is not None)
        return rec

    def add_input(self, t: torch.Tensor, name: str) -> None:
        """Register one tensor of the model's input (called before the forward pass)."""
        with torch._C.DisableTorchFunction():
            if self._lookup(t) is None:
                self._source(t, name)

    def add_outputs(self, output: Any) -> None:
        """Append ``output_N`` records for the model's output tensors."""
        with torch._C.DisableTorchFunction():
            self._add_outputs(output)

    def _add_outputs(self, output: Any) -> None:
        for t in _flatten_output(output):
            rec = self._lookup(t)
            if rec is None:
                rec = self._source(t)
            elif rec.version != t._version:
                rec = self._refresh(t)
            out = OpRecord(len(self.records), "output", "output", None, self._op_count, 0,
                           [(rec.index, 0)], (), (), ())
            self._op_count += 1
            out.is_output = True
            self._finish(out, t)
            if rec.activation is not None and out.activation is None and self.plan.saves(out.index):
                out.activation = rec.activation

    def _callsite(self) -> tuple[tuple, tuple]:
        """(call-site key, user frames): every frame below the model call, innermost first.

        The key holds (code, instruction offset) of every frame, library frames
        included, so two statements never share a key while a loop body always does.
        Only user-code frames are kept for display.
        """
        f = sys._getframe(1)
        key = []
        frames = []
        stop = self._stop_code
        kinds = self._code_kind
        while f is not None:
            code = f.f_code
            if code is stop:
                break
            entry = kinds.get(code)
            if entry is None:
                entry = kinds[code] = (_frame_kind(code), _canonical_offsets(code))
            kind = entry[0]
            if kind:
                key.append(id(code))  # code objects hash slowly; their ids are stable while loaded
                canon = entry[1]
                i = f.f_lasti >> 1
                key.append(canon[i] if 0 <= i < len(canon) else -1 - i)
                if kind == 2:
                    frames.append((code, f.f_lineno))
            f = f.f_back
        return tuple(key), tuple(frames)

    def _template(self, args: tuple, kwargs: dict) -> tuple:
        def conv(v: Any) -> Any:
            if isinstance(v, _Tensor):
                rec = self._lookup(v)
                return TensorArg(rec.index) if rec is not None else TensorArg(None, v)
            if isinstance(v, (list, tuple)) and any(isinstance(x, _Tensor) for x in v):
                return type(v)(conv(x) for x in v) if type(v) in (list, tuple) else list(map(conv, v))
            return v

        return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}

    # -- special calls ------------------------------------------------------------------
    def _note_condition(self, t: Any, value: Any) -> None:
        rec = self._lookup(t) if isinstance(t, _Tensor) else None
        if rec is not None:
            rec.bool_values += (bool(value),)
            self._pending_branch.append(rec)

    def _run_python_function(self, func: Any, args: tuple, kwargs: dict) -> Any:
        """Run a Python torch.nn.functional function with interception still on inside it."""
        clone = self._clones.get(func)
        if clone is None:
            clone = self._clones[func] = _undispatched_copy(func)
        start = len(self.records)
        TorchFunctionMode.__enter__(self)
        try:
            result = clone(*args, **kwargs)
        finally:
            TorchFunctionMode.__exit__(self, None, None, None)
        new = [r for r in self.records[start:] if r.func is not None]
        if new and len({r.op_id for r in new}) == 1:  # inputs/buffers first seen inside do not count
            # a thin wrapper around one op: name the op after the function the user called, and
            # give it the call site later (thin) calls will have, so loop passes line up
            name, layer_type = op_type(func)
            callsite, frames = self._callsite()
            for rec in new:
                rec.func_name, rec.layer_type = name, layer_type
                rec.callsite, rec.frames = callsite, frames
            _THIN_FUNCTIONS.add(func)
            self._type_cache.pop(func, None)
        return result

    def _from_numpy(self, array: Any) -> torch.Tensor:
        t = self._saved_from_numpy(array)
        callsite, frames = self._callsite()
        rec = OpRecord(len(self.records), "from_numpy", "fromnumpy", self._saved_from_numpy,
                       self._op_count, 0, [], self._stack, callsite, frames)
        self._op_count += 1
        rec.is_internally_generated = True
        self._finish(rec, t)
        return t

    def _add_note(self, exc: BaseException, layer_type: str) -> None:
        notes = getattr(exc, "__notes__", ())
        if any(n.startswith("lens_train:") for n in notes):
            return
        where = f" inside module '{self._stack[-1][0]}' (call {self._stack[-1][1]})" if self._stack else ""
        self.error_record = f"{layer_type} (operation #{self._op_count + 1}){where}"
        exc.add_note(f"lens_train: raised while capturing {self.error_record}")


def _first_names(named: Any) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, obj in named:
        out.setdefault(id(obj), name)
    return out


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return id(t)


def _flatten_output(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _flatten_into(value, out, 0)
    return out


def _flatten_into(value: Any, out: list, depth: int) -> None:
    if isinstance(value, _Tensor):
        out.append(value)
    elif depth > 8:
        return
    elif isinstance(value, dict):
        for v in value.values():
            _flatten_into(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flatten_into(v, out, depth + 1)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _flatten_into(getattr(value, name, None), out, depth + 1)


def _undispatched_copy(func: types.FunctionType) -> types.FunctionType:
    """A copy of ``func`` whose own ``has_torch_function`` checks are off.

    Calling it with the mode active records the ops inside ``func`` without
    re-dispatching ``func`` itself to the mode (which would recurse forever).
    """
    glb = dict(func.__globals__)
    for name in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
        if name in glb:
            glb[name] = _NO_GRAD_FALSE
    copy = types.FunctionType(func.__code__, glb, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    return copy
