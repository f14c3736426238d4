"""``CausalImportanceCallback``: how much each layer matters, measured by ablating it, over training."""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.apply_func import move_data_to_device
from typing_extensions import override

from ..arguments import check_names
from ..errors import InvalidArgumentError
from ..train.edits import as_edit
from ..train.importance import layer_importance, resolve_metric
from ._base import LensCallback
from ._images import log_image
from ._reference import load_reference, save_reference
from ._shared import BatchGetter, first_batch, model_inputs, refuse_sharded, run_dir, unwrap


class CausalImportanceCallback(LensCallback):
    """Every N epochs, ablate each chosen layer on a fixed batch and log how much worse the metric gets.

    The batch is the one snapshots use (the first validation batch, else the first
    training batch, or ``reference_batch``), stored once with its targets in
    ``<run dir>/importance/``. Each measurement runs after the epoch's last training
    batch (before any checkpoint of that epoch), on the unwrapped module in eval mode
    under ``no_grad`` with buffers, flags and RNG restored
    (:func:`~lens_train.train.importance.layer_importance`): one forward pass per layer
    with that layer replaced through ``lt.Taps(edits=..., during="all")``. It logs
    ``importance/<layer>`` (``baseline - ablated`` for accuracy, ``ablated - baseline``
    for a loss: larger means the model relies on the layer more) and
    ``importance/baseline``, keeps the history in its checkpoint state (a resumed run
    continues it), and draws layers x epochs as a heat map in
    ``<run dir>/plots/importance.png`` (next to the probe accuracy plot), also sent to every
    logger that takes images (``lens/importance``).

    Args:
        layers: layer names as ``lt.Taps`` accepts them (modules, op labels).
        every_n_epochs: measure after every this many epochs.
        ablation: ``"mean"`` (batch mean, the usual choice: it keeps the layer's typical
            scale), ``"zero"``, or any ``lt.edits`` spec.
        metric: ``"accuracy"``, ``"loss"`` (cross-entropy) or a callable
            ``(output, targets) -> number``.
        higher_is_better: the direction of a callable metric.
        reference_batch: a batch (as the data loader yields it) to measure on.
        batch_to_input: how to find the model input in a batch.
        batch_to_targets: how to find the targets in a batch.

    Example:
        >>> cb = CausalImportanceCallback(layers=["blocks.0", "blocks.1"], every_n_epochs=2, ablation="zero")
        >>> cb.layers, cb.history
        (['blocks.0', 'blocks.1'], [])
    """

    def __init__(self, layers: str | list[str], every_n_epochs: int = 1, ablation: Any = "mean",
                 metric: str | Callable[[Any, Any], Any] = "accuracy", higher_is_better: bool | None = None,
                 reference_batch: Any = None, batch_to_input: BatchGetter = None,
                 batch_to_targets: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input, batch_to_targets=batch_to_targets)
        check_names("layers", layers, "CausalImportanceCallback(layers=['blocks.0', 'blocks.1'])")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise InvalidArgumentError(f"every_n_epochs must be a positive int, got {every_n_epochs!r}. "
                                       "Example: CausalImportanceCallback(layers=['blocks.0'], every_n_epochs=2).")
        resolve_metric(metric, higher_is_better)  # checked now, not after the first epoch
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        self.every_n_epochs = every_n_epochs
        self.ablation = ablation
        self._edit = as_edit(ablation)
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.reference_batch = reference_batch
        self.history: list[dict[str, Any]] = []
        self.directory: Path | None = None
        self._reference: tuple[Any, Any] | None = None
        self._fitting = True
        self._trainer: weakref.ref[pl.Trainer] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, metric=str(self.metric), ablation=str(self.ablation))

    # -- hooks ----------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        if self._fitting:
            self.directory = run_dir(trainer)  # every rank: log_dir broadcasts
            self._trainer = weakref.ref(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_sharded(self, trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self._due(trainer):
            return
        self._run_measure(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"version": 1, "history": [dict(entry) for entry in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fitting:  # trainer.test(ckpt_path=...) measures nothing and keeps the list as it is
            self.history = [dict(entry) for entry in state_dict.get("history", [])]

    # -- measuring ------------------------------------------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        epoch = trainer.current_epoch
        if self.history and self.history[-1]["epoch"] == epoch:
            return False
        return bool(trainer.is_last_batch) and (epoch + 1) % self.every_n_epochs == 0

    def _run_measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        inputs, targets = move_data_to_device(self._reference_batch(trainer), pl_module.device)
        module = unwrap(pl_module)
        args, kwargs = model_inputs(module, inputs)
        base, drops = layer_importance(module, args, targets, self.layers, self._edit, self.metric,
                                       self.higher_is_better, input_kwargs=kwargs)
        entry = {"epoch": trainer.current_epoch, "step": trainer.global_step, "baseline": base,
                 "importance": {str(k): v for k, v in drops.items()}}
        self.history.append(entry)
        metrics = {f"importance/{k}": v for k, v in entry["importance"].items()}
        pl_module.log_dict({**metrics, "importance/baseline": base}, on_step=False, on_epoch=True,
                           sync_dist=trainer.world_size > 1)
        if trainer.is_global_zero:
            self._draw(trainer)
        return entry

    def _draw(self, trainer: pl.Trainer) -> None:
        png = plot_importance(self.history, self.directory / "plots" / "importance.png", self._metric_name())
        log_image(trainer.loggers, "lens/importance", png, step=trainer.global_step)

    def _metric_name(self) -> str:
        name = self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "metric")
        change = "drop" if resolve_metric(self.metric, self.higher_is_better)[1] else "rise"
        return f"{name} {change} when ablated ({getattr(self._edit, 'name', 'edit')})"

    def _reference_batch(self, trainer: pl.Trainer) -> tuple[Any, Any]:
        if self._reference is not None:
            return self._reference
        folder = self.directory / "importance"
        paths = folder / "reference_input.safetensors", folder / "reference_targets.safetensors"
        if not all(p.is_file() for p in paths):  # a resumed run in the same directory reuses the stored batch
            batch = self.reference_batch if self.reference_batch is not None else self._first_batch(trainer)
            if trainer.is_global_zero:
                save_reference(self.batch_input(batch), paths[0])
                save_reference(self.batch_targets(batch), paths[1])
            self._reference = self.batch_input(batch), self.batch_targets(batch)
        else:
            self._reference = load_reference(paths[0]), load_reference(paths[1])
        return self._reference

    def _first_batch(self, trainer: pl.Trainer) -> Any:
        for stage in ("val", "train"):
            batch = first_batch(trainer, stage)
            if batch is not None:
                return batch
        raise InvalidArgumentError("CausalImportanceCallback found no validation or training batch to measure on. "
                                   "Pass reference_batch=(inputs, targets).")


def plot_importance(history: Sequence[dict[str, Any]], path: str | Path, label: str = "importance") -> Path:
    """Heat map of layer importance: one row per layer, one column per measured epoch.

    Example:
        >>> import tempfile, os
        >>> h = [{"epoch": 0, "importance": {"blocks.0": 0.1, "blocks.1": 0.5}},
        ...      {"epoch": 1, "importance": {"blocks.0": 0.2, "blocks.1": 0.6}}]
        >>> os.path.getsize(plot_importance(h, tempfile.mkdtemp() + "/importance.png")) > 1000
        True
    """
    from matplotlib.figure import Figure

    layers = list(dict.fromkeys(k for entry in history for k in entry["importance"]))
    grid = [[entry["importance"].get(layer, math.nan) for entry in history] for layer in layers]
    fig = Figure(figsize=(max(4.0, 1.0 + 0.5 * len(history)), max(2.5, 1.2 + 0.4 * len(layers))), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(layers)), layers)
    ax.set_xticks(range(len(history)), [str(entry["epoch"]) for entry in history])
    ax.set(xlabel="epoch", ylabel="layer", title="Causal layer importance")
    fig.colorbar(image, ax=ax, label=label)
    low, high = image.get_clim()
    for row, values in enumerate(grid):
        for col, value in enumerate(values):
            if len(history) <= 20 and not math.isnan(value):  # dark text on the bright end of viridis
                color = "black" if value > (low + high) / 2 else "white"
                ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7, color=color)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out
