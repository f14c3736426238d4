"""Interception of one forward pass: every torch call becomes an :class:`OpRecord`.

A :class:`Recorder` is a ``TorchFunctionMode`` plus forward hooks on the model's
modules (:mod:`~lens_train.capture.module_calls`). It is entered with ``with recorder:``
and removes everything it installed on every exit path. The hot path
(``__torch_function__``) only looks up parents, runs the op, and appends records;
call sites come from :mod:`~lens_train.capture.callsites`, and labels and structure
are derived afterwards. Where the C extension ``_hotpath`` is built, its handler does
the same for the common op (not in place, tensors out) and calls the method for
everything else.

Granularity (:mod:`lens_train.capture.calls` decides it): an operation is a torch-level
call a user could have written (a torch function, ``torch.nn.functional`` function,
Tensor method, operator, indexing, or a tensor-valued property). A Python-implemented
``torch.nn.functional`` function that runs several ops (``multi_head_attention_forward``,
``normalize``...) is decomposed into those ops; one that runs a single op is recorded
once, under its own name. Metadata reads (``.shape``, ``.dim()``, ``.dtype``) are not
operations.
"""

from __future__ import annotations

import sys
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MethodType
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedModelError
from .calls import (
    _THIN_FUNCTIONS,
    BOOL,
    CLASSIFIED,
    COMPOSITE,
    METADATA,
    _flatten_output,
    _is_inplace,
    _undispatched_copy,
    classify_cached,
    inplace_target,
    is_thin_wrapper,
    op_outputs,
    op_type,
)
from .bookkeeping import own_data_freedom
from .callsites import OpenCalls, find_callsite, inside_sharding_hooks, resolve_callsites, shared_sites
from .model_index import ModelIndex, first_names, index_model, loaded_hotpath
from .module_calls import ModuleCall, ModuleCalls
from .recorder_edits import _VALUE_READS, InterventionHooks, _grad_fn_name, rng_states
from .records import OpRecord, TensorArg, ViewBaseTemplate, stored_prototype
from .scoping import release_mode_frames, remove_mode

_is_functorch_wrapped = torch._C._functorch.is_functorch_wrapped_tensor

# the common op in C, or None (loaded in model_index: see there); tests set it to None for the Python path
_hotpath = loaded_hotpath


# the OpRecord fields the C handler passes for each new record (the first 14 of __init__, in order), and the
# defaults of the others (records are made without OpRecord.__init__ where it only stores fields)
_RECORD_INIT, _RECORD_PROTO = stored_prototype(OpRecord, 14)

_Tensor = torch.Tensor
_Parameter = nn.Parameter
_perf = time.perf_counter
_getframe = sys._getframe
_weakref = weakref.ref
# Ops that update running-statistics buffers inside the kernel without bumping their version.
HIDDEN_BUFFER_WRITERS = frozenset({"batchnorm", "instancenorm"})


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
    # interventions: record index -> edit of that op's output; (module address, call) -> edit of
    # that call's output. Each edit is ``fn(value) -> value`` and is run with interception off.
    edits: Mapping[int, Callable[[Any], Any]] | None = None
    module_edits: Mapping[tuple[str, int], Callable[[Any], Any]] | None = None
    read_values: bool = False  # note the Python reads of tensors (.item(), int()...): replayable captures

    def saves(self, index: int) -> bool:
        s = self.save
        return s == "all" or (s != "none" and index in s)


