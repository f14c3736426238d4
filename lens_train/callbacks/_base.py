"""The base classes of the lens callbacks.

:class:`LensCallback` unpacks batches. :class:`TapCallback` is a callback that reads
graph-connected taps of the training step; every tap callback on one module joins one
:class:`~lens_train.callbacks._session.LensSession`, which runs one tap capture per step
for the union of their layers and is the only place that touches ``training_step``.

Tap callbacks also take part in ``trainer.validate`` and ``trainer.test`` on their own:
their terms are logged as ``val/...`` or ``test/...`` (never added to a loss) and probes
are measured, from the state of a previous fit or of the checkpoint given as ``ckpt_path``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ..errors import InvalidArgumentError
from ._session import LensSession, StepContext
from ._shared import BatchGetter, average_gradients, default_batch_to_input, default_batch_to_targets, make_getter

# The Trainer stages the tap callbacks take part in (``predict`` runs no lens work).
STAGES = ("fit", "validate", "test")


class LensCallback(Callback):
    """A callback that reads model inputs and targets from batches.

    Args:
        batch_to_input: how to get the model input from a batch (see
            :mod:`lens_train.callbacks._shared`): ``None``, an index, a key or a function.
        batch_to_targets: the same for the targets.

    Example:
        >>> import torch
        >>> cb = LensCallback(batch_to_input="img", batch_to_targets="cls")
        >>> cb.batch_input({"img": torch.ones(1), "cls": 3}).shape, cb.batch_targets({"img": 0, "cls": 3})
        (torch.Size([1]), 3)
    """

    def __init__(self, batch_to_input: BatchGetter = None, batch_to_targets: BatchGetter = None) -> None:
        self._get_input = make_getter(batch_to_input, default_batch_to_input, "batch_to_input")
        self._get_targets = make_getter(batch_to_targets, default_batch_to_targets, "batch_to_targets")

    def batch_input(self, batch: Any) -> Any:
        """The model input of ``batch``."""
        return self._get_input(batch)

    def batch_targets(self, batch: Any) -> Any:
        """The targets of ``batch``."""
        return self._get_targets(batch)


class TapCallback(LensCallback):
    """A callback that reads the taps of each training step (through the shared session).

    Subclasses say which layers they need (:meth:`tap_layers`), build their trainable
    parts in :meth:`build`, and return weighted loss terms from :meth:`train_terms`.

    Example:
        >>> class Noop(TapCallback):
        ...     def tap_layers(self): return ["0"]
        >>> Noop().tap_layers()
        ['0']
    """

    changes_loss: ClassVar[bool] = False
    save_gradients: bool = False
    # Set by a training step of a fit, or by a checkpoint's state (subclasses' load_state_dict).
    trained: bool = False

    def tap_layers(self) -> list[Any]:
        """Layers this callback needs tapped in every step."""
        return []

    def build(self, module: pl.LightningModule, example: Any) -> None:
        """Create trainable parts from one example input (before the optimizer exists)."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters the user's optimizer must train (auxiliary heads, adapters)."""
        return []

    def train_terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Weighted loss terms added to the step's loss, keyed by their log name."""
        return {}

    def after_train_step(self, ctx: StepContext) -> None:
        """Work after the step that does not change the loss (probes, statistics)."""

    def eval_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Terms to log in validation or test (prefixed ``val/`` or ``test/``), never added to any loss."""
        return {}

    def ready_to_evaluate(self) -> bool:
        """Whether ``trainer.validate``/``trainer.test`` alone can use this callback's trained parts.

        False when they were neither trained by a fit nor loaded from a checkpoint, so
        measuring them (random auxiliary heads) would mean nothing.
        """
        return self.trained or not self.trainable_parameters()

    # -- Lightning hooks ---------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in STAGES:
            return
        self._run_join(trainer, pl_module, str(getattr(stage, "value", stage)))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage not in STAGES:
            return
        self._run_leave(pl_module)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Lightning skips teardown hooks when fit raises; the module must not stay wrapped.
        self._run_leave(pl_module)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if trainer.world_size <= 1 or not self.trainable_parameters():
            return
        self._run_sync_grads(trainer)

    def _run_join(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str = "fit") -> None:
        if stage == "fit" and self.changes_loss and not pl_module.automatic_optimization:
            raise InvalidArgumentError(
                f"{type(self).__name__} adds terms to the loss that training_step returns, but "
                f"{type(pl_module).__name__} uses manual optimization (automatic_optimization=False), where "
                "Lightning ignores that loss. Use the LensModule mixin instead: class MyModule(lt.LensModule, "
                "L.LightningModule), declare the taps with self.configure_lens(layers=[...]) and add "
                "aux(self.taps, targets=y, step=self.global_step) to the loss you pass to manual_backward."
            )
        LensSession.join(self, trainer, pl_module, stage)

    def _run_leave(self, pl_module: pl.LightningModule) -> None:
        LensSession.leave(self, pl_module)

    def _run_sync_grads(self, trainer: pl.Trainer) -> None:
        average_gradients(self.trainable_parameters(), trainer.strategy)
