"""Assembling a :class:`ModelLog` from the raw records of a :class:`Recorder`."""

from __future__ import annotations

from functools import partial
from typing import Any

from torch import nn

from .bookkeeping import bookkeeping_flags
from .layer_log import FILL_LOCK, LayerLog, PendingLayerLog
from .lookup import LayerKeys
from .model_log import ModelLog, ModuleLog, ModuleTable
from . import recorder as recorder_module
from .passes import LayerGroup, group_passes, grouped_labels, pass_labels
from .recorder import Recorder


def module_param_counts(model: nn.Module, params: list[tuple[str, nn.Parameter]] | None = None) -> dict[str, int]:
    """Parameter count of every module that owns parameters (directly or in submodules).

    Example:
        >>> model = nn.Sequential(nn.Sequential(nn.Linear(2, 3)), nn.Linear(3, 1))
        >>> sorted(module_param_counts(model).items())
        [('0', 9), ('0.0', 9), ('1', 4)]
    """
    return dict(_param_counts((a, p.numel()) for a, p in (params if params is not None else model.named_parameters())))


def _param_counts(sizes: Any) -> dict[str, int]:
    """:func:`module_param_counts` from ``(parameter address, element count)`` pairs (a shared dict: read only)."""
    key = tuple(sizes)
    counts = _COUNTS.get(key)
    if counts is None:
        if len(_COUNTS) >= _MAX_COUNTS:
            _COUNTS.clear()
        counts = _COUNTS[key] = _count(key)
    return counts


# (address, count) pairs -> counts: a model's parameters rarely change between its captures
_COUNTS: dict[tuple, dict[str, int]] = {}
_MAX_COUNTS = 64


def _count(sizes: tuple) -> dict[str, int]:
    own: dict[str, int] = {}  # summed per owning module first: a module's parameters share its prefixes
    for address, n in sizes:
        cut = address.rfind(".")
        if cut > 0:
            owner = address[:cut]
            own[owner] = own.get(owner, 0) + n
    counts: dict[str, int] = {}
    for prefix, n in own.items():
        while True:
            counts[prefix] = counts.get(prefix, 0) + n
            cut = prefix.rfind(".")
            if cut < 0:
                break
            prefix = prefix[:cut]
    return counts


def build_log(recorder: Recorder, model: nn.Module, meta: dict[str, Any]) -> ModelLog:
    """Label, group and link the recorder's records into a :class:`ModelLog`.

    Labels and the structure are worked out here; each layer's other fields are filled
    from a :class:`LayerSource` when first read (:class:`~lens_train.capture.layer_log.PendingLayerLog`).
    """
    recorder.resolve_callsites()
    records = recorder.records
    hot = recorder_module._hotpath
    # read now: the log never holds the model's parameters
    param_info = hot.param_info(recorder.index.params) if hot is not None else _param_info(recorder.index.params)
    counts = _param_counts((info[0], info[2]) for info in param_info.values())
    # (bookkeeping candidates, condition values): whether any record has them, in one C pass over the records
    scan = hot.scan_records(records) if hot is not None else (None, True)
    side = bookkeeping_flags(records, scan[0])
    bookkeeping = side.find(1) >= 0
    groups, pass_label, group_of, pass_num = grouped_labels(records, frozenset(counts), side, hot)
    data = [rec for rec in records if not side[rec.index]] if bookkeeping else records[:]
    source = LayerSource(records, data, groups, group_of, pass_label, pass_num, side, param_info)
    keys = LayerKeys(source=source)
    layers = _pending_layers(data, pass_label, keys, hot)
    meta = dict(meta)
    meta["structure"] = _structure(records, data, [g for g in groups if not g.bookkeeping] if bookkeeping else groups,
                                   scan[1])
    side_records = [rec for rec in records if side[rec.index]] if bookkeeping else []
    meta["buffer_updates"] = [_buffer_update(rec, pass_label) for rec in side_records if not rec.framework]
    meta["sharding_ops"] = sum(1 for rec in side_records if rec.framework)
    meta.update(num_params_total=sum(info[2] for info in param_info.values()), num_param_tensors=len(param_info),
                param_bytes_total=sum(info[3] for info in param_info.values()))
    table = partial(_modules, records, recorder.module_calls, counts, pass_label, side)  # made when first read
    return ModelLog(type(model).__name__, layers, table, meta, keys)


