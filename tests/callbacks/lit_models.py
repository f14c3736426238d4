"""Tiny LightningModules, data and trainers shared by the callback tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLASSES = 3
FEATURES = 8


class Net(nn.Module):
    """Two hidden blocks and a head: taps on ``layer1``/``layer2``."""

    def __init__(self, batchnorm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        norm = [nn.BatchNorm1d(16)] if batchnorm else []
        drop = [nn.Dropout(dropout)] if dropout else []
        self.layer1 = nn.Sequential(nn.Linear(FEATURES, 16), *norm, nn.ReLU(), *drop)
        self.layer2 = nn.Sequential(nn.Linear(16, 12), nn.ReLU())
        self.head = nn.Linear(12, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layer2(self.layer1(x)))


class LitNet(pl.LightningModule):
    """A plain classifier; ``extra_loss`` lets a test hand-write what a callback adds."""

    def __init__(self, lr: float = 0.1, batchnorm: bool = False, return_dict: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = Net(batchnorm, dropout)
        self.lr = lr
        self.return_dict = return_dict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return {"loss": loss} if self.return_dict else loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def test_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("test_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def dataset(n: int = 64, seed: int = 0) -> TensorDataset:
    """Linearly separable-ish 3-class data, always the same."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    w = torch.randn(FEATURES, NUM_CLASSES, generator=g)
    return TensorDataset(x, (x @ w).argmax(dim=1))


def loaders(batch_size: int = 16, n: int = 64) -> tuple[DataLoader, DataLoader]:
    return (DataLoader(dataset(n, 0), batch_size=batch_size, shuffle=False),
            DataLoader(dataset(32, 1), batch_size=batch_size, shuffle=False))


def trainer(tmp_path: Path, callbacks: list | None = None, max_epochs: int = 2, logger: Any = True, **kw: Any) -> pl.Trainer:
    """A quiet CPU trainer writing into ``tmp_path``."""
    if logger is True:
        logger = CSVLogger(tmp_path, name="run")
    options = dict(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False,
                   enable_model_summary=False, logger=logger, enable_checkpointing=False,
                   default_root_dir=tmp_path, num_sanity_val_steps=0, log_every_n_steps=1)
    options.update(kw)
    return pl.Trainer(callbacks=callbacks or [], **options)


def fit(tmp_path: Path, module: pl.LightningModule, callbacks: list | None = None, **kw: Any) -> pl.Trainer:
    train, val = loaders()
    t = trainer(tmp_path, callbacks, **kw)
    t.fit(module, train, val)
    return t


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(a: nn.Module | dict, b: nn.Module | dict, atol: float = 1e-6) -> None:
    wa = a if isinstance(a, dict) else weights(a)
    wb = b if isinstance(b, dict) else weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=atol), (k, (wa[k].float() - wb[k].float()).abs().max())
