"""Loss-weight schedules: plain callables ``step -> multiplier``, given the step explicitly.

Example:
    >>> from lens_train.train import schedules
    >>> s = schedules.linear_warmup(steps=10)
    >>> s(0), s(5), s(20)
    (0.0, 0.5, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import InvalidArgumentError

__all__ = ["constant", "cosine_decay", "linear_warmup"]


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise InvalidArgumentError(f"A schedule needs steps >= 1 (an int), got {steps!r}.")


@dataclass(frozen=True)
class Constant:
    """The same multiplier at every step."""

    value: float = 1.0

    def __call__(self, step: int) -> float:
        return float(self.value)


@dataclass(frozen=True)
class LinearWarmup:
    """From ``start`` to ``end`` linearly over ``steps`` steps, then ``end``."""

    steps: int
    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        _check_steps(self.steps)

    def __call__(self, step: int) -> float:
        frac = min(max(step, 0), self.steps) / self.steps
        return self.start + (self.end - self.start) * frac


@dataclass(frozen=True)
class CosineDecay:
    """After ``warmup`` linear steps from 0, from ``start`` to ``end`` along half a cosine over ``steps``."""

    steps: int
    start: float = 1.0
    end: float = 0.0
    warmup: int = 0

    def __post_init__(self) -> None:
        _check_steps(self.steps)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start * step / self.warmup
        frac = min(max(step - self.warmup, 0), self.steps) / self.steps
        return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * frac))


def constant(value: float = 1.0) -> Constant:
    """Always ``value``.

    Example:
        >>> constant(0.3)(1000)
        0.3
    """
    return Constant(value)


def linear_warmup(steps: int, start: float = 0.0, end: float = 1.0) -> LinearWarmup:
    """Linear ramp from ``start`` to ``end`` over ``steps`` steps.

    Example:
        >>> linear_warmup(4)(1)
        0.25
    """
    return LinearWarmup(steps, start, end)


def cosine_decay(steps: int, start: float = 1.0, end: float = 0.0, warmup: int = 0) -> CosineDecay:
    """Cosine decay from ``start`` to ``end`` over ``steps`` steps (after an optional warm-up).

    Example:
        >>> s = cosine_decay(10)
        >>> s(0), s(5), s(10)
        (1.0, 0.5, 0.0)
    """
    return CosineDecay(steps, start, end, warmup)