def _param_info(params: tuple[tuple[str, Any], ...]) -> dict[int, tuple[str, tuple[int, ...], int, int]]:
    """``id(p) -> (address, shape, element count, bytes)`` of each parameter, under its first name.

    Example:
        >>> info = _param_info(tuple(nn.Linear(2, 3).named_parameters()))
        >>> sorted(info.values())
        [('bias', (3,), 3, 12), ('weight', (3, 2), 6, 24)]
    """
    param_info: dict[int, tuple] = {}
    for a, p in params:  # (a shared parameter under its first name, as unique_params gives it)
        key = id(p)
        if key not in param_info:
            n = p.numel()
            param_info[key] = (a, tuple(p.shape), n, n * p.itemsize)
    return param_info


def _pending_layers(data: list[Any], labels: list[str], keys: LayerKeys, hot: Any = None) -> list[LayerLog]:
    """One :class:`PendingLayerLog` per data-path record: its label, values and position (the hot loop).

    Each is made a plain ``LayerLog`` (plain attribute stores) and then given its pending class.
    ``hot``: the C extension, which makes the same objects (None where the classes are not laid out for it).
    """
    made = hot.pending_layers(data, labels, keys, LayerLog, PendingLayerLog) if hot is not None else None
    if made is not None:
        return made
    new = LayerLog.__new__
    out = []
    append = out.append
    for pos, rec in enumerate(data):
        layer = new(LayerLog)
        layer.layer_label = labels[rec.index]
        layer.tensor_contents = rec.activation
        layer.transformed_activation = rec.transformed_activation
        layer.original_activation = rec.original
        layer.gradient = layer._materialize = layer._lookup_keys = None
        layer._key_index = keys
        layer._key_pos = pos
        layer.__class__ = PendingLayerLog
        append(layer)
    return out


def failure_note(recorder: Recorder, model: nn.Module, exc: BaseException) -> str:
    """The note for an exception raised during capture: the label of the op that raised, or of the last op logged.

    The label is the one the op would have had in the log of the pass up to that point.
    """
    failed = recorder.failure[1] if recorder.failure is not None and recorder.failure[0] is exc else None
    recorder.resolve_callsites([failed] if failed is not None else [])
    records = list(recorder.records)
    if failed is not None and failed.index == len(records):
        records.append(failed)
    else:
        failed = None
    if not records:
        return "lens_train: raised in forward before any operation was logged"
    try:
        label = pass_labels(group_passes(records, frozenset(module_param_counts(model))), len(records))[0][-1]
    except Exception:  # noqa: BLE001 - the note must never hide the user's error
        label = records[-1].layer_type
    stack = records[-1].module_stack
    where = f" inside module {stack[-1][0]!r} (call {stack[-1][1]})" if stack else ""
    if failed is not None:
        return f"lens_train: raised while capturing {label} ({failed.func_name}{where})"
    return f"lens_train: raised in forward after capturing {label}{where}, the last operation logged"


def _op_index_in_call(records: list[Any]) -> list[int]:
    """Each op's index among the ops of its type run directly by its module call, bookkeeping included.

    ``lt.Taps`` counts ops this way at run time (:mod:`lens_train.train.optaps`), so an op
    label resolves to the same op in every step, whatever the mode.
    """
    counts: dict[tuple[Any, str], int] = {}
    out = [-1] * len(records)
    current = -1
    for rec in records:
        if rec.func is None or rec.layer_type == "fromnumpy" or rec.source_name == "view-refresh":
            continue
        if rec.output_index == 0:  # the outputs of one op are consecutive records
            key = (rec.module_stack[-1] if rec.module_stack else None, rec.layer_type)
            current = counts.get(key, 0)
            counts[key] = current + 1
        out[rec.index] = current
    return out


def _buffer_update(rec: Any, labels: list[str]) -> dict[str, Any]:
    """One bookkeeping record as plain data (``log.buffer_updates``)."""
    stack = rec.module_stack
    return {
        "label": labels[rec.index],
        "func_name": rec.func_name,
        "buffer": rec.buffer_write or rec.buffer_address,
        "writes": rec.buffer_write is not None,
        "module": f"{stack[-1][0]}:{stack[-1][1]}" if stack else None,
        "parents": [labels[p] for p, _ in rec.parents],
        "shape": list(rec.shape),
        "dtype": str(rec.dtype).replace("torch.", ""),
    }


