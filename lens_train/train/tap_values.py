"""One tapped value of one step, and how it stays the value at tap time.

In-place safety: a later in-place op (``ReLU(inplace=True)`` after a tapped
BatchNorm) rewrites the tapped tensor. Each tap keeps the tensors' version counters
at tap time and a :class:`ClonePolicy`. While the policy does not yet know whether
a tap's tensor is rewritten later in the step, it clones at tap time (the clone is
graph-connected, so gradients reach the tap-time value) and checks the version
counters when the value is first read: rewritten means clone on every later step;
untouched means the clone is dropped and later steps pass the tensor itself
through, at no cost. A rewrite that appears only after that (a data-dependent
in-place op) cannot be undone and raises :class:`~lens_train.errors.TapError`
naming ``clone="always"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..errors import TapError
from .structures import map_tensors, tensor_leaves

_Tensor = torch.Tensor


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter (and cannot be rewritten)
        return -1


class ClonePolicy:
    """Whether a tap clones at tap time: ``"auto"`` learns it, or ``"always"``/``"never"``.

    Example:
        >>> p = ClonePolicy("auto")
        >>> p.should_clone(), p.learn(rewritten=False), p.should_clone()
        (True, None, False)
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.rewritten: bool | None = None  # learned: is the tensor rewritten after tap time?

    def should_clone(self) -> bool:
        """Clone this step's value at tap time."""
        if self.mode == "auto":
            return self.rewritten is not False
        return self.mode == "always"

    def learn(self, rewritten: bool) -> None:
        """Record what one step showed."""
        if self.mode == "auto" and (self.rewritten is None or rewritten):
            self.rewritten = rewritten


class TapValue:
    """One captured value (a tensor or a module's structured output)."""

    __slots__ = ("raw", "versions", "copy", "final", "grads", "device", "original")

    def __init__(self, raw: Any, clone: bool, grad_box: bool, original: Any = None) -> None:
        self.raw = raw
        self.original = original  # the value before an edit (None: not edited)
        leaves = [raw] if isinstance(raw, _Tensor) else tensor_leaves(raw)
        self.versions = [_version(t) for t in leaves]
        self.copy = map_tensors(raw, torch.Tensor.clone) if clone else None
        self.final: Any = None
        self.device = leaves[0].device if leaves else None
        self.grads: list[torch.Tensor | None] | None = None
        if grad_box:
            self.grads = [None] * len(leaves)
            for i, t in enumerate(leaves):
                if t.requires_grad:
                    t.register_hook(_grad_setter(self.grads, i))

    def resolve(self, policy: ClonePolicy, name: str) -> Any:
        """The tap-time value (checked once; the result is kept)."""
        if self.final is not None:
            return self.final
        leaves = [self.raw] if isinstance(self.raw, _Tensor) else tensor_leaves(self.raw)
        rewritten = any(_version(t) != v for t, v in zip(leaves, self.versions))
        if self.copy is not None:
            self.final = self.copy if rewritten else self.raw
            self.copy = None
        elif rewritten:
            policy.rewritten = True
            raise TapError(
                f"The tapped value of {name!r} was modified in place later in this step (an in-place op "
                "that did not run in the first step), so its tap-time value is gone. Clone at tap time with "
                f"lt.Taps(model, [{name!r}], clone='always'); later steps of this Taps now clone automatically."
            )
        else:
            self.final = self.raw
        policy.learn(rewritten)
        return self.final

    def gradient(self) -> Any:
        """The gradient of the tap-time value, in the value's structure (None if none flowed)."""
        if self.grads is None:
            return None
        if isinstance(self.raw, _Tensor):
            return self.grads[0]
        it = iter(self.grads)
        return map_tensors(self.raw, lambda _t: next(it))


def _grad_setter(box: list, i: int) -> Callable[[torch.Tensor], None]:
    def hook(grad: torch.Tensor) -> None:
        box[i] = grad if box[i] is None else box[i] + grad

    return hook
