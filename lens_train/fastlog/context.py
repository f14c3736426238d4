"""What a fastlog predicate sees (:class:`RecordContext`) and may answer (:class:`CaptureSpec`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..arguments import check_bool, fail

_NO_HISTORY: tuple = ()


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """How to keep one event's tensor, returned by a ``keep_op`` predicate instead of ``True``.

    Args:
        keep_grad: keep the tensor attached to the autograd graph (as ``train_mode`` does),
            so a loss computed from it reaches the model's parameters. Kept on the
            device and in the dtype it has, whatever ``dtype``/``device`` say, so that
            the kept tensor is the one in the graph.
        dtype: store a copy in this dtype (e.g. ``torch.float16`` to halve memory).
        device: store a copy on this device (e.g. ``"cpu"`` to free accelerator memory).

    Example:
        >>> import torch
        >>> CaptureSpec(dtype=torch.float16).keep_grad
        False
    """

    keep_grad: bool = False
    dtype: torch.dtype | None = None
    device: str | torch.device | None = None

    def __post_init__(self) -> None:
        example = "CaptureSpec(keep_grad=False, dtype=torch.float16, device='cpu')"
        check_bool("keep_grad", self.keep_grad, example)
        if self.dtype is not None and not isinstance(self.dtype, torch.dtype):
            fail("dtype", self.dtype, "a torch.dtype or None", example, wrong_type=True)
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError):
                fail("device", self.device, "a device ('cpu', 'cuda:0', a torch.device) or None", example, wrong_type=True)


@dataclass(slots=True, eq=False)
class RecordContext:
    """One event of a forward pass, as a ``keep_op`` predicate sees it.

    Attributes:
        kind: ``"op"`` (a tensor produced by a torch operation) or ``"module"`` (a tensor
            returned by a submodule call).
        label: the online label. Ops: ``{layer_type}_{count}``, counting every op of that
            type in execution order within the rollout (``relu_3`` is the third ReLU run).
            For a model without loops this equals the ``ModelLog``'s short label
            (``log["relu_3"]``); in a loop every pass counts, while the log counts layers.
            An in-place op on a view (``y[0].zero_()``) is two events, as in the log:
            the view, then its base (``output_index`` 1), each counted.
            Modules: ``{address}:{pass}`` (``"encoder.fc:2"``), with ``[i]`` appended for
            the i-th tensor when a call returns several.
        layer_type: op type (``"relu"``, ``"linear"``) or lowercased module class.
        func_name: the torch function called (ops) or the module class (modules).
        module_address: innermost module running the op, or the module that returned
            the tensor (``""`` for ops outside any submodule).
        module_class: class name of that module (``""`` when none).
        pass_num: how many times that module has been called so far in the rollout.
        shape, dtype, device, requires_grad: describe the tensor.
        index: event number within the rollout (0-based).
        output_index: position of the tensor among the call's tensor outputs.
        rollout: rollout number (0-based) within the recorder.
        history: the most recent earlier events of the rollout, oldest first (their own
            ``history`` is empty), so "a ReLU right after a conv" is
            ``ctx.history and ctx.history[-1].layer_type == "conv2d"``.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
        >>> events = lt.fastlog.dry_run(model, torch.ones(1, 3))
        >>> [(e.kind, e.label) for e in events]
        [('op', 'linear_1'), ('module', '0:1'), ('op', 'relu_1'), ('module', '1:1')]
    """

    kind: str
    label: str
    layer_type: str
    func_name: str
    module_address: str
    module_class: str
    pass_num: int
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    requires_grad: bool
    index: int
    output_index: int
    rollout: int
    history: Sequence[RecordContext] = field(default=_NO_HISTORY, repr=False)

    def describe(self) -> dict[str, Any]:
        """The event as plain JSON-ready values (no history).

        Example:
            >>> import torch, lens_train as lt
            >>> ctx = lt.fastlog.dry_run(torch.nn.ReLU(), torch.ones(2))[0]
            >>> ctx.describe()["label"], ctx.describe()["shape"]
            ('relu_1', [2])
        """
        return {
            "kind": self.kind, "label": self.label, "layer_type": self.layer_type, "func_name": self.func_name,
            "module_address": self.module_address, "module_class": self.module_class, "pass_num": self.pass_num,
            "shape": [int(s) for s in self.shape], "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device), "requires_grad": self.requires_grad, "index": self.index,
            "output_index": self.output_index, "rollout": self.rollout,
        }

    @classmethod
    def from_description(cls, d: dict[str, Any]) -> RecordContext:
        """Inverse of :meth:`describe` (used when reading recordings back from disk).

        Example:
            >>> import torch, lens_train as lt
            >>> ctx = lt.fastlog.dry_run(torch.nn.ReLU(), torch.ones(2))[0]
            >>> RecordContext.from_description(ctx.describe()).dtype
            torch.float32
        """
        fields = dict(d)
        fields["shape"] = tuple(fields["shape"])
        fields["dtype"] = getattr(torch, fields["dtype"])
        fields["device"] = torch.device(fields["device"])
        return cls(**fields)

    def __str__(self) -> str:
        where = f" in {self.module_address or '<model>'} ({self.module_class}) call {self.pass_num}" if self.module_class else ""
        shape = "x".join(str(s) for s in self.shape) or "scalar"
        return f"[{self.index}] {self.kind} {self.label}{where}: {shape} {str(self.dtype).removeprefix('torch.')}"