class Recorder(InterventionHooks, TorchFunctionMode):
    """Records every torch operation of one forward pass of ``model``.

    Use through :func:`lens_train.log_forward_pass`; the recorder itself is internal.
    """

    def __init__(self, model: nn.Module, plan: CapturePlan, stop_code: Any, index: ModelIndex | None = None) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.records: list[OpRecord] = []
        self.index = index if index is not None else index_model(model)
        self._codes: dict[int, Any] = {}  # code objects of the raw call sites, by id
        self._sites: dict[tuple, int] | None = None  # call-site key -> number (shared_sites(), at the first resolve)
        self._open_calls = (OpenCalls(stop_code, self._codes, _hotpath.walk, _hotpath.note_call_code)
                            if _hotpath is not None else OpenCalls(stop_code, self._codes))
        self._above = self._open_calls.above
        self._owner: dict[int, OpRecord] = {}
        # a lookup that holds the owner map, not the recorder: no reference cycle, so a
        # capture's records (and the tensors they hold) are freed as soon as it is dropped
        self._lookup = owner_lookup(self._owner)
        facts = self.index.module_facts()
        self.module_tracker = ModuleCalls(model, self._lookup, self.records, self.index.modules, self._open_calls,
                                          self._edit_module_output if plan.module_edits else None, _hotpath,
                                          self._owner, facts)
        self.module_calls: list[ModuleCall] = self.module_tracker.calls
        # (exception, the record its op would have had): the op that raised, for the error note
        self.failure: tuple[BaseException, OpRecord] | None = None
        self._stop_code = stop_code
        self._by_storage: dict[int, list[OpRecord]] = {}
        self._unindexed: list[OpRecord] = []  # saved values not yet in _by_storage (indexed when first needed)
        # parameters by storage: one changed in place by forward is backed up first and
        # put back on exit, so a capture never changes parameter values
        self._param_storage: dict[int, nn.Parameter] | None = None  # filed on the first in-place op
        self._param_backups: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_branch: list[OpRecord] = []
        self._free: dict[int, bool] = {}
        self._op_count = 0
        self._read_values = plan.read_values
        self._save_all = plan.save == "all"
        self._save_some = not self._save_all and plan.save != "none"
        self._extras = plan.keep_templates or plan.record_rng or plan.edits is not None  # off the fast path
        self._sink = plan.sink
        self._clones: dict[Any, Any] = {}
        self._saved_from_numpy: Any = None
        self.buffer_addresses = first_names(self.index.buffers)
        # FSDP runs ops of its own in its hooks; only a sharded model pays for finding them
        self._sharded = facts.sharded
        # the common op in C when it is built (see _hot_handler); the rare cases always run here, in Python
        self._hot_path = _hotpath is not None and not (plan.edits is not None or self._read_values or self._sharded)
        if self._sharded:  # FSDP swaps parameter storages during forward: file them as they are now
            self._param_storage = {_storage_key(p): p for _, p in self.index.unique_params()}

    # -- entering and leaving ---------------------------------------------------------
    def __enter__(self) -> Recorder:
        # Callers defer SIGINT around entering and leaving (lens_train.capture.scoping);
        # a failure half-way still removes whatever was installed.
        try:
            self.module_tracker.attach()
            if self._hot_path:
                self.__torch_function__ = self._hot_handler()  # an instance attribute: torch calls it instead
            self._saved_from_numpy = torch.from_numpy
            torch.from_numpy = self._from_numpy
            super().__enter__()
        except BaseException:
            self._uninstall()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            release_mode_frames(exc[2] if len(exc) > 2 else None)
            self._uninstall()
        finally:
            self._above.clear()  # frames of calls an exception left open
            self._owner.clear()
            self.module_tracker.edit_output = None  # a bound method of this recorder: a cycle once the pass is over
            self._restore_parameters()

    def _hot_handler(self) -> Any:
        """The C handler of the common op (:mod:`lens_train.capture._hotpath`); it calls back for the rest."""
        plan = self.plan
        return _hotpath.Handler(
            recorder=self, fallback=MethodType(Recorder.__torch_function__, self), link=self._link,
            note_failure=self._note_failure, record_outputs=self._record_outputs, classified=CLASSIFIED,
            owner=self._owner, records=self.records, codes=self._codes, above=self._above, stop=self._stop_code,
            tracker=self.module_tracker, pending=self._pending_branch, unindexed=self._unindexed, record_type=OpRecord,
            tensor_type=_Tensor, param_type=_Parameter, save_set=plan.save if self._save_some else None,
            postfunc=plan.postfunc, sink=plan.sink, template_fn=self._template if plan.keep_templates else None,
            context_fn=_replay_context if plan.keep_templates else None,
            rng_fn=rng_states if plan.record_rng else None, record_proto=_RECORD_PROTO, record_init=_RECORD_INIT,
            save_all=self._save_all, detach=not plan.train_mode, save_raw=plan.save_raw)

    def _uninstall(self) -> None:
        """Remove the mode (wherever it is on the stack), the from_numpy patch and the hooks; idempotent."""
        remove_mode(self)
        self.__dict__.pop("__torch_function__", None)  # the C handler (it holds the recorder: a cycle otherwise)
        if torch.from_numpy == self._from_numpy:
            torch.from_numpy = self._saved_from_numpy
        self.module_tracker.detach()

    def _restore_parameters(self) -> None:
        with torch.no_grad():
            for param, value in self._param_backups:
                self.copy_on_write(param)  # saved views of the parameter keep their captured values
                param.copy_(value)
        self._param_backups.clear()

    def resolve_callsites(self, extra: list[OpRecord] | None = None) -> None:
        """Turn the raw call sites of the records (and ``extra`` ones) into site numbers and user frames."""
        if self._sites is None:
            self._sites = shared_sites()
        resolve_callsites(self.records if extra is None else [*self.records, *extra], self._codes, self._sites,
                          _hotpath.resolve_sites if _hotpath is not None else None)

    # -- the hot path ---------------------------------------------------------------
    def __torch_function__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        try:
            names = CLASSIFIED[func]
        except (KeyError, TypeError):
            names = classify_cached(func)
        kind = names[2]
        if kind == METADATA:
            if self._read_values and names[0] in _VALUE_READS:
                return self._note_read(func, names[0], args, kwargs)
            return func(*args, **kwargs)
        if kind == COMPOSITE:
            return self._run_python_function(func, args, kwargs)
        if kind == BOOL:
            result = func(*args, **kwargs)
            self._note_condition(args[0], result)
            return result
        name = names[0]
        # in place by name (add_, __setitem__) or by keyword (out=, inplace=True)
        inplace = _is_inplace(name, kwargs) if kwargs or name[-1] == "_" else False
        parents, params = self._parents(args, kwargs)
        if not (inplace or self._extras):
            result, elapsed = self._timed(func, args, kwargs, names, parents, params)
            if isinstance(result, _Tensor) and name != "__setitem__" and "out" not in kwargs:
                self._record_one(func, names, result, parents, params, elapsed)
            else:
                self._record_outputs(func, names, args, kwargs, result, parents, params, elapsed)
            if names[1] in HIDDEN_BUFFER_WRITERS:
                self._forget_buffers(args, kwargs)
            return result
        plan = self.plan
        template = self._template(args, kwargs) if plan.keep_templates else None
        context = _replay_context() if plan.keep_templates else None
        rng = rng_states() if plan.record_rng else None
        if inplace:
            self.copy_on_write(inplace_target(args, kwargs))
        result, elapsed = self._timed(func, args, kwargs, names, parents, params)
        first = len(self.records)
        if self._record_outputs(func, names, args, kwargs, result, parents, params, elapsed, rng, template, context,
                                inplace) and plan.edits is not None:
            result = self._edit_op(first, result)
        if names[1] in HIDDEN_BUFFER_WRITERS:
            self._forget_buffers(args, kwargs)
        return result

    def _timed(self, func, args, kwargs, names, parents, params) -> tuple[Any, float]:  # noqa: ANN001
        """(result, seconds) of the op; a raising op leaves its would-be record for the error note."""
        start = _perf()
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._note_failure(exc, func, names, parents, params)
            raise
        return result, _perf() - start

    def _record_outputs(self, func, names, args, kwargs, result, parents, params, elapsed,  # noqa: ANN001
                        rng=None, template=None, context=None, inplace=False) -> bool:  # noqa: ANN001
        """The records of an op's outputs, if it has any (the C hot path calls this for results it does not take)."""
        outputs = op_outputs(names[0], args, kwargs or {}, result)
        if not outputs:
            return False
        first = len(self.records)
        self._record_op(func, names, outputs, parents, params, elapsed, inplace, rng, template)
        if context is not None:
            for rec in self.records[first:]:
                rec.replay_context = context
        return True

    def _record_one(self, func, names, t, parents, params, elapsed) -> None:  # noqa: ANN001
        """:meth:`_record_op` for the common op: one output, not in place, no templates, RNG states or edits."""
        records = self.records
        # the walk starts at the frame that called __torch_function__ (the frames below are ours: no key part)
        callsite = find_callsite(self._stop_code, self._codes, self._above, _getframe(2))[0]
        rec = OpRecord(len(records), names[0], names[1], func, self._op_count, 0, parents, self.module_tracker.stack,
                       callsite, None, params, tuple(t.shape), t.dtype, t.device)
        self._op_count += 1
        rec.time_s = elapsed
        if not parents:
            rec.is_internally_generated = True
        if self._sharded:
            rec.framework = inside_sharding_hooks(self._stop_code)
        if self._pending_branch:
            self._start_branches(rec.index)
        if t.requires_grad:
            rec.requires_grad = True
            try:
                grad_fn = t.grad_fn
            except RuntimeError:  # a no_grad view of a tensor changed in place: autograd refuses to describe it
                grad_fn = None
            if grad_fn is not None:
                rec.grad_fn_name = type(grad_fn).__name__
        rec.version = t._version
        rec.tensor_ref = _weakref(t)
        records.append(rec)
        self._owner[id(t)] = rec
        if self._save_all or (self._save_some and rec.index in self.plan.save):
            self._save(rec, t)
        if self._sink is not None:
            self._sink(rec)

    def _forget_buffers(self, args: tuple, kwargs: dict) -> None:
        """Buffers an op updated inside its kernel (no version bump): their next read is a new value."""
        for t in (*args, *kwargs.values()):
            if isinstance(t, _Tensor) and id(t) in self.buffer_addresses:
                self._owner.pop(id(t), None)

    def _record_op(self, func, names, outputs, parents, params, elapsed, inplace, rng, template):  # noqa: ANN001
        callsite, frames = find_callsite(self._stop_code, self._codes, self._above)
        framework = self._sharded and inside_sharding_hooks(self._stop_code)
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
            rec.framework = framework
            self._finish(rec, t)
        target = outputs[0]
        if inplace:
            self._note_buffer_write(target, len(outputs))
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
                rec.buffer_write = self.records[view_rec].buffer_write
                self._finish(rec, base)

    def _note_buffer_write(self, target: torch.Tensor, n: int) -> None:
        """Mark the last ``n`` records when their in-place op wrote data-free values into a buffer.

        Such a write is bookkeeping (:mod:`~lens_train.capture.bookkeeping`): a later read
        of the buffer enters as a new buffer value, as after BatchNorm's kernel updates its
        statistics, so the data path never descends from bookkeeping.
        """
        addresses = self.buffer_addresses
        buffer = target if id(target) in addresses else target._base
        address = addresses.get(id(buffer)) if buffer is not None else None
        if address is None or not all(self._data_free(r) for r in self.records[-n:]):
            return
        for rec in self.records[-n:]:
            rec.buffer_write = address
        self._owner.pop(id(buffer), None)
        self._owner.pop(id(target), None)

    def _data_free(self, rec: OpRecord) -> bool:
        """Whether nothing of the input or the parameters reaches ``rec`` (memoized; buffer writes only)."""
        memo = self._free
        todo = [rec]
        while todo:
            r = todo[-1]
            if r.index in memo:
                todo.pop()
                continue
            own = own_data_freedom(r)
            if own is not None:
                memo[r.index] = own
            else:
                pending = [self.records[p] for p, _ in r.parents if p not in memo and p != r.index]
                if pending:
                    todo.extend(pending)
                    continue
                memo[r.index] = all(memo.get(p, False) for p, _ in r.parents if p != r.index)
            todo.pop()
        return memo[rec.index]

    def _new_record(self, names, func, op_id, out_index, parents, callsite, frames, t) -> OpRecord:  # noqa: ANN001
        rec = OpRecord(len(self.records), names[0], names[1], func, op_id, out_index, list(parents),
                       self.module_tracker.stack, callsite, frames)
        if self._pending_branch:
            self._start_branches(rec.index)
        return rec

    def _start_branches(self, index: int) -> None:
        """Record ``index`` is the first op after the pending Python conditions: it starts their branches."""
        for cond in self._pending_branch:
            cond.branch_starts += (index,)
        self._pending_branch.clear()  # in place: the C hot path holds this list

    def _finish(self, rec: OpRecord, t: torch.Tensor, clone: bool = False) -> None:
        """Describe ``t`` on ``rec``, save it if planned, and make ``rec`` its owner."""
        rec.shape = tuple(t.shape)
        rec.dtype = t.dtype
        rec.device = t.device
        if t.requires_grad:
            rec.requires_grad = True
            rec.grad_fn_name = _grad_fn_name(t)
        rec.version = t._version
        rec.tensor_ref = _weakref(t)
        self.records.append(rec)
        self._owner[id(t)] = rec
        if self._save_all or (self._save_some and rec.index in self.plan.save):
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
            if not clone:
                self._unindexed.append(rec)

    def _index_saved(self) -> None:
        """File the saved values by storage, only once an in-place op needs it (many passes have none)."""
        by_storage = self._by_storage
        for rec in self._unindexed:
            value = rec.activation
            if value is not None and value.layout == torch.strided and value.device.type != "meta":
                by_storage.setdefault(_storage_key(value), []).append(rec)
        self._unindexed.clear()

    def copy_on_write(self, target: Any) -> None:
        """Clone saved values that share ``target``'s memory before an in-place op changes it."""
        if not isinstance(target, _Tensor):
            return
        key = _storage_key(target)
        if self._param_storage is None:
            self._param_storage = {_storage_key(p): p for _, p in self.index.unique_params()}
        param = self._param_storage.pop(key, None) if self._param_storage else None
        if param is not None:
            self._param_backups.append((param, param.detach().clone()))
        if self._unindexed:
            self._index_saved()
        if not self._by_storage:
            return
        for rec in self._by_storage.pop(key, ()):
            if rec.activation is not None:
                rec.activation = rec.activation.clone()

    # -- parents, sources, call sites -------------------------------------------------
    def _parents(self, args: tuple, kwargs: dict) -> tuple[list, tuple]:
        parents: list[tuple[int, Any]] = []
        params: list[int] = []
        owner = self._owner
        for pos, a in enumerate(args):
            if isinstance(a, _Tensor):
                rec = owner.get(id(a))
                # the common cases inline: the current value of a tensor recorded here, a parameter
                if rec is not None:
                    if rec.tensor_ref() is a and rec.version == a._version and not rec.framework:
                        parents.append((rec.index, pos))
                        continue
                elif isinstance(a, _Parameter):
                    params.append(id(a))
                    continue
                self._link(a, pos, parents, params)
            elif isinstance(a, (list, tuple)):
                for j, b in enumerate(a):
                    if isinstance(b, _Tensor):
                        self._link(b, (pos, j), parents, params)
        if kwargs:
            for key, a in kwargs.items():
                if isinstance(a, _Tensor) and key != "out":
                    self._link(a, key, parents, params)
        return parents, tuple(params) if params else ()

    def _link(self, t: torch.Tensor, pos: Any, parents: list, params: list) -> None:
        rec = self._owner.get(id(t))
        if rec is None or rec.tensor_ref() is not t:
            if isinstance(t, _Parameter):
                params.append(id(t))
                return
            rec = self._source(t)
        elif rec.framework:
            if isinstance(t, _Parameter):  # FSDP's unsharded parameter: a parameter
                params.append(id(t))
                return
            rec = self._through_framework(rec)
        elif rec.version != t._version:
            rec = self._refresh(t)
        parents.append((rec.index, pos))

    def _through_framework(self, rec: OpRecord) -> OpRecord:
        """The data tensor behind FSDP's same-shape views of it (its backward-hook identities)."""
        records = self.records
        while rec.framework and len({p for p, _ in rec.parents}) == 1:
            parent = records[rec.parents[0][0]]
            if parent.shape != rec.shape or parent.dtype != rec.dtype:
                break
            rec = parent
        return rec

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
        callsite, frames = find_callsite(self._stop_code, self._codes, self._above)
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
                       self.module_tracker.stack, (), ())
        self._op_count += 1
        rec.is_input = name is not None
        rec.source_name = name
        rec.is_buffer = address is not None
        rec.buffer_address = address
        rec.is_internally_generated = name is None and address is None
        rec.framework = self._sharded and name is None and inside_sharding_hooks(self._stop_code)
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

    def _template(self, args: tuple, kwargs: dict) -> tuple:
        lookup = self._lookup
        return tuple(_template_value(a, lookup) for a in args), {k: _template_value(v, lookup) for k, v in kwargs.items()}

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
        # the ops inside walk their call sites up to this frame only (no local holds the frame: that would be a cycle)
        self._open_calls.enter(_getframe())
        TorchFunctionMode.__enter__(self)
        try:
            result = clone(*args, **kwargs)
        finally:
            TorchFunctionMode.__exit__(self, None, None, None)
            self._open_calls.exit(_getframe())
        records = self.records
        if len(records) - start > 1:  # ops are numbered in order: ops at both ends that differ are two ops, not one
            first, last = records[start], records[-1]
            if first.func is not None and last.func is not None and first.op_id != last.op_id:
                return result
        new = [r for r in records[start:] if r.func is not None]  # inputs/buffers first seen inside do not count
        outputs = sum(1 for r in new if r.source_name != "view-base")
        if new and is_thin_wrapper(len({r.op_id for r in new}), outputs, result):
            # a thin wrapper around one op: name the op after the function the user called, and
            # give it the call site later (thin) calls will have, so loop passes line up
            name, layer_type = op_type(func)
            callsite, frames = find_callsite(self._stop_code, self._codes, self._above)
            where = _argument_positions(args, kwargs)  # positions in the call the user made, as thin calls have
            for rec in new:
                rec.func_name, rec.layer_type = name, layer_type
                rec.callsite, rec.frames = callsite, frames
                rec.parents = [(p, where.get(id(self.records[p].live_tensor()), pos)) for p, pos in rec.parents]
            _THIN_FUNCTIONS.add(func)
        return result

    def _from_numpy(self, array: Any) -> torch.Tensor:
        t = self._saved_from_numpy(array)
        callsite, frames = find_callsite(self._stop_code, self._codes, self._above)
        rec = OpRecord(len(self.records), "from_numpy", "fromnumpy", self._saved_from_numpy,
                       self._op_count, 0, [], self.module_tracker.stack, callsite, frames)
        self._op_count += 1
        rec.is_internally_generated = True
        with torch._C.DisableTorchFunction():  # called from user code with the mode on: saving is not an op
            self._finish(rec, t)
        return t

    def _note_failure(self, exc: BaseException, func: Any, names: tuple, parents: list, params: tuple) -> None:
        """Keep the record the raising op would have had (the innermost one, when ops nest)."""
        if self.failure is not None and self.failure[0] is exc:
            return
        site, frames = find_callsite(self._stop_code, self._codes, self._above)
        rec = OpRecord(len(self.records), names[0], names[1], func, self._op_count, 0, list(parents),
                       self.module_tracker.stack, site, frames, param_ids=params)
        self.failure = (exc, rec)


