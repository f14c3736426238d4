"""Sizes that follow the input: ints read from tensor metadata, traced during extraction.

While :class:`~lens_train.extract.Extract` captures the model, ``x.size(0)``,
``x.shape``, ``x.numel()`` and ``len(x)`` in the model's code return
:class:`TracedInt` (an ``int`` subclass) remembering which tensor dimension it came
from. Integer arithmetic keeps the trace (``b * heads``, ``n // 2``), so the call
templates of ``view``/``reshape``/``expand``/``zeros``... hold expressions instead of
the example's numbers, and the extracted module evaluates them on each new input.
Comparisons are recorded as guards (``if x.size(1) > 16``): a new input that flips
one is a different path. What leaves the int world (``float``, ``int(n * 0.5)``,
``math.sqrt``) becomes a fixed number.
"""

from __future__ import annotations

import operator
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..capture.calls import op_type
from ..capture.recorder import Recorder
from ..capture.records import OpRecord

# An expression: ("dim", record, d) | ("numel", record) | ("const", v) | (op_name, expr, expr)
Expr = tuple
_LENS_DIR = os.path.dirname(os.path.dirname(__file__))
_SIZE_READS = frozenset({"size", "shape", "numel", "nelement", "__len__"})
# the recorder forwards the model's own calls from this frame; its other frames are its own reads
_FORWARDING_CODE = Recorder.__torch_function__.__code__
_OPS: dict[str, Callable[[int, int], Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv, "mod": operator.mod,
}
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
}
_ACTIVE: list[SizeTracer] = []


class TracedInt(int):
    """An int read from a tensor's size, carrying the expression that produced it.

    Example:
        >>> n = TracedInt(8, ("dim", 3, 0))
        >>> (n * 2 + 1).expr
        ('add', ('mul', ('dim', 3, 0), ('const', 2)), ('const', 1))
    """

    expr: Expr

    def __new__(cls, value: int, expr: Expr) -> TracedInt:
        obj = int.__new__(cls, value)
        obj.expr = expr
        return obj

    __hash__ = int.__hash__

    def __neg__(self) -> TracedInt:
        return TracedInt(-int(self), ("sub", ("const", 0), self.expr))

    def __pos__(self) -> TracedInt:
        return self

    def __index__(self) -> int:
        return int.__index__(self)

    def __reduce__(self) -> Any:  # copies and pickles are plain ints
        return (int, (int(self),))


def _arith(name: str, reflected: bool) -> Callable[[TracedInt, Any], Any]:
    fn = _OPS[name]

    def method(self: TracedInt, other: Any) -> Any:
        if not isinstance(other, int) or isinstance(other, bool):
            return NotImplemented
        a, b = (other, self) if reflected else (self, other)
        return TracedInt(fn(int(a), int(b)), (name, _expr(a), _expr(b)))

    return method


def _compare(name: str) -> Callable[[TracedInt, Any], Any]:
    fn = _COMPARE[name]

    def method(self: TracedInt, other: Any) -> Any:
        if not isinstance(other, int):
            return getattr(int, f"__{name}__")(self, other)
        result = fn(int(self), int(other))
        if _ACTIVE:
            _ACTIVE[-1].guard(name, self.expr, _expr(other), result)
        return result

    return method


for _name in _OPS:
    setattr(TracedInt, f"__{_name}__", _arith(_name, False))
    setattr(TracedInt, f"__r{_name}__", _arith(_name, True))
for _name in _COMPARE:
    setattr(TracedInt, f"__{_name}__", _compare(_name))


class TracedShape(tuple):
    """``x.shape`` / ``x.size()`` during extraction: a tuple of :class:`TracedInt`."""

    def numel(self) -> int:
        """Product of the sizes (traced too)."""
        n: Any = 1
        for s in self:
            n = n * s
        return n


def _expr(v: Any) -> Expr:
    return v.expr if isinstance(v, TracedInt) else ("const", int(v))


def evaluate(expr: Expr, size_of: Callable[[int, int | None], int | None]) -> int | None:
    """Value of ``expr`` where ``size_of(record, dim)`` gives sizes (dim None: numel).

    Returns None when a size is unknown.

    Example:
        >>> evaluate(("mul", ("dim", 0, 0), ("const", 4)), lambda rec, dim: 16)
        64
    """
    kind = expr[0]
    if kind == "const":
        return expr[1]
    if kind == "dim":
        return size_of(expr[1], expr[2])
    if kind == "numel":
        return size_of(expr[1], None)
    a, b = evaluate(expr[1], size_of), evaluate(expr[2], size_of)
    if a is None or b is None:
        return None
    return _OPS[kind](a, b) if kind in _OPS else _COMPARE[kind](a, b)


_SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "mod": "%", "eq": "==", "ne": "!=", "lt": "<",
            "le": "<=", "gt": ">", "ge": ">="}


def expr_text(expr: Expr, labels: dict[int, str]) -> str:
    """``expr`` as Python-like text, naming tensors by their labels.

    Example:
        >>> expr_text(("ne", ("dim", 2, 1), ("const", 8)), {2: "linear_1_1"})
        'linear_1_1.size(1) != 8'
    """
    kind = expr[0]
    if kind == "const":
        return str(expr[1])
    if kind == "dim":
        return f"{labels.get(expr[1], expr[1])}.size({expr[2]})"
    if kind == "numel":
        return f"{labels.get(expr[1], expr[1])}.numel()"
    a, b = (expr_text(e, labels) if e[0] in ("const", "dim", "numel") else f"({expr_text(e, labels)})" for e in expr[1:])
    return f"{a} {_SYMBOLS[kind]} {b}"


def sources(expr: Expr) -> set[tuple[int, int | None]]:
    """The (record, dim) sizes an expression reads (dim None: numel).

    Example:
        >>> sorted(sources(("add", ("dim", 2, 0), ("numel", 5))), key=str)
        [(2, 0), (5, None)]
    """
    kind = expr[0]
    if kind == "const":
        return set()
    if kind == "dim":
        return {(expr[1], expr[2])}
    if kind == "numel":
        return {(expr[1], None)}
    return sources(expr[1]) | sources(expr[2])


class SizeTracer(TorchFunctionMode):
    """Entered *below* the capture engine's recorder: turns the model's size reads into traced ints.

    ``note_record`` is the capture plan's sink (it learns which record owns which
    tensor); ``guards`` lists (comparison, left, right, result, records seen so far).
    """

    def __init__(self) -> None:
        super().__init__()
        self.owner: dict[int, tuple[int, Any]] = {}
        self.guards: list[tuple[str, Expr, Expr, bool, int]] = []
        self.constants: dict[int, torch.Tensor] = {}
        self.num_records = 0
        self._seen_guards: set = set()

    def note_record(self, rec: OpRecord) -> None:
        """Sink for the capture plan: remember the record of each live tensor."""
        t = rec.live_tensor()
        self.num_records = rec.index + 1
        if t is None:
            return
        self.owner[id(t)] = (rec.index, weakref.ref(t))
        if rec.call_template is None:  # a tensor that entered without a replayable call
            self.constants[rec.index] = t

    def guard(self, name: str, left: Expr, right: Expr, result: bool) -> None:
        """Record that the model's code compared two sizes with this result."""
        key = (name, left, right)
        if key not in self._seen_guards:
            self._seen_guards.add(key)
            self.guards.append((name, left, right, result, self.num_records))

    def __enter__(self) -> SizeTracer:
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)
        finally:
            _ACTIVE.remove(self)

    def __torch_function__(self, func, types_, args=(), kwargs=None):  # noqa: ANN001
        result = func(*args, **(kwargs or {}))
        if not args or not isinstance(args[0], torch.Tensor):
            return result
        name = op_type(func)[0]
        if name not in _SIZE_READS:
            return result
        caller = sys._getframe(1).f_code
        if caller is not _FORWARDING_CODE and caller.co_filename.startswith(_LENS_DIR):
            return result
        entry = self.owner.get(id(args[0]))
        if entry is None or entry[1]() is not args[0]:
            return result
        return _traced(name, entry[0], args, kwargs or {}, result)


def _traced(name: str, rec: int, args: tuple, kwargs: dict, result: Any) -> Any:
    if name in ("numel", "nelement"):
        return TracedInt(result, ("numel", rec))
    if name == "__len__":
        return TracedInt(result, ("dim", rec, 0))
    if isinstance(result, int):  # x.size(d)
        d = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        d = d + args[0].dim() if d < 0 else d
        return TracedInt(result, ("dim", rec, int(d)))
    return TracedShape(TracedInt(s, ("dim", rec, i)) for i, s in enumerate(result))
