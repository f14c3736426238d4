"""Keep every logged scalar in memory, so plots and the summary need no particular logger."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

# Metrics whose step values make a training curve: the task loss and the lens terms.
_STEP_PREFIXES = ("train/loss", "aux/", "lens/", "distill/", "kd/")


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class MetricsHistory(Callback):
    """Records ``trainer.callback_metrics``: loss-like values each step, everything each epoch.

    ``epochs`` is a list of ``{"epoch": e, "step": s, <metric>: value}`` rows (one per
    training epoch, taken after validation); ``steps`` lists ``{"step": s, <loss>: value}``
    for the task loss and every lens term (``aux/*``, ``lens/*``, ``distill/*``).

    Example:
        >>> history = MetricsHistory()
        >>> history.epochs, history.steps
        ([], [])
        >>> history.series("val/acc")
        ([], [])
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.steps: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Store the step values of the task loss and lens terms."""
        row = {k.removesuffix("_step"): v for k, v in _scalars(trainer.callback_metrics).items()
               if k.startswith(_STEP_PREFIXES) and not k.endswith("_epoch")}
        if row:
            self.steps.append({"step": float(trainer.global_step), **row})

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Store every scalar known at the end of the epoch (validation included)."""
        row = {k.removesuffix("_epoch"): v for k, v in _scalars(trainer.callback_metrics).items() if not k.endswith("_step")}
        self.epochs.append({"epoch": float(trainer.current_epoch), "step": float(trainer.global_step), **row})

    def series(self, key: str, per: str = "epoch") -> tuple[list[float], list[float]]:
        """``(x, values)`` of one metric, ``x`` being epochs (``per="epoch"``) or steps (``per="step"``)."""
        rows = self.epochs if per == "epoch" else self.steps
        x_key = "epoch" if per == "epoch" else "step"
        pairs = [(r[x_key], r[key]) for r in rows if key in r]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def keys(self, per: str = "epoch") -> list[str]:
        """Every metric name recorded at least once, in first-seen order."""
        rows = self.epochs if per == "epoch" else self.steps
        return list(dict.fromkeys(k for r in rows for k in r if k not in ("epoch", "step")))

    def last(self) -> dict[str, float]:
        """The metrics of the last recorded epoch (empty before the first)."""
        return dict(self.epochs[-1]) if self.epochs else {}
