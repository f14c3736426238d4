"""Small models whose graphs the visualization tests read (TorchLens' README examples)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DemoNetwork(nn.Module):
    """Every kind of node: input, module ops, plain ops, random tensor, buffer, output."""

    def __init__(self) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.fc = nn.Linear(5, 5)
        self.register_buffer("scale", torch.full((5,), 2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 1
        x = self.relu(x)
        x = self.fc(x)
        x = F.relu(x)
        x = x + torch.randn(x.shape)
        y = x**2
        x = x / y
        return x * self.scale


class SimpleRecurrent(nn.Module):
    """One Linear applied four times in a loop: a recurrent graph."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(4):
            x = self.fc(x)
            x = x + 1
            x = x * 2
        return x


class Conditional(nn.Module):
    """A Python ``if`` on a tensor: the condition decides which branch runs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 2
        else:
            x = x - 1
        return self.fc(x)


class Inception(nn.Module):
    """Three parallel branches of different depth, concatenated."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.b1 = nn.Linear(d, d)
        self.b2 = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d))
        self.b3 = nn.Sequential(nn.Linear(d, d), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x)], dim=1)


class InceptionNet(nn.Module):
    """stem -> Inception block -> head: modules nested three levels deep."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.block = Inception(6)
        self.head = nn.Linear(18, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.block(self.stem(x))))


class Blocks(nn.Module):
    """A stack of identical residual MLP blocks with distinct weights."""

    def __init__(self, n: int = 4, d: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + blk(x)
        return x


class SharedBlock(nn.Module):
    """One multi-op block called three times: a module with several calls."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.block(x)
        return x
