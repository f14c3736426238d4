"""Which recorded ops a sub-model replays, and what it must check, from one capture.

Walking back from the outputs, a record is

* an **input** if it is one of ``node_in``;
* **replayed** if it descends from ``node_in`` or from constants only (parameters,
  buffers, factories such as ``torch.arange``);
* an **extra input** otherwise: a tensor from before ``node_in`` that the subgraph
  still reads (a skip connection, or the model's own input), to be supplied by name.

Besides the ops that compute the outputs, the plan keeps what can tell that a new
input would take another path: Python ``if``s on tensors (re-evaluated and compared
with the recorded value) and comparisons of traced sizes (see :mod:`.sizes`). Those
are added only when they need no further extra inputs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from ..capture.model_log import ModelLog
from ..capture.records import OpRecord, TensorArg
from ..errors import InvalidArgumentError
from .fixed_sizes import SizeNotes, size_notes, template_sources
from .sizes import SizeTracer, expr_text, sources

# ops whose recorded arguments depend on module.training (dropout masks, batch statistics)
MODE_DEPENDENT = frozenset({
    "dropout", "dropout1d", "dropout2d", "dropout3d", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "batch_norm", "instance_norm", "rrelu",
})


@dataclass(slots=True)
class Step:
    """One replayed op or one copied value; ``records``: (record, output position, ndim)."""

    kind: str  # "op", "copy" (output records, view bases), "buffer", "const"
    label: str
    records: list[tuple[int, int, int]]
    func: Any = None
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    source: Any = None  # copy: parent record; buffer: address; const: the tensor
    inplace: bool = False


@dataclass(slots=True)
class Check:
    """A condition or size comparison that must come out as recorded."""

    kind: str  # "condition" (bool(record)) or "guard" (size comparison)
    description: str
    record: int = -1
    expected: bool = True
    guard: tuple = ()


@dataclass
class ExtractPlan:
    """Everything an :class:`~lens_train.extract.Extract` module needs to run."""

    input_records: list[int]
    input_names: list[str]
    extra_records: list[int]
    extra_names: list[str]
    output_records: list[int]
    output_names: list[str] | None
    output_form: str  # "tensor", "tuple" or "dict"
    steps: list[Step]
    checks: dict[int, list[Check]]  # step position (-1: before the first) -> checks
    fallback_sizes: dict[tuple[int, int | None], tuple[int, int] | None]
    example_shapes: dict[int, tuple[int, ...]]
    labels: dict[int, str]
    unchecked: list[str]
    mode_dependent: bool
    mutated_inputs: set[int] = field(default_factory=set)  # inputs an in-place op changes: cloned first
    size_notes: dict[str, SizeNotes] = field(default_factory=dict)  # op label -> its sizes that do not follow


def _flags(records: list[OpRecord], inputs: set[int]) -> tuple[list[bool], list[bool]]:
    """(descends from node_in, computable from constants alone) for every record."""
    dep = [False] * len(records)
    const = [False] * len(records)
    for rec in records:
        i = rec.index
        parents = [p for p, _ in rec.parents]
        if i in inputs:
            dep[i] = True
        elif rec.is_input:
            pass
        elif rec.is_buffer or (rec.call_template is None and not parents and not rec.is_output):
            const[i] = True
        else:
            dep[i] = any(dep[p] for p in parents)
            const[i] = all(const[p] for p in parents)
    return dep, const


def _closure(starts: list[int], records: list[OpRecord], inputs: set[int], dep: list[bool], const: list[bool],
             known: set[int]) -> tuple[set[int], set[int]]:
    """(records to replay, extra inputs) needed for ``starts``, beyond ``known``."""
    needed: set[int] = set()
    extras: set[int] = set()
    todo = list(starts)
    while todo:
        i = todo.pop()
        if i in needed or i in extras or i in inputs or i in known:
            continue
        if not (dep[i] or const[i]):
            extras.add(i)
            continue
        needed.add(i)
        todo.extend(p for p, _ in records[i].parents)
    return needed, extras


def _template_sources(rec: OpRecord) -> set[tuple[int, int | None]]:
    return template_sources(rec.call_template) if _replayable(rec) else set()


def _replayable(rec: OpRecord) -> bool:
    """Whether ``rec`` is replayed by calling its op (a view's base changed in place is a copy)."""
    return rec.call_template is not None and rec.source_name != "view-base"


def build_plan(records: list[OpRecord], log: ModelLog, tracer: SizeTracer, ins: list[tuple[int, str]],
               outs: list[tuple[int, str]], output_form: str) -> ExtractPlan:
    """Slice the capture between ``ins`` and ``outs`` ((record, name) pairs)."""
    labels = {layer.operation_index: layer.layer_label for layer in log.layers}
    inputs = {i for i, _ in ins}
    dep, const = _flags(records, inputs)
    out_ids = [i for i, _ in outs]
    for i in out_ids:
        if not (dep[i] or const[i] or i in inputs):
            raise InvalidArgumentError(
                f"node_out {labels[i]!r} does not depend on node_in {[labels[j] for j in inputs]}: nothing between "
                "them to extract. Pick outputs computed after node_in (lt.get_nodes(model, x) lists them in order)."
            )
    needed, extras = _closure(out_ids, records, inputs, dep, const, set())
    unchecked: list[str] = []
    _add_shape_sources(records, inputs, dep, const, needed, extras)
    checks = _conditions(records, labels, inputs, dep, const, needed, extras, out_ids, unchecked)
    available = needed | extras | inputs
    fallback = _fallback_sizes(records, needed, available, [*inputs, *extras])
    steps, position = _steps(records, needed, labels, tracer)
    by_step: dict[int, list[Check]] = defaultdict(list)
    for check in checks:
        by_step[position.get(check.record, -1)].append(check)
    for check, ready in _guards(tracer, available, position, max(out_ids) + 1, labels):
        by_step[ready].append(check)
    extra_list = sorted(extras)
    return ExtractPlan(
        input_records=[i for i, _ in ins], input_names=[n for _, n in ins], extra_records=extra_list,
        extra_names=[labels[i] for i in extra_list], output_records=out_ids,
        output_names=[n for _, n in outs] if output_form == "dict" else None, output_form=output_form,
        steps=steps, checks=dict(by_step), fallback_sizes=fallback,
        example_shapes={i: tuple(int(s) for s in records[i].shape) for i in available},
        labels=labels, unchecked=unchecked,
        mode_dependent=any(records[i].func_name in MODE_DEPENDENT for i in needed),
        mutated_inputs=_mutated_inputs(records, needed, inputs | extras),
        size_notes=size_notes([(s.label, records[s.records[0][0]]) for s in steps if s.kind == "op"], records, labels, fallback),
    )


def _mutated_inputs(records: list[OpRecord], needed: set[int], boundary: set[int]) -> set[int]:
    """Inputs that a replayed in-place op changes, directly or through a view of them."""
    out = set()
    for i in needed:
        rec = records[i]
        if rec.source_name == "view-base":
            target = rec.parents[0][0]
        elif rec.is_inplace and _replayable(rec):
            args, kwargs = rec.call_template
            arg = kwargs.get("out", args[0] if args else None)
            target = arg.record_index if isinstance(arg, TensorArg) else None
        else:
            continue
        if target in boundary:
            out.add(target)
    return out


def _add_shape_sources(records: list[OpRecord], inputs: set[int], dep: list[bool], const: list[bool],
                       needed: set[int], extras: set[int]) -> None:
    """Also replay records whose sizes the needed ops read, when that needs no new extra input."""
    todo = sorted(needed)
    while todo:
        wanted = [s for i in todo for s, _dim in _template_sources(records[i]) if s not in needed | inputs | extras]
        todo = []
        for s in dict.fromkeys(wanted):
            more, more_extras = _closure([s], records, inputs, dep, const, needed)
            if not more_extras - extras:
                needed |= more
                todo.extend(more)


def _conditions(records: list[OpRecord], labels: dict[int, str], inputs: set[int], dep: list[bool],
                const: list[bool], needed: set[int], extras: set[int], out_ids: list[int],
                unchecked: list[str]) -> list[Check]:
    first = min(inputs, default=-1)
    checks = []
    for rec in records[first + 1: max(out_ids) + 1]:
        if not rec.bool_values or not dep[rec.index]:
            continue
        more, more_extras = _closure([rec.index], records, inputs, dep, const, needed)
        if more_extras - extras:
            unchecked.append(f"condition on {labels[rec.index]} (needs {[labels[i] for i in sorted(more_extras - extras)]})")
            continue
        needed |= more
        checks.append(Check("condition", f"the Python condition on {labels[rec.index]} was {rec.bool_values[0]}",
                            rec.index, bool(rec.bool_values[0])))
    return checks


def _fallback_sizes(records: list[OpRecord], needed: set[int], available: set[int],
                    boundary: list[int]) -> dict[tuple[int, int | None], tuple[int, int] | None]:
    """Sizes read from records the sub-model never sees: matched to a same-sized input dimension."""
    out: dict[tuple[int, int | None], tuple[int, int] | None] = {}
    for i in sorted(needed):
        for src, dim in _template_sources(records[i]):
            if src in available or (src, dim) in out:
                continue
            out[(src, dim)] = None
            if dim is None:
                continue
            size = records[src].shape[dim]
            candidates = [(b, d) for b in boundary for d, s in enumerate(records[b].shape) if s == size]
            candidates.sort(key=lambda c: (c[1] != dim, c[0]))
            out[(src, dim)] = candidates[0] if candidates else None
    return out


def _steps(records: list[OpRecord], needed: set[int], labels: dict[int, str], tracer: SizeTracer) -> tuple[list[Step], dict[int, int]]:
    by_op: dict[int, list[OpRecord]] = defaultdict(list)
    for rec in records:
        if _replayable(rec):
            by_op[rec.op_id].append(rec)
    steps: list[Step] = []
    position: dict[int, int] = {}
    done_ops: set[int] = set()
    for i in sorted(needed):
        rec = records[i]
        if _replayable(rec):
            if rec.op_id in done_ops:
                position[i] = position[by_op[rec.op_id][0].index]
                continue
            done_ops.add(rec.op_id)
            args, kwargs = rec.call_template
            outs = [(r.index, r.output_index, len(r.shape)) for r in by_op[rec.op_id]]
            steps.append(Step("op", labels[i], outs, rec.func, args, kwargs, inplace=rec.is_inplace))
            for r, _, _ in outs:
                position[r] = len(steps) - 1
            continue
        if rec.is_buffer:
            steps.append(Step("buffer", labels[i], [(i, 0, 0)], source=rec.buffer_address))
        elif rec.is_output or rec.source_name == "view-base":
            steps.append(Step("copy", labels[i], [(i, 0, 0)], source=rec.parents[0][0]))
        else:
            steps.append(Step("const", labels[i], [(i, 0, 0)], source=tracer.constants.get(i)))
        position[i] = len(steps) - 1
    return steps, position


def _guards(tracer: SizeTracer, available: set[int], position: dict[int, int], horizon: int,
            labels: dict[int, str]) -> list[tuple[Check, int]]:
    out = []
    for name, left, right, result, seen in tracer.guards:
        srcs = sources(left) | sources(right)
        if not srcs or seen > horizon or any(s not in available for s, _ in srcs):
            continue
        ready = max(position.get(s, -1) for s, _ in srcs)
        text = expr_text((name, left, right), labels)
        out.append((Check("guard", f"the size comparison {text} was {result}", guard=(name, left, right), expected=result), ready))
    return out
