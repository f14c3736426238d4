"""Models shared by the benchmarks (and importable by tests)."""

from __future__ import annotations

import torch
from torch import nn


class Encoder(nn.Module):
    """A stack of ``nn.TransformerEncoderLayer`` blocks with distinct weights."""

    def __init__(self, d: int = 64, blocks: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.1, batch_first=True) for _ in range(blocks)
        )
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(1))


class CNN(nn.Module):
    """Five conv layers with BatchNorm and ReLU, then a linear classifier."""

    def __init__(self, channels: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i in range(5):
            layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
            c_in = channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class LSTMLoop(nn.Module):
    """Three stacked LSTMCells unrolled over ``steps`` time steps."""

    def __init__(self, d: int = 32, steps: int = 20) -> None:
        super().__init__()
        self.cells = nn.ModuleList(nn.LSTMCell(d, d) for _ in range(3))
        self.steps = steps
        self.out = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        states = [(x.new_zeros(b, x.shape[-1]), x.new_zeros(b, x.shape[-1])) for _ in self.cells]
        for t in range(self.steps):
            h = x[:, t % x.shape[1]]
            for i, cell in enumerate(self.cells):
                states[i] = cell(h, states[i])
                h = states[i][0]
        return self.out(h)


class LongLoop(nn.Module):
    """One small Linear applied ``steps`` times in a Python loop (weight sharing)."""

    def __init__(self, steps: int = 1000, d: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = torch.tanh(self.fc(x)) * 0.9 + 0.1
        return x


class DeepStack(nn.Module):
    """``blocks`` residual blocks with distinct weights: 4 ops each (5000 ops by default)."""

    def __init__(self, blocks: int = 1250, d: int = 8) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + torch.tanh(blk(x)) * 0.5
        return x


def structure_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Models for the post-processing (labels, passes, structure) benchmark."""
    torch.manual_seed(0)
    return {
        "loop 1000 steps": (LongLoop(1000), torch.randn(4, 8)),
        "stack of 5000 ops": (DeepStack(1250), torch.randn(4, 8)),
    }


def bench_models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The benchmark's models with inputs, in their default (train) mode."""
    torch.manual_seed(0)
    return {
        "transformer4 (d=64)": (Encoder(64, 4), torch.randn(8, 32, 64)),
        "cnn5": (CNN(), torch.randn(8, 3, 32, 32)),
        "lstm3x20": (LSTMLoop(32, 20), torch.randn(8, 20, 32)),
        "transformer24 (d=32)": (Encoder(32, 24), torch.randn(8, 32, 32)),
    }
