"""Module taps under ``nn.DataParallel``: one gathered value per pass, not one per replica.

``nn.DataParallel`` splits the batch into chunks, copies the module once per device
(``replicate``) and runs the copies in threads. The copies share the original
modules' hooks, so a tapped module fires once per replica, in whatever order the
threads finish. :class:`ReplicaTracker` wraps the wrapper's ``replicate`` (an instance
attribute, removed with the taps) to learn which replica each module copy belongs
to; the hooks then file replica ``r``'s ``k``-th call as part ``r`` of pass ``k``, and
:class:`GatheredValue` concatenates the parts in replica order along the wrapper's
``dim`` on its ``output_device``, as ``DataParallel`` gathers the model's output
(0-dim values are stacked into a vector, as it does too). Gradients flow back to every
replica through the concatenation.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .structures import tensor_leaves, zip_tensors
from .tap_values import ClonePolicy, TapValue


def find_data_parallel(model: nn.Module) -> nn.DataParallel | None:
    """The ``nn.DataParallel`` among ``model``'s wrappers (DDP, ``torch.compile``), or None.

    Example:
        >>> import torch
        >>> dp = torch.nn.DataParallel(torch.nn.Linear(2, 2))
        >>> find_data_parallel(dp) is dp, find_data_parallel(dp.module)
        (True, None)
    """
    while True:
        if isinstance(model, nn.DataParallel):
            return model
        inner = getattr(model, "module", None) if isinstance(model, nn.parallel.DistributedDataParallel) else \
            getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner


class ReplicaTracker:
    """Knows, during a ``DataParallel`` forward, which replica a module copy belongs to."""

    def __init__(self, wrapper: nn.DataParallel) -> None:
        self.wrapper = wrapper
        self.index: dict[int, int] = {}
        wrapper.replicate = self._replicate  # DataParallel.forward calls self.replicate

    def replica_of(self, module: nn.Module) -> int | None:
        """The replica number of ``module``, or None for an original module (one device, CPU)."""
        if not getattr(module, "_is_replica", False):
            return None
        return self.index.get(id(module))

    def output_device(self) -> torch.device | None:
        """Where the gathered values go: the wrapper's ``output_device``."""
        index = getattr(self.wrapper, "output_device", None)
        src = getattr(self.wrapper, "src_device_obj", None)
        return None if index is None or src is None else torch.device(src.type, index)

    def remove(self) -> None:
        """Give the wrapper its own ``replicate`` back."""
        if self.wrapper.__dict__.get("replicate") == self._replicate:
            del self.wrapper.replicate

    def _replicate(self, module: nn.Module, device_ids: Any) -> list[nn.Module]:
        replicas = type(self.wrapper).replicate(self.wrapper, module, device_ids)
        self.index = {id(m): r for r, replica in enumerate(replicas) for m in replica.modules()}
        return replicas


class GatheredValue:
    """One pass of a module tap under ``DataParallel``: the replicas' parts, gathered on read."""

    __slots__ = ("parts", "tracker", "final")

    def __init__(self, tracker: ReplicaTracker) -> None:
        self.parts: dict[int, TapValue] = {}
        self.tracker = tracker
        self.final: Any = None

    def add(self, replica: int, value: TapValue) -> None:
        """Replica ``replica``'s output for this pass."""
        self.parts[replica] = value

    def resolve(self, policy: ClonePolicy, name: str) -> Any:
        """The replicas' tap-time values, gathered along the batch dim (computed once)."""
        if self.final is None:
            self.final = self._gather([v.resolve(policy, name) for _, v in sorted(self.parts.items())])
        return self.final

    def gradient(self) -> Any:
        """The gathered gradient, or None unless every replica's value received one."""
        parts = [v for _, v in sorted(self.parts.items())]
        grads = [v.gradient() for v in parts]
        for v, g in zip(parts, grads):
            if g is None or len(tensor_leaves(g)) != len(tensor_leaves(v.raw)):
                return None
        return self._gather(grads)

    def _gather(self, values: list[Any]) -> Any:
        device = self.tracker.output_device()
        dim = getattr(self.tracker.wrapper, "dim", 0)  # unset on a CPU-only DataParallel

        def concat(tensors: list[torch.Tensor]) -> torch.Tensor:
            target = device if device is not None else tensors[0].device
            moved = [t.to(target) for t in tensors]
            return torch.stack(moved) if all(t.dim() == 0 for t in moved) else torch.cat(moved, dim)

        return zip_tensors(values, concat)