class _Texts:
    """Strings and parameter summaries many layers share, made once per capture (stacks, devices, params)."""

    def __init__(self, param_info: dict[int, tuple]) -> None:
        self.param_info = param_info
        self._calls: dict[tuple, list[str]] = {}
        self._params: dict[tuple[int, ...], tuple[list, int, int, list]] = {}
        self._devices: dict[Any, str] = {}
        self._short: dict[int, str] = {}  # by id: the groups live as long as this object

    def calls(self, stack: tuple) -> list[str]:
        """``["blocks.0:1", ...]`` for a module stack (a new list each time: layers own theirs)."""
        text = self._calls.get(stack)
        if text is None:
            text = self._calls[stack] = [f"{a}:{n}" for a, n in stack]
        return list(text)

    def params(self, param_ids: tuple[int, ...]) -> tuple[list, int, int, list]:
        """(shapes, count, bytes, addresses) of the parameters an op used."""
        found = self._params.get(param_ids)
        if found is None:
            info = [self.param_info[p] for p in param_ids if p in self.param_info]
            found = self._params[param_ids] = ([p[1] for p in info], sum(p[2] for p in info), sum(p[3] for p in info),
                                               [p[0] for p in info])
        return list(found[0]), found[1], found[2], list(found[3])

    def short_label(self, group: LayerGroup) -> str:
        """``conv2d_3`` for a group (one string per layer, shared by its passes)."""
        text = self._short.get(id(group))
        if text is None:
            text = self._short[id(group)] = f"{group.layer_type}_{group.type_index}"
        return text

    def device(self, device: Any) -> str:
        text = self._devices.get(device)
        if text is None:
            text = self._devices[device] = str(device)
        return text


class LayerSource:
    """What the layers of one capture are made of; :meth:`fill` gives a pending layer all its fields.

    It holds the records (never the layers or the log: no reference cycle). The parts
    every layer shares (children, module-call texts, parameter summaries) are made on
    the first fill; a capture whose layers are never read never makes them.
    """

    __slots__ = ("records", "data", "groups", "group_of", "labels", "pass_num", "side", "param_info", "_parts",
                 "_unfilled", "_rows")

    def __init__(self, records: list[Any], data: list[Any], groups: list[LayerGroup], group_of: list[int],
                 labels: list[str], pass_num: list[int], side: bytearray, param_info: dict[int, tuple]) -> None:
        self.records, self.data, self.groups, self.group_of = records, data, groups, group_of
        self.labels, self.pass_num, self.side, self.param_info = labels, pass_num, side, param_info
        self._parts: tuple | None = None
        self._unfilled = len(data)
        self._rows: list | None = None

    def key_rows(self) -> list[tuple[str, int, str, list[str]]]:
        """The rows of :class:`~lens_train.capture.lookup.LayerKeys`, without filling any layer."""
        if self._rows is not None:
            return self._rows
        groups, group_of, pass_num = self.groups, self.group_of, self.pass_num
        short = self._shared()[2]
        rows = []
        for rec in self.data:
            gi = group_of[rec.index]
            outputs = rec.output_of_modules
            rows.append((groups[gi].label, pass_num[rec.index], short[gi],
                         [f"{a}:{n}" for a, n in outputs] if outputs else []))
        return rows

    def _shared(self) -> tuple:
        if self._parts is None:
            records, labels = self.records, self.labels
            texts = _Texts(self.param_info)
            self._parts = (_children(records, self.side), _op_index_in_call(records),
                           [texts.short_label(g) for g in self.groups],
                           [[labels[m] for m in g.members] for g in self.groups], texts)
        return self._parts

    def fill(self, layer: Any) -> None:
        """Give a pending layer every field and make it a plain :class:`LayerLog`.

        The fields its capture set (:data:`PENDING_FIELDS`, maybe written since) are kept;
        the others were never set (writing one fills the layer first).
        """
        with FILL_LOCK:
            if type(layer) is PendingLayerLog:  # not filled by another thread meanwhile
                self._fill(layer)

    def _fill(self, layer: Any) -> None:
        children, in_call, short, group_labels, texts = self._parts or self._shared()
        labels = self.labels
        pos = layer._key_pos
        rec = self.data[pos]
        index = rec.index
        gi = self.group_of[index]
        group = self.groups[gi]
        parents = rec.parents
        if len(parents) == 1:
            label = labels[parents[0][0]]
            parent_layers, arg_locs = [label], {label: [parents[0][1]]}
        else:
            arg_locs = {}
            for parent, p in parents:
                arg_locs.setdefault(labels[parent], []).append(p)
            parent_layers = list(arg_locs)
        if rec.param_ids:
            shapes, num_params, param_bytes, addresses = texts.params(rec.param_ids)
        else:
            shapes, num_params, param_bytes, addresses = [], 0, 0, []
        outputs = rec.output_of_modules
        values = [
            labels[index], group.label, short[gi], group.layer_type, group.type_index,
            group.layer_index, index, self.pass_num[index], len(group.members), rec.func_name, rec.grad_fn_name,
            rec.shape, rec.dtype, rec.nbytes, texts.device(rec.device), rec.requires_grad, layer.tensor_contents,
            layer.transformed_activation, parent_layers, arg_locs, [labels[c] for c in children[index]],
            texts.calls(rec.module_stack), [f"{a}:{n}" for a, n in outputs] if outputs else [], shapes, num_params,
            param_bytes, addresses, rec.time_s, rec.is_input, rec.is_output, rec.is_buffer, rec.buffer_address,
            rec.is_internally_generated, rec.is_inplace, rec.output_index, list(rec.bool_values),
            [labels[i] for i in rec.branch_starts] if rec.branch_starts else [], group_labels[gi], rec.frames,
            in_call[index], layer.gradient, rec.edit, layer.original_activation, layer._materialize,
            layer._lookup_keys, layer._key_index, pos,
        ]
        object.__setattr__(layer, "__class__", LayerLog)  # a plain layer: no __setattr__ to come back here
        LayerLog.__init__(layer, *values)
        self._unfilled -= 1
        if not self._unfilled:  # every layer has its fields: keep the lookup rows, let the records go
            self._rows = self.key_rows()
            self.records = self.data = self.groups = self.group_of = self.labels = self.pass_num = self._parts = None


