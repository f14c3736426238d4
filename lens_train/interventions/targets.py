"""Which layers an intervention's selectors name, read from a log of the pass.

A selector is what ``lt.Taps`` accepts: a module address (``"blocks.1.act"``, every call;
``"fc:2"``, one call), an op label (``"relu_5_12"``, ``"relu_5"``; every pass, or one with
``"linear_1_1:2"``) or a glob over module addresses and layer labels (``"blocks.*.act"``).
A module selector edits the module call's output (as a forward hook returning the edited
value would); a label edits that op's output.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from ..capture.model_log import ModelLog
from ..errors import ArgumentTypeError, LayerNotFoundError, suggestion_text
from ..train.edits import Edit, apply_edit, as_edit


@dataclass(frozen=True)
class Target:
    """One place an edit applies: a module call (``call``) or one op's output record (``record``)."""

    name: str  # what the user wrote
    label: str  # the layer (or module call) edited, for messages and logs
    edit: Edit
    record: int | None = None
    call: tuple[str, int] | None = None


class AppliedEdit:
    """``fn(value) -> edited value`` for the engine: the edit, checked by :func:`apply_edit`, with a description."""

    def __init__(self, edit: Edit, label: str, call: str | None = None) -> None:
        self.edit, self.label = edit, label
        self.description = describe(edit) if call is None else f"{describe(edit)} on the output of {call}"

    def __call__(self, value: Any) -> Any:
        return apply_edit(self.edit, value, self.label)


def describe(edit: Edit) -> str:
    """``"zero()"``, ``"mean()"``, ``"function scale"``...: how an edit shows in a log."""
    fn = getattr(edit, "fn", None)
    if fn is not None:
        return f"function {getattr(fn, '__name__', type(fn).__name__)}"
    return f"{edit.name}()" if edit.name.isidentifier() else edit.name


def resolve_targets(log: ModelLog, edits: Any, argument: str = "edits") -> list[Target]:
    """Every target of ``{selector: edit}`` in ``log`` (errors name ``argument`` and the closest selectors)."""
    if not hasattr(edits, "items"):
        raise ArgumentTypeError(f"{argument} must be a dict {{selector: edit}}, got {type(edits).__name__} {edits!r:.40}. "
                                "Example: edits={'blocks.1.act': 'zero', 'relu_5': lt.edits.noise(0.1)}.")
    targets: list[Target] = []
    for selector, spec in edits.items():
        if not isinstance(selector, str):
            raise ArgumentTypeError(f"{argument}: selectors are strings, got {type(selector).__name__} {selector!r}. "
                                    "Example: edits={'fc': 'zero', 'relu_1_2': 'mean'}.")
        edit = as_edit(spec)
        found = _targets(log, selector, edit)
        if not found:
            names = [*log.modules, *log.layer_labels_no_pass]
            raise LayerNotFoundError(f"{argument}: {selector!r} names no module or layer of this model."
                                     + suggestion_text(selector, names, "log.modules and log.layer_labels"))
        targets.extend(found)
    return targets


def _targets(log: ModelLog, selector: str, edit: Edit) -> list[Target]:
    if any(c in selector for c in "*?["):
        found = [t for address in log.modules if fnmatch.fnmatchcase(address, selector)
                 for t in _module_targets(log, address, None, selector, edit)]
        labels = [label for label in log.layer_labels_no_pass if fnmatch.fnmatchcase(label, selector)]
        return found + [t for label in labels for t in _layer_targets(log, label, selector, edit)]
    address, _, num = selector.rpartition(":")
    if selector in log.modules:
        return _module_targets(log, selector, None, selector, edit)
    if num.isdigit() and address in log.modules:
        return _module_targets(log, address, int(num), selector, edit)
    if selector in log:
        return _layer_targets(log, selector, selector, edit)
    return []


def _module_targets(log: ModelLog, address: str, call: int | None, name: str, edit: Edit) -> list[Target]:
    calls = log.modules[address].calls
    chosen = calls if call is None else [c for c in calls if c["pass_num"] == call]
    if call is not None and not chosen:
        raise LayerNotFoundError(f"Module {address!r} ran {len(calls)} time(s); {name!r} asks for call {call}. "
                                 f"Use {address!r} (every call) or {address}:1..{len(calls)}.")
    return [Target(name, f"{address}:{c['pass_num']}", edit, call=(address, c["pass_num"])) for c in chosen]


def _layer_targets(log: ModelLog, key: str, name: str, edit: Edit) -> list[Target]:
    """A label names one pass (``"linear_1_1:2"``) or every pass of its layer (``"linear_1_1"``)."""
    hit = log._keys[key]
    layers = [log.layers[i] for i in (hit if isinstance(hit, tuple) else (hit,))]
    return [Target(name, layer.layer_label, edit, record=layer.operation_index) for layer in layers]
