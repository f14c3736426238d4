"""Which sizes of an extracted sub-model do not simply follow its new input.

Most sizes the model's code reads (``x.size(0)`` in a ``view``) are traced and follow
the input (see :mod:`.sizes`). Two kinds do not, and ``sub.summary`` lists both per op:

* **fixed**: the int arguments of size-taking ops (``view``, ``reshape``, ``zeros``,
  ``arange``...) that are plain ints: constants, or sizes that left integer
  arithmetic (``int(n * 0.5)``); and sizes read from a tensor the sub-model never
  sees when no input dimension of the same example size exists. They stay at their
  example value.
* **matched**: sizes read from a tensor the sub-model never sees (the model's input,
  when ``node_in`` is later), taken from the sub-model input dimension that had the
  same size on the example (the same dimension index preferred).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..capture.records import OpRecord
from .sizes import TracedInt, TracedShape, sources

# Ops whose int arguments are sizes: the positional arguments that hold them (None: all).
# A ``size=`` keyword is a size for each of them.
_SIZE_ARGUMENTS: dict[str, tuple[int, ...] | None] = {
    "view": None, "reshape": None, "expand": None, "repeat": None, "broadcast_to": None, "tile": None,
    "zeros": None, "ones": None, "empty": None, "rand": None, "randn": None, "arange": None, "as_strided": None,
    "new_zeros": None, "new_ones": None, "new_empty": None, "full": (0,), "new_full": (1,), "unflatten": (2,),
    "narrow": (3,), "randint": (-1,), "linspace": (2,), "interpolate": (), "upsample": (),
}


@dataclass(slots=True)
class SizeNotes:
    """Sizes one replayed op uses that do not simply follow the new input.

    Example:
        >>> SizeNotes(fixed=["view size arguments 4"]).matched
        []
    """

    fixed: list[str] = field(default_factory=list)
    matched: list[str] = field(default_factory=list)


def template_sources(template: Any) -> set[tuple[int, int | None]]:
    """The (record, dim) sizes a call template reads through traced ints (dim None: numel).

    Example:
        >>> from lens_train.extract.sizes import TracedInt
        >>> template_sources(((None, TracedInt(3, ("dim", 0, 0)), -1), {}))
        {(0, 0)}
    """
    found: set[tuple[int, int | None]] = set()

    def walk(v: Any) -> None:
        if isinstance(v, TracedInt):
            found.update(sources(v.expr))
        elif isinstance(v, (tuple, list, TracedShape)):
            for x in v:
                walk(x)

    args, kwargs = template
    walk(args)
    walk(list(kwargs.values()))
    return found


def literal_sizes(func_name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> list[int]:
    """The plain-int size arguments of a size-taking op (``-1`` means "inferred" and is left out).

    Example:
        >>> from lens_train.extract.sizes import TracedInt
        >>> literal_sizes("view", (None, TracedInt(3, ("dim", 0, 0)), 2, 4), {})
        [2, 4]
        >>> literal_sizes("add", (None, 2), {})
        []
    """
    if func_name not in _SIZE_ARGUMENTS:
        return []
    positions = _SIZE_ARGUMENTS[func_name]
    chosen = list(args) if positions is None else [args[p] for p in positions if -len(args) <= p < len(args)]
    if "size" in kwargs:
        chosen.append(kwargs["size"])
    found: list[int] = []

    def walk(v: Any) -> None:
        if type(v) is int and v != -1:
            found.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                walk(x)

    walk(chosen)
    return found


def size_notes(ops: list[tuple[str, OpRecord]], records: list[OpRecord], labels: dict[int, str],
               fallback: dict[tuple[int, int | None], tuple[int, int] | None]) -> dict[str, SizeNotes]:
    """Per replayed op (label, first record): its fixed and matched sizes, when it has any."""
    notes: dict[str, SizeNotes] = {}
    for label, rec in ops:
        note = SizeNotes()
        for src, dim in sorted(template_sources(rec.call_template), key=str):
            if (src, dim) in fallback:
                _note_unseen(note, (src, dim), fallback[(src, dim)], records, labels)
        args, kwargs = rec.call_template
        literals = literal_sizes(rec.func_name, args, kwargs)
        if literals:
            note.fixed.append(f"{rec.func_name} size argument(s) {', '.join(map(str, literals))}: plain ints, not read "
                              "from a tensor's size (constants, or sizes computed outside integer arithmetic)")
        if note.fixed or note.matched:
            notes[label] = note
    return notes


def _note_unseen(note: SizeNotes, size: tuple[int, int | None], target: tuple[int, int] | None,
                 records: list[OpRecord], labels: dict[int, str]) -> None:
    src, dim = size
    shape = records[src].shape
    value = 1
    for s in shape:
        value *= int(s)
    what = f"numel of {labels[src]}" if dim is None else f"size({dim}) of {labels[src]}"
    value = value if dim is None else int(shape[dim])
    if target is None:
        note.fixed.append(f"{what} stays {value}: read from a tensor this sub-model never sees, and no input "
                          "dimension had that size on the example")
    else:
        b, d = target
        note.matched.append(f"{what} ({value} on the example) follows size({d}) of input {labels[b]}, "
                            "which had the same size on the example")
