"""The LightningModule of the experiments: an unmodified, ordinary image classifier.

It knows nothing about lens_train: the lens callbacks add auxiliary losses, probes,
snapshots and graphs from outside, which is the point the experiments demonstrate.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..errors import InvalidArgumentError


class Classifier(L.LightningModule):
    """Cross-entropy classification of ``(x, y)`` batches with AdamW and cosine decay.

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss`` and
    ``test/acc``. The network is a constructor argument (``net``), so any model works;
    it is excluded from the saved hyperparameters, so pass it again to
    ``Classifier.load_from_checkpoint(path, net=...)``.

    Args:
        net: the network; maps a batch of inputs to ``(batch, num_classes)`` logits.
        num_classes: number of classes.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        cosine_schedule: decay the learning rate to zero over ``trainer.estimated_stepping_batches``.

    Example:
        >>> from lens_train.experiments.models import DigitsMLP
        >>> module = Classifier(DigitsMLP(hidden=[16, 16]), num_classes=10)
        >>> module(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, net: nn.Module, num_classes: int = 10, lr: float = 3e-3, weight_decay: float = 1e-4,
                 cosine_schedule: bool = True) -> None:
        super().__init__()
        if lr <= 0:
            raise InvalidArgumentError(f"lr must be positive, got {lr!r}. Example: model.lr=3e-3.")
        self.save_hyperparameters(ignore=["net"])
        self.net = net
        self.metrics = nn.ModuleDict({
            stage: MulticlassAccuracy(num_classes=num_classes, average="micro") for stage in ("train_acc", "val_acc", "test_acc")
        })

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of ``net``."""
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Cross-entropy loss of one batch (logged as ``train/loss``)."""
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Validation loss and accuracy."""
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Test loss and accuracy."""
        return self._step(batch, "test")

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        metric = self.metrics[f"{stage}_acc"]
        metric(logits, y)
        # sync_dist averages the epoch value over DDP ranks (a no-op on one device).
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True)
        self.log(f"{stage}/acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW over every parameter of the module, with optional cosine decay per step."""
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if not self.hparams.cosine_schedule:
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
