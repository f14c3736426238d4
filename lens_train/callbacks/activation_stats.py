"""``ActivationStatsCallback``: per-layer statistics of the training activations."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from ..arguments import check_bool
from ..errors import ArgumentTypeError, InvalidArgumentError, suggestion_text
from ._base import StepContext, TapCallback
from ._session import LensSession
from ._shared import BatchGetter


def dead_fraction(t: torch.Tensor) -> torch.Tensor:
    """Fraction of units (non-batch positions) that are <= 0 for every example of the batch.

    Example:
        >>> float(dead_fraction(torch.tensor([[1.0, -1.0, 0.0], [2.0, -3.0, 1.0]])))
        0.3333333432674408
    """
    flat = t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(-1, 1)
    return (flat.amax(dim=0) <= 0).float().mean()


def _norm(t: torch.Tensor) -> torch.Tensor:
    # The mean per-example L2 norm does not grow with the batch size.
    return t.reshape(t.shape[0], -1).norm(dim=1).mean() if t.dim() > 1 else t.norm()


STATS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "mean": torch.mean,
    "std": lambda t: t.std() if t.numel() > 1 else torch.zeros((), dtype=t.dtype, device=t.device),
    "norm": _norm,
    "abs_mean": lambda t: t.abs().mean(),
    "min": torch.amin,
    "max": torch.amax,
    "zero_fraction": lambda t: (t == 0).float().mean(),
    "dead_fraction": dead_fraction,
}


def activation_stats(t: torch.Tensor, stats: Sequence[str] = ("mean", "std", "norm", "dead_fraction")) -> dict[str, float]:
    """The named statistics of one (detached, float32) activation.

    Example:
        >>> activation_stats(torch.tensor([[1.0, -1.0], [3.0, -1.0]]), ("mean", "dead_fraction"))
        {'mean': 0.5, 'dead_fraction': 0.5}
    """
    x = t.detach().float()
    return {name: float(STATS[name](x)) for name in stats}


def check_stats(stats: Sequence[str]) -> tuple[str, ...]:
    """Validate statistic names, raising with the closest known names."""
    if isinstance(stats, str):
        stats = (stats,)
    for name in stats:
        if name not in STATS:
            raise InvalidArgumentError(
                f"Unknown statistic {name!r} in stats." + suggestion_text(str(name), STATS, f"{sorted(STATS)}")
            )
    return tuple(stats)


class ActivationStatsCallback(TapCallback):
    """Log per-layer statistics of the training activations (and their gradients) to every logger.

    Every ``every_n_steps`` optimizer steps, the tapped activations of the current training
    step are summarized as ``stats/<layer>/<stat>`` (and ``stats/<layer>/grad_<stat>``
    after backward when ``save_gradients=True``). The taps come from the shared
    per-step capture, so this costs nothing on the other steps.

    Args:
        layers: module addresses, op labels, globs or predicates (as ``lt.Taps``).
        every_n_steps: log every this many optimizer steps (and at step 0).
        stats: names from ``mean``, ``std``, ``norm``, ``abs_mean``, ``min``, ``max``,
            ``zero_fraction``, ``dead_fraction``.
        save_gradients: also log the statistics of the activations' gradients.
        batch_to_input: how to find the model input in a batch (see ``LensCallback``).

    Example:
        >>> cb = ActivationStatsCallback(["layer1"], every_n_steps=10, stats=("mean", "dead_fraction"))
        >>> cb.tap_layers(), cb.stats
        (['layer1'], ('mean', 'dead_fraction'))
    """

    def __init__(self, layers: str | list[Any], every_n_steps: int = 50,
                 stats: Sequence[str] = ("mean", "std", "norm", "dead_fraction"), save_gradients: bool = False,
                 batch_to_input: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input)
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise InvalidArgumentError(
                f"every_n_steps must be a positive int, got {every_n_steps!r}. Example: every_n_steps=50."
            )
        if not (isinstance(layers, str) or callable(layers) or isinstance(layers, (list, tuple))) or not layers:
            raise ArgumentTypeError(f"layers must be a name, a selector function or a non-empty list of them, got {layers!r:.60}. "
                                    "Example: ActivationStatsCallback(layers=['layer1', 'layer2']).")
        self.layers = [layers] if isinstance(layers, str) or callable(layers) else list(layers)
        check_bool("save_gradients", save_gradients, "ActivationStatsCallback(['layer1'], save_gradients=True)")
        self.every_n_steps = every_n_steps
        self.stats = check_stats(stats)
        self.save_gradients = bool(save_gradients)
        self._pending_step: int | None = None
        self._logged_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=[str(x) for x in self.layers], every_n_steps=self.every_n_steps)

    @override
    def tap_layers(self) -> list[Any]:
        return self.layers

    def _due(self, ctx: StepContext) -> bool:
        # With gradient accumulation several batches share a global_step: log the first.
        return ctx.step % self.every_n_steps == 0 and ctx.step != self._logged_step

    @override
    def after_train_step(self, ctx: StepContext) -> None:
        if ctx.trainer.sanity_checking or not self._due(ctx):
            return
        self._run_log_stats(ctx)

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.save_gradients or self._pending_step is None:
            return
        self._run_log_grad_stats(trainer, pl_module)

    def _run_log_stats(self, ctx: StepContext) -> None:
        self._logged_step = ctx.step
        metrics = {}
        for name, value in _tensor_items(ctx.taps, self.layers):
            for stat, v in activation_stats(value, self.stats).items():
                metrics[f"stats/{name}/{stat}"] = v
        self._log(ctx.module, metrics)
        self._pending_step = ctx.step if self.save_gradients else None

    def _run_log_grad_stats(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending_step = None
        session = LensSession.of(pl_module)
        if session is None or session.taps is None:
            return
        metrics = {}
        for name, _ in _tensor_items(session.taps, self.layers):
            grad = session.taps.grad(name)
            if isinstance(grad, torch.Tensor):
                for stat, v in activation_stats(grad, [s for s in self.stats if s != "dead_fraction"]).items():
                    metrics[f"stats/{name}/grad_{stat}"] = v
        self._log(pl_module, metrics)

    def _log(self, module: pl.LightningModule, metrics: dict[str, float]) -> None:
        # Straight to the loggers at this step: self.log would repeat an on_step value at
        # every later logging step until it is logged again.
        trainer = module.trainer
        if not metrics:
            return
        if trainer.world_size > 1:
            values = trainer.strategy.reduce(torch.tensor(list(metrics.values()), device=module.device), reduce_op="mean")
            metrics = dict(zip(metrics, values.tolist()))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        # Also the latest values in trainer.callback_metrics, for EarlyStopping/ModelCheckpoint
        # (logger=False: the loggers got this step's values above, once).
        for name, value in metrics.items():
            module.log(name, value, on_step=True, on_epoch=False, logger=False, batch_size=1)


def _tensor_items(taps: Any, layers: list[Any]) -> list[tuple[str, torch.Tensor]]:
    """This callback's floating-point tapped tensors; globs and predicates give each match."""
    out: list[tuple[str, torch.Tensor]] = []
    for layer in layers:
        value = taps.get(layer)
        found = value.items() if isinstance(value, dict) else [(layer if isinstance(layer, str) else None, value)]
        for name, t in found:
            if name is not None and isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0:
                out.append((str(name), t))
    return out
