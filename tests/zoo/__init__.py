"""A zoo of small models that every capture feature must log faithfully.

Each entry builds a fresh model and fresh inputs (seeded, so two builds are identical);
``tests/zoo/test_zoo.py`` logs each one and validates it by replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# name -> builder returning (model, input_args) or (model, input_args, input_kwargs)
ZOO: dict[str, Callable[[], tuple]] = {}


def zoo(name: str) -> Callable[[Callable[[], tuple]], Callable[[], tuple]]:
    """Register a builder under ``name``."""

    def register(builder: Callable[[], tuple]) -> Callable[[], tuple]:
        if name in ZOO:
            raise ValueError(f"zoo entry {name!r} registered twice")
        ZOO[name] = builder
        return builder

    return register


def build(name: str) -> tuple[torch.nn.Module, Any, dict]:
    """A fresh, seeded (model, input_args, input_kwargs) for zoo entry ``name``."""
    torch.manual_seed(0)
    made = ZOO[name]()
    model, args = made[0], made[1]
    kwargs = made[2] if len(made) > 2 else {}
    return model, args, kwargs


def _load() -> None:
    from . import architectures, control, inputs_outputs, long_tail, state, tensor_ops  # noqa: F401


_load()