def _children(records: list[Any], side: bytearray) -> list[list[int]]:
    """Record index -> its data-path consumers, in order (bookkeeping is never a child)."""
    children: list[list[int]] = [[] for _ in records]
    for rec in records:
        if side[rec.index]:
            continue
        for parent, _pos in rec.parents:
            kids = children[parent]
            if not kids or kids[-1] != rec.index:  # records come in order: repeats are adjacent
                kids.append(rec.index)
    return children


def _structure(records: list[Any], data: list[Any], groups: list[LayerGroup], conditions: bool = True) -> dict[str, Any]:
    """``meta["structure"]``; ``conditions`` False: no record holds condition values (no need to look)."""
    max_passes = max(map(len, [g.members for g in groups]), default=1)
    # branching: some record is read by two distinct data-path ops (the output records aside)
    first_op = [-1] * len(records)
    branching = False
    for rec in data:
        if rec.is_output:
            continue
        op = rec.op_id
        for parent, _pos in rec.parents:
            seen = first_op[parent]
            if seen < 0:
                first_op[parent] = op
            elif seen != op:
                branching = True
                break
        if branching:
            break
    return {
        "is_recurrent": max_passes > 1,
        "max_passes": max_passes,
        "is_branching": branching,
        "has_conditionals": conditions and any(r.bool_values for r in data),
    }


def _modules(records: list[Any], calls: list[Any], counts: dict[str, int], labels: list[str],
             side: bytearray) -> ModuleTable:
    """``log.modules`` of a capture: its module calls (``calls``) with the labels of their inputs and outputs."""
    table = ModuleTable()
    updates: dict[tuple[str, int], list[str]] = {}
    for rec in records:
        if side[rec.index] and rec.buffer_write is not None and rec.module_stack:
            updates.setdefault(rec.module_stack[-1], []).append(labels[rec.index])
    for call in calls:
        mod = table.get(call.address)
        if mod is None:
            mod = ModuleLog(call.address, call.module_type, call.depth, counts.get(call.address, 0))
            dict.__setitem__(table, call.address, mod)
        parent = call.parent
        mod.calls.append({
            "address": call.address,
            "pass_num": call.pass_num,
            "depth": call.depth,
            "parent": f"{parent[0]}:{parent[1]}" if parent else None,
            "inputs": _call_labels(call.input_records, labels, side),
            "outputs": _call_labels(call.output_records, labels, side),
            "buffer_updates": updates.get((call.address, call.pass_num), []) if updates else [],
        })
    return table


def _call_labels(indices: list[int], labels: list[str], side: bytearray) -> list[str]:
    """Labels of a call's data-path records, each once, in order (most calls: one record)."""
    if len(indices) == 1:
        i = indices[0]
        return [] if side[i] else [labels[i]]
    return [labels[i] for i in dict.fromkeys(indices) if not side[i]]