_AUTOCAST_DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


def _template_value(v: Any, lookup: Callable[[torch.Tensor], OpRecord | None]) -> Any:
    """One argument of a call template: tensors become :class:`TensorArg` (a plain function: a
    nested closure would refer to itself, a cycle that kept every recorder alive until a full collection)."""
    if isinstance(v, _Tensor):
        rec = lookup(v)
        return TensorArg(rec.index) if rec is not None else TensorArg(None, v)
    if isinstance(v, (list, tuple)) and any(isinstance(x, _Tensor) for x in v):
        items = (_template_value(x, lookup) for x in v)
        return type(v)(items) if type(v) in (list, tuple) else list(items)
    return v


def _replay_context() -> tuple[bool, tuple[tuple[str, torch.dtype], ...]]:
    """Grad mode and the autocast regions active now, to replay an op the way it ran."""
    autocast = tuple((d, torch.get_autocast_dtype(d)) for d in _AUTOCAST_DEVICES if torch.is_autocast_enabled(d))
    return torch.is_grad_enabled(), autocast


def _argument_positions(args: tuple, kwargs: dict) -> dict[int, Any]:
    """id of each tensor argument -> its position, as :meth:`Recorder._parents` numbers them."""
    where: dict[int, Any] = {}
    for pos, a in [*enumerate(args), *((k, v) for k, v in kwargs.items() if k != "out")]:
        if isinstance(a, _Tensor):
            where.setdefault(id(a), pos)
        elif isinstance(a, (list, tuple)):
            for j, b in enumerate(a):
                if isinstance(b, _Tensor):
                    where.setdefault(id(b), (pos, j))
    return where


def owner_lookup(owner: dict[int, OpRecord]) -> Callable[[torch.Tensor], OpRecord | None]:
    """``lookup(tensor)``: the record in ``owner`` (by ``id``) that describes that very tensor, or None.

    Example:
        >>> t = torch.ones(1)
        >>> rec = OpRecord(0, "ones", "ones", None, 0, 0, [], (), (), ())
        >>> rec.tensor_ref = weakref.ref(t)
        >>> lookup = owner_lookup({id(t): rec})
        >>> lookup(t) is rec, lookup(torch.ones(1))
        (True, None)
    """
    get = owner.get

    def lookup(t: torch.Tensor) -> OpRecord | None:
        rec = get(id(t))
        if rec is not None and rec.tensor_ref() is t:
            return rec
        return None

    return lookup


def _storage_key(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return id(t)
