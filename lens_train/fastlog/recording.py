"""What fastlog keeps: :class:`Recording` -> :class:`Rollout` -> :class:`Entry`."""

from __future__ import annotations

import re

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..capture.printing import human_bytes, shape_text
from ..errors import AmbiguousLayerError, LayerNotFoundError, OutOfRangeError, suggestion_text
from .context import RecordContext


_LOG_LABEL = re.compile(r"^([a-z0-9]+)_(\d+)_\d+(?::\d+)?$")


def unknown_label_text(what: str, label: object, kept: Iterable[str], listing_call: str) -> str:
    """Error text for a label fastlog did not keep: closest kept labels, how to list them all.

    A ``ModelLog`` label (``relu_1_4``, as ``lt.get_nodes`` lists) is recognised and the
    fastlog label it usually corresponds to is named.

    Example:
        >>> print(unknown_label_text("No event 'relu_1_4'.", "relu_1_4", ["relu_1", "linear_1"], "rec.labels"))
        No event 'relu_1_4'. Closest: 'relu_1'. List every name with rec.labels. 'relu_1_4' looks like a ModelLog label (lt.get_nodes(model, x) lists those); fastlog labels events as they happen, {type}_{count} for ops and {address}:{call} for modules, so try 'relu_1'. lt.fastlog.dry_run(model, x) lists every event with its label.
    """
    text = what + suggestion_text(str(label), kept, listing_call)
    match = _LOG_LABEL.match(str(label))
    if match:
        text += (f" {str(label)!r} looks like a ModelLog label (lt.get_nodes(model, x) lists those); fastlog labels events "
                 "as they happen, {type}_{count} for ops and {address}:{call} for modules, "
                 f"so try {match.group(1) + '_' + match.group(2)!r}.")
    return text + " lt.fastlog.dry_run(model, x) lists every event with its label."


@dataclass(slots=True, eq=False)
class Entry:
    """One kept tensor: its event's context and its value (read from disk on first use)."""

    context: RecordContext
    _value: Any = None
    _load: Callable[[], torch.Tensor] | None = None

    @property
    def label(self) -> str:
        """The event's online label (``relu_3``, ``encoder.fc:2``)."""
        return self.context.label

    @property
    def value(self) -> torch.Tensor:
        """The kept tensor."""
        if self._value is None and self._load is not None:
            return self._load()  # not cached: a disk recording stays small in memory
        return self._value

    @property
    def nbytes(self) -> int:
        """Bytes of the kept tensor as it was described when kept."""
        n = 1
        for s in self.context.shape:
            n *= int(s)
        return n * self.context.dtype.itemsize


class Rollout(Mapping):
    """The kept tensors of one rollout (one model call, or one ``recorder.rollout()`` block).

    Index by online label: ``rollout["relu_2"]``; iterate over labels like a dict.

    Example:
        >>> import torch, lens_train as lt
        >>> rec = lt.fastlog.record(torch.nn.ReLU(), torch.ones(2), keep_op=lambda ctx: True)
        >>> ro = rec.rollouts[0]
        >>> list(ro), ro["relu_1"].tolist()
        (['relu_1'], [1.0, 1.0])
    """

    def __init__(self, index: int, entries: list[Entry], num_calls: int = 1) -> None:
        self.index = index
        self.entries = entries
        self.num_calls = num_calls
        self._by_label = {e.label: e for e in entries}

    def __getitem__(self, label: str) -> torch.Tensor:
        return self.entry(label).value

    def entry(self, label: str) -> Entry:
        """The :class:`Entry` (context and value) kept under ``label``."""
        try:
            return self._by_label[label]
        except (KeyError, TypeError):
            raise LayerNotFoundError(unknown_label_text(f"Rollout {self.index} kept no event {label!r}.", label, self._by_label,
                                                        "list(rollout)")) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_label)

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"Rollout({self.index}, {len(self.entries)} kept: {', '.join(list(self._by_label)[:6])}{'...' if len(self) > 6 else ''})"


class Recording:
    """Tensors kept by fastlog over one or many rollouts.

    ``rec["relu_2"]`` is the tensor when there is one rollout; ``rec.values("relu_2")``
    gives it for every rollout and ``rec[i]`` is rollout ``i``. Iterating yields every
    :class:`Entry` in order. ``rec.lost`` lists what a crashed recording lost (see
    :func:`lens_train.fastlog.recover`).

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> rec = lt.fastlog.record(model, torch.ones(1, 3), keep_op=lambda ctx: ctx.layer_type == "linear")
        >>> rec.labels, rec["linear_2"].shape
        (['linear_1', '0:1', 'linear_2', '2:1'], torch.Size([1, 2]))
    """

    def __init__(self, rollouts: list[Rollout], output: Any = None, path: str | None = None,
                 lost: list[str] | None = None) -> None:
        self.rollouts = rollouts
        self.output = output
        self.path = path
        self.lost = list(lost or [])

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            n = len(self.rollouts)
            if not -n <= key < n:
                raise OutOfRangeError(f"Rollout position {key!r} is out of range: this recording has {n} rollouts. "
                                      f"Example: rec[0] (or rec[-1] for the last; positions {-n} to {n - 1}).")
            return self.rollouts[key]
        if len(self.rollouts) != 1:
            raise AmbiguousLayerError(
                f"This recording has {len(self.rollouts)} rollouts, so {key!r} names one tensor per rollout. "
                f"Use rec[i][{key!r}] for rollout i, or rec.values({key!r}) for all of them."
            )
        return self.rollouts[0][key]

    def values(self, label: str) -> list[torch.Tensor]:
        """``label``'s tensor from every rollout that kept it, in rollout order."""
        found = [ro[label] for ro in self.rollouts if label in ro._by_label]
        if not found:
            raise LayerNotFoundError(unknown_label_text(f"No rollout kept {label!r}.", label, self.labels, "rec.labels"))
        return found

    @property
    def labels(self) -> list[str]:
        """Every label kept in any rollout, in order of first appearance."""
        return list(dict.fromkeys(e.label for ro in self.rollouts for e in ro.entries))

    def __iter__(self) -> Iterator[Entry]:
        for ro in self.rollouts:
            yield from ro.entries

    def __len__(self) -> int:
        return sum(len(ro) for ro in self.rollouts)

    def summary(self) -> str:
        """A table of what was kept: label, kind, how many rollouts, shape, dtype, bytes."""
        where = f" on disk at {self.path}" if self.path else " in memory"
        total = sum(e.nbytes for e in self)
        lines = [f"Recording: {len(self.rollouts)} rollout(s), {len(self)} kept tensors ({human_bytes(total)}){where}"]
        rows: dict[str, list] = {}
        for e in self:
            row = rows.setdefault(e.label, [e.context.kind, 0, e.context.shape, e.context.dtype, 0])
            row[1] += 1
            row[4] += e.nbytes
        width = max((len(k) for k in rows), default=5)
        lines.append(f"  {'label':{width}s}  kind    count  shape            dtype      bytes")
        for label, (kind, count, shape, dtype, nbytes) in rows.items():
            dt = str(dtype).removeprefix("torch.")
            lines.append(f"  {label:{width}s}  {kind:6s}  {count:5d}  {shape_text(tuple(shape)):15s}  {dt:9s}  {human_bytes(nbytes)}")
        lines.extend(f"  lost: {item}" for item in self.lost)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Recording({len(self.rollouts)} rollouts, {len(self)} kept, labels={self.labels[:6]}{'...' if len(self.labels) > 6 else ''})"
