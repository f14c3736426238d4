"""From raw records to layers: which records are passes of one layer, and their labels.

Records are passes of one layer when they sit at the same place (same op type, same
output position, same innermost module, same Python call site) in repeated loop
bodies, and the repetition is a real loop:

* the op applies the same parameters again (weight sharing, RNN-style loops), or
* the op runs inside repeated calls of one module that owns parameters, or
* each repetition depends on the previous one (a parameter-free loop body whose
  iterations feed each other).

Everything else is a distinct layer: corresponding ops of distinct blocks differ by
module address, and a parameter-free module called from two statements differs by
call site. All steps are linear in the number of records (the dependency check walks
back only across the ops between two repetitions).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .records import OpRecord

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


def group_passes(records: list[OpRecord], param_modules: frozenset[str]) -> list[LayerGroup]:
    """Group records into layers and label them ``{type}_{type_count}_{layer_index}``."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for rec in records:
        buckets[_pass_key(rec)].append(rec.index)
    groups: list[LayerGroup] = []
    for key, members in buckets.items():
        if len(members) == 1 or key[0] == "source":
            groups.extend(LayerGroup([m], records[m].layer_type) for m in members)
            continue
        groups.extend(_split_loops(records, members, param_modules))
    groups.sort(key=lambda g: g.members[0])
    counts: dict[str, int] = defaultdict(int)
    for i, g in enumerate(groups):
        counts[g.layer_type] += 1
        g.type_index = counts[g.layer_type]
        g.layer_index = i
        g.label = f"{g.layer_type}_{g.type_index}_{i}"
    return groups


def _pass_key(rec: OpRecord) -> tuple:
    if rec.layer_type in _SOURCE_TYPES and rec.func is None:
        return ("source", rec.index)
    module = rec.module_stack[-1][0] if rec.module_stack else ""
    return (rec.layer_type, rec.output_index, module, rec.callsite, rec.param_ids)


def _split_loops(records: list[OpRecord], members: list[int], param_modules: frozenset[str]) -> list[LayerGroup]:
    first = records[members[0]]
    if first.param_ids:
        return [LayerGroup(list(members), first.layer_type)]
    groups = [LayerGroup([members[0]], first.layer_type)]
    for prev, cur in zip(members, members[1:]):
        if _same_loop(records, records[prev], records[cur], param_modules):
            groups[-1].members.append(cur)
        else:
            groups.append(LayerGroup([cur], first.layer_type))
    return groups


def _same_loop(records: list[OpRecord], prev: OpRecord, cur: OpRecord, param_modules: frozenset[str]) -> bool:
    if prev.module_stack and cur.module_stack:
        a, b = prev.module_stack[-1], cur.module_stack[-1]
        if a[0] == b[0] and a[1] != b[1] and a[0] in param_modules:
            return True
    return _depends_on(records, cur, prev.index)


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
