"""``AuxiliaryLossCallback``: auxiliary losses on tapped layers, added to the step's loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from ..errors import InvalidArgumentError
from ..train.auxiliary import AuxiliaryLoss
from ..train.losses import DeepSupervision
from ._base import StepContext, TapCallback
from ._shared import BatchGetter, model_inputs


class AuxiliaryLossCallback(TapCallback):
    """Add weighted auxiliary terms (``lt.AuxiliaryLoss``) to the loss ``training_step`` returns.

    The module is left unmodified: the callback wraps its ``training_step`` for the fit
    (see :mod:`lens_train.callbacks._session`), runs it inside the shared taps, and adds
    the terms to the returned loss (a tensor, or a dict's ``"loss"``). The user's own
    metrics stay as they logged them; the callback logs ``lens/total_loss`` and each term
    (``aux/layer2``), and in validation and test ``val/aux/layer2`` and ``test/aux/layer2``
    (never added to any loss), also in ``trainer.validate``/``trainer.test`` on their own.
    A ``deep_supervision`` head's accuracy is logged there too (``val/aux/layer2/acc``).

    Auxiliary heads are built from one example input (``example_input_array`` or the first
    training batch) before ``configure_optimizers`` runs, join the user's optimizer through
    ``self.parameters()`` (or a parameter group of their own), and are saved in this
    callback's state, so the module's own checkpoint stays strict.

    Args:
        losses: ``{layer: loss}``; built-ins from ``lt.losses`` or callables ``(activation, targets) -> scalar``.
        weights: per-layer multipliers.
        weight: global multiplier.
        schedule: ``step -> multiplier`` (or ``{layer: schedule}``), driven by ``trainer.global_step``.
        select: picks one element of a structured layer output (see ``lt.AuxiliaryLoss``).
        batch_to_input: how to find the model input in a batch.
        batch_to_targets: how to find the targets in a batch.

    Example:
        >>> import lens_train as lt
        >>> cb = AuxiliaryLossCallback({"layer2": lt.losses.deep_supervision(num_classes=10)}, weight=0.3)
        >>> cb.tap_layers(), cb.aux.weight
        (['layer2'], 0.3)
    """

    changes_loss = True

    def __init__(self, losses: Mapping[str, Any], weights: Mapping[str, float] | None = None, weight: float = 1.0,
                 schedule: Callable[[int], float] | Mapping[str, Callable[[int], float]] | None = None,
                 select: Any = None, batch_to_input: BatchGetter = None, batch_to_targets: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input, batch_to_targets=batch_to_targets)
        self.aux = AuxiliaryLoss(losses, weights=weights, weight=weight, schedule=schedule, select=select)
        self._pending: dict[str, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.aux.layers)

    @override
    def tap_layers(self) -> list[Any]:
        return list(self.aux.layers)

    @override
    def build(self, module: pl.LightningModule, example: Any) -> None:
        if not self.aux.is_built:
            args, kwargs = model_inputs(module, example)
            self.aux.setup(module, args, kwargs)
        self.aux.to(module.device)
        if self._pending is not None:
            self.aux.load_state_dict(self._pending)
            self._pending = None

    @override
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.aux.parameters())

    @override
    def train_terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        targets, missing = self._targets(ctx.batch)
        try:
            _, terms = self.aux(ctx.taps, targets=targets, step=ctx.step)
        except InvalidArgumentError:
            if missing is not None:  # the loss needed targets the batch did not give
                raise missing from None
            raise
        return {f"aux/{layer}": term for layer, term in terms.items()}

    @override
    def eval_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        terms = self.train_terms(ctx)
        for name, term in zip(self.aux.term_names, self.aux.terms):
            accuracy = getattr(term, "last_accuracy", None)
            if isinstance(term, DeepSupervision) and accuracy is not None:
                terms[f"aux/{name}/acc"] = accuracy
        return terms

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"aux": self.aux.state_dict() if self.aux.is_built else self._pending}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before configure_optimizers builds the heads.
        state = state_dict.get("aux")
        self.trained = self.trained or state is not None
        if state is not None and self.aux.is_built:
            self.aux.load_state_dict(state)
        else:
            self._pending = state

    def _targets(self, batch: Any) -> tuple[Any, InvalidArgumentError | None]:
        # Activity losses need no targets, so a batch without them is fine until a loss asks.
        try:
            return self.batch_targets(batch), None
        except InvalidArgumentError as err:
            return None, err
