"""``ProbeCallback``: online linear probes on tapped layers, with their own optimizer."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from ..train.probes import Probes
from ._base import StepContext, TapCallback
from ._shared import BatchGetter, average_gradients, model_inputs


class ProbeCallback(TapCallback):
    """Train one probe per layer on the detached taps of every training step.

    Probes are measured before each update (a fair training score) and trained by their
    own optimizer in the same step, with no second forward pass; validation and test only
    measure them. Each epoch logs ``probe/<layer>/<split>_acc`` (top-1),
    ``<split>_top5_acc`` (top-k, when ``top_k < num_classes``) and ``<split>_loss`` (the
    probe's mean cross-entropy) for ``train`` and ``val``, and ``trainer.test`` the same
    for ``test`` (regression: ``..._r2`` and ``..._mse``). Features are standardized
    (``BatchNorm1d`` without affine, see ``lt.train.probes.ProbeHead``), so one learning
    rate suits every layer; ``trainer.validate``/``trainer.test`` on their own measure the probes of a
    previous fit or of their ``ckpt_path``. Probe weights and optimizer state are in
    this callback's state, so a resumed run continues them exactly. Under DDP the probes'
    gradients are averaged across ranks, so every rank holds the same probes.

    Args:
        layers: tapped layer names (as ``lt.Taps`` accepts).
        num_classes: number of classes (classification).
        pool: ``"avg"``, ``"flatten"`` or a token index (see ``lt.Probes``).
        lr: learning rate of the probes' Adam optimizer.
        hidden: hidden width of an MLP probe (None: linear probes).
        standardize: standardize the features before each probe.
        top_k: also log top-k accuracy for this k.
        task: ``"classification"`` or ``"regression"``.
        num_outputs: regression target size.
        batch_to_input: how to find the model input in a batch.
        batch_to_targets: how to find the targets in a batch.

    Example:
        >>> cb = ProbeCallback(layers=["layer1", "layer2"], num_classes=10)
        >>> cb.tap_layers()
        ['layer1', 'layer2']
    """

    def __init__(self, layers: str | list[str], num_classes: int | None = None, pool: Any = "avg", lr: float = 1e-3,
                 hidden: int | None = None, standardize: bool = True, top_k: int = 5, task: str = "classification",
                 num_outputs: int = 1, batch_to_input: BatchGetter = None, batch_to_targets: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input, batch_to_targets=batch_to_targets)
        self.probes = Probes(layers, num_classes=num_classes, pool=pool, lr=lr, task=task, num_outputs=num_outputs,
                             hidden=hidden, standardize=standardize, top_k=top_k)
        self._pending: dict[str, Any] | None = None
        self._world_size = 1
        self._strategy: Any = None
        self._hooked: Any = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.probes.layers, task=self.probes.task)

    @override
    def tap_layers(self) -> list[Any]:
        return list(self.probes.layers)

    @override
    def build(self, module: pl.LightningModule, example: Any) -> None:
        if not self.probes.heads:
            args, kwargs = model_inputs(module, example)
            self.probes.setup(module, args, kwargs)
        if self._pending is not None:
            self.probes.load_state_dict(self._pending)
            self._pending = None
        trainer = module._trainer
        if trainer is not None:
            self._world_size, self._strategy = trainer.world_size, trainer.strategy
        self._hook_optimizer()

    @override
    def after_train_step(self, ctx: StepContext) -> None:
        device = ctx.module.device
        # The probes train in float32 whatever the step's autocast says.
        with torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type) else nullcontext():
            self.probes.update(ctx.taps, self.batch_targets(ctx.batch))

    @override
    def eval_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        self.probes.evaluate(ctx.taps, self.batch_targets(ctx.batch), split=ctx.stage)
        return {}

    @override
    def ready_to_evaluate(self) -> bool:
        return self.trained  # probes always have parameters of their own

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_log(pl_module, "train")

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self._run_log(pl_module, "val")

    @override
    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run_log(pl_module, "test")

    def _run_log(self, pl_module: pl.LightningModule, split: str) -> None:
        # torchmetrics syncs the counts across ranks inside compute(), on every rank.
        metrics = {}
        for layer, values in self.probes.compute_all(split).items():
            for name, value in values.items():
                short = name.replace("accuracy", "acc")
                metrics[f"probe/{layer}/{split}_{short}"] = value
        self.probes.reset(split)
        if metrics:
            # values are already identical on every rank; sync_dist only averages equal numbers
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=pl_module.trainer.world_size > 1)

    def _hook_optimizer(self) -> None:
        optimizer = self.probes.optimizer
        if self._world_size <= 1 or optimizer is None or self._hooked is optimizer:
            return
        optimizer.register_step_pre_hook(self._sync_grads)
        self._hooked = optimizer

    def _sync_grads(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        average_gradients([p for group in optimizer.param_groups for p in group["params"]], self._strategy)
        # The standardization's running statistics too, so every rank evaluates the same probes.
        stats = [b for b in self.probes.heads.buffers() if b.is_floating_point()]
        if stats:
            flat = self._strategy.reduce(torch.cat([b.reshape(-1) for b in stats]), reduce_op="mean")
            for b, value in zip(stats, flat.split([b.numel() for b in stats])):
                b.copy_(value.view_as(b))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probes": self.probes.state_dict() if self.probes.heads else self._pending}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before the first batch builds the probes on their device.
        state = state_dict.get("probes")
        self.trained = self.trained or state is not None
        if state is not None and self.probes.heads:
            self.probes.load_state_dict(state)
        else:
            self._pending = state
