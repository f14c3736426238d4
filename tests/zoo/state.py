"""Cases with randomness and state: dropout, BatchNorm, buffers changed during forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import zoo
from .tensor_ops import Lambda, x34


def _train(model: nn.Module) -> nn.Module:
    return model.train()


zoo("dropout_train")(lambda: (_train(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))), x34()))
zoo("dropout_functional_train")(lambda: (Lambda(lambda m, x: F.dropout(x, 0.3, training=True) + F.alpha_dropout(x, 0.2, True)), x34()))
zoo("dropout2d_train")(lambda: (_train(nn.Sequential(nn.Conv2d(2, 4, 3), nn.Dropout2d(0.5))), torch.randn(2, 2, 5, 5)))
zoo("dropout_eval")(lambda: (nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5)).eval(), x34()))
zoo("batchnorm_train")(lambda: (_train(nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())), torch.randn(4, 2, 6, 6)))
zoo("batchnorm_eval")(lambda: (nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)).eval(), x34()))


class BatchNormLoop(nn.Module):
    """One BatchNorm applied three times: its running stats change between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4, momentum=0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.bn(self.fc(x))
        return x + self.bn.running_mean


class ReassignedBuffer(nn.Module):
    """An exponential moving average stored by reassigning the buffer (a new tensor each call)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("ema", torch.zeros(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.ema = self.ema * 0.9 + x.mean(0) * 0.1
        return x - self.ema


class InplaceBuffer(nn.Module):
    """A step counter buffer incremented in place, then used."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        y = x * self.steps
        self.steps.add_(1)
        return y + self.steps


zoo("batchnorm_weight_shared_loop")(lambda: (_train(BatchNormLoop()), torch.randn(5, 4)))
zoo("buffer_reassigned")(lambda: (ReassignedBuffer(), x34()))
zoo("buffer_inplace_counter")(lambda: (InplaceBuffer(), x34()))
zoo("norm_layers")(lambda: (nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4, affine=True),
                                          nn.Flatten(), nn.LayerNorm(64)), torch.randn(2, 2, 6, 6)))
zoo("random_ops")(lambda: (Lambda(lambda m, x: x * torch.bernoulli(torch.full_like(x, 0.5)) + torch.randperm(4).float()
                                  + torch.multinomial(x.softmax(-1), 2).float().sum()), x34()))
