"""From raw records to layers: which records are passes of one layer, and their labels.

Records are candidate passes of one layer when they sit at the same place: same op
type, same output position, same innermost module, same Python call site (every
frame from the model call down, so only a loop, comprehension or recursion can repeat
it) and same parameters. Candidates are passes only when the repetition is a real
loop. For two consecutive candidates ``prev`` and ``cur`` (one loop iteration lies
between them) the rules, in order:

1. both run inside repeated calls of one module that owns parameters: passes;
2. the ops between them re-apply weights (an op with parameters that itself has
   several passes): passes (weight sharing, RNN-style loops);
3. the ops between them apply other weights only once each: separate layers (a loop
   over distinct blocks, e.g. ``for blk in self.blocks: x = x + blk(x)``);
4. a parameter-free body: passes when the iterations feed each other, i.e. ``cur``
   descends from ``prev``, or an op between them is itself carried from one
   iteration to the next in lockstep with them (the ``x`` of
   ``while x.norm() > 1: x = x / 2`` carries the ``norm`` ops along).

An op with parameters is one layer at each place it runs (all its candidates are
passes). Everything runs in time linear in the number of records: rules 1-3 are
prefix-count lookups, and dependency walks never go back past ``prev``.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from .bookkeeping import bookkeeping_flags
from .records import OpRecord, stored_prototype

_SOURCE_TYPES = frozenset({"input", "output", "buffer", "tensor"})
_MAX_WALK = 20000


@dataclass(slots=True)
class LayerGroup:
    """The passes (record indices, in execution order) of one layer, and its label."""

    members: list[int]
    layer_type: str
    label: str = ""
    type_index: int = 0
    layer_index: int = 0
    bookkeeping: bool = False


def group_passes(records: list[OpRecord], param_modules: frozenset[str],
                 bookkeeping: bytearray | None = None) -> list[LayerGroup]:
    """Group records into layers and label them ``{type}_{type_count}_{layer_index}``.

    Bookkeeping records (:mod:`~lens_train.capture.bookkeeping`) take no number from that
    sequence: each is its own group labelled ``{type}_bk_{count}``, after the others.
    """
    flags = bookkeeping_flags(records) if bookkeeping is None else bookkeeping
    buckets: dict[tuple, list[int]] = {}
    side: list[LayerGroup] = []
    for rec in records:
        index = rec.index
        if flags[index]:
            side.append(LayerGroup([index], rec.layer_type, bookkeeping=True))
            continue
        key = _pass_key(rec)
        members = buckets.get(key)
        if members is None:
            buckets[key] = [index]
        else:
            members.append(index)
    ctx = None  # made for the first place that repeats without parameters (many models have none)
    groups: list[LayerGroup] = []
    interleaved = False  # a bucket split into several layers: groups are no longer in order of first pass
    for members in buckets.values():
        first = records[members[0]]
        if len(members) == 1 or first.param_ids:  # (a source's key is unique: always one member)
            groups.append(LayerGroup(members, first.layer_type))
        else:
            if ctx is None:
                ctx = _LoopContext(records, buckets, param_modules)
            split = _split_loops(ctx, members)
            interleaved = interleaved or len(split) > 1
            groups.extend(split)
    if interleaved:
        groups.sort(key=lambda g: g.members[0])
    counts: dict[str, int] = defaultdict(int)
    for i, g in enumerate(groups):
        counts[g.layer_type] += 1
        g.type_index = counts[g.layer_type]
        g.layer_index = i
        g.label = f"{g.layer_type}_{g.type_index}_{i}"
    side_counts: dict[str, int] = defaultdict(int)
    for g in side:
        side_counts[g.layer_type] += 1
        g.type_index = side_counts[g.layer_type]
        g.layer_index = -1
        g.label = f"{g.layer_type}_bk_{g.type_index}"
    return groups + side


def grouped_labels(records: list[OpRecord], param_modules: frozenset[str], bookkeeping: bytearray,
                   hot: Any = None) -> tuple[list[LayerGroup], list[str], list[int], list[int]]:
    """(groups, then :func:`pass_labels`' three lists) of :func:`group_passes` on ``records``.

    ``hot``: the C extension (``_hotpath``), which runs the same per-record loops; a bucket
    that repeats without parameters is split here, by :func:`_split_loops`, either way.
    """
    if hot is None:
        groups = group_passes(records, param_modules, bookkeeping)
        return (groups, *pass_labels(groups, len(records)))
    ctx: list[_LoopContext] = []  # made for the first place that repeats without parameters

    def split(buckets: dict[tuple, list[int]], members: list[int]) -> list[LayerGroup]:
        if not ctx:
            ctx.append(_LoopContext(records, buckets, param_modules))
        return _split_loops(ctx[0], members)

    groups, side, interleaved = hot.group_buckets(records, bookkeeping, _SOURCE_TYPES, LayerGroup, _GROUP_PROTO,
                                                  _GROUP_INIT, split)
    if interleaved:
        groups.sort(key=lambda g: g.members[0])
    return hot.label_groups(groups, side, len(records), LayerGroup)


def pass_labels(groups: list[LayerGroup], n: int) -> tuple[list[str], list[int], list[int]]:
    """(label with ``:pass`` suffix when needed, group index, pass number) of every record.

    Example:
        >>> groups = [LayerGroup([0], "input", "input_1_0"), LayerGroup([1, 2], "relu", "relu_1_1")]
        >>> pass_labels(groups, 3)
        (['input_1_0', 'relu_1_1:1', 'relu_1_1:2'], [0, 1, 1], [1, 1, 2])
    """
    labels = [""] * n
    group_of = [0] * n
    pass_num = [1] * n
    for gi, g in enumerate(groups):
        for p, idx in enumerate(g.members, start=1):
            labels[idx] = f"{g.label}:{p}" if len(g.members) > 1 else g.label
            group_of[idx] = gi
            pass_num[idx] = p
    return labels, group_of, pass_num


# the LayerGroup fields the C side passes (members, layer_type), and the defaults of the others
_GROUP_INIT, _GROUP_PROTO = stored_prototype(LayerGroup, 2)


def _pass_key(rec: OpRecord) -> tuple:
    if rec.layer_type in _SOURCE_TYPES and rec.func is None:
        return ("source", rec.index)
    module = rec.module_stack[-1][0] if rec.module_stack else ""
    return (rec.layer_type, rec.output_index, module, rec.callsite, rec.param_ids)


class _LoopContext:
    """Prefix counts of parameter use and the carried (loop-fed) records, for rules 1-4."""

    def __init__(self, records: list[OpRecord], buckets: dict[tuple, list[int]], param_modules: frozenset[str]) -> None:
        self.records = records
        self.param_modules = param_modules
        n = len(records)
        shared = bytearray(n)
        for key, members in buckets.items():
            if key[0] != "source" and len(members) > 1 and records[members[0]].param_ids:
                for m in members:
                    shared[m] = 1
        self.shared_before = _prefix(shared)
        self.params_before = _prefix(bytearray(1 if r.param_ids else 0 for r in records))
        # carried pairs: a parameter-free candidate descending from the one before it
        self.next_carried: dict[int, int] = {}
        self.prev_carried: dict[int, int] = {}
        for key, members in buckets.items():
            if key[0] == "source" or len(members) < 2 or records[members[0]].param_ids:
                continue
            for prev, cur in zip(members, members[1:]):
                if self.params_between(prev, cur) == 0 and _depends_on(records, records[cur], prev):
                    self.next_carried[prev] = cur
                    self.prev_carried[cur] = prev
        self.carried = sorted(set(self.next_carried) | set(self.prev_carried))

    def params_between(self, a: int, b: int) -> int:
        return self.params_before[b] - self.params_before[a + 1]

    def shared_between(self, a: int, b: int) -> int:
        return self.shared_before[b] - self.shared_before[a + 1]

    def carried_in_lockstep(self, prev: int, cur: int) -> bool:
        """Whether a carried pair of another place straddles ``prev`` or ``cur``."""
        lo = bisect_right(self.carried, prev)
        hi = bisect_left(self.carried, cur)
        for c in self.carried[lo:hi]:
            if self.next_carried.get(c, -1) > cur or -1 < self.prev_carried.get(c, cur) < prev:
                return True
        return False


def _prefix(flags: bytearray) -> list[int]:
    out = [0] * (len(flags) + 1)
    total = 0
    for i, f in enumerate(flags):
        total += f
        out[i + 1] = total
    return out


def _split_loops(ctx: _LoopContext, members: list[int]) -> list[LayerGroup]:
    layer_type = ctx.records[members[0]].layer_type
    groups = [LayerGroup([members[0]], layer_type)]
    for prev, cur in zip(members, members[1:]):
        if _same_loop(ctx, prev, cur):
            groups[-1].members.append(cur)
        else:
            groups.append(LayerGroup([cur], layer_type))
    return groups


def _same_loop(ctx: _LoopContext, prev: int, cur: int) -> bool:
    a_stack, b_stack = ctx.records[prev].module_stack, ctx.records[cur].module_stack
    if a_stack and b_stack:
        a, b = a_stack[-1], b_stack[-1]
        if a[0] == b[0] and a[1] != b[1] and a[0] in ctx.param_modules:
            return True
    if ctx.shared_between(prev, cur):
        return True
    if ctx.params_between(prev, cur):
        return False
    return ctx.next_carried.get(prev) == cur or ctx.carried_in_lockstep(prev, cur)


def _depends_on(records: list[OpRecord], rec: OpRecord, target: int) -> bool:
    """Whether ``rec`` descends from record ``target`` (walking back no earlier than it)."""
    seen = {rec.index}
    todo = [rec.index]
    while todo and len(seen) < _MAX_WALK:
        for parent, _pos in records[todo.pop()].parents:
            if parent == target:
                return True
            if parent > target and parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return False
