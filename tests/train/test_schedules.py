"""Schedules: exact values."""

import math

import pytest

from lens_train.errors import InvalidArgumentError
from lens_train.train import schedules


def test_values() -> None:
    assert schedules.constant(0.5)(10**6) == 0.5
    warm = schedules.linear_warmup(4, start=0.2, end=1.0)
    assert [warm(s) for s in (0, 2, 4, 9)] == pytest.approx([0.2, 0.6, 1.0, 1.0])
    cos = schedules.cosine_decay(10, start=1.0, end=0.1, warmup=2)
    assert cos(1) == pytest.approx(0.5) and cos(2) == pytest.approx(1.0)
    assert cos(7) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cos(100) == pytest.approx(0.1)


def test_bad_steps() -> None:
    with pytest.raises(InvalidArgumentError, match="steps >= 1"):
        schedules.linear_warmup(0)
