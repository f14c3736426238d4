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


class PreNormBlock(nn.Module):
    """LayerNorm, ``nn.MultiheadAttention`` (batch first), LayerNorm, MLP d->4d->d with GELU; residuals.

    Attention runs with ``need_weights=False`` (32 ops a block in train mode, as in issue 15).
    """

    def __init__(self, d: int, heads: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class PreNormTransformer(nn.Module):
    """Input Linear ``d_in``->``d``, ``blocks`` pre-norm blocks, mean pool over tokens, Linear head to 10."""

    def __init__(self, d: int = 64, blocks: int = 4, heads: int = 4, d_in: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(PreNormBlock(d, heads) for _ in range(blocks))
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.head(x.mean(1))


class CNN5(nn.Module):
    """Five 3x3 conv + BatchNorm + ReLU stages 3->16->32->32->64->64, 2x2 max pool after the first three."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 32, 64, 64), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


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


def issue15_models(batch: int | None = None) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The capture benchmark's fixed models (issue 15) with inputs, in train mode.

    Ops per capture: transformer4 133, transformer24 773, cnn5 32, lstm_loop 149.

    ``batch`` overrides the batch size of every input (e.g. a realistic batch on a GPU).
    """
    torch.manual_seed(0)
    specs = {
        "transformer4": (PreNormTransformer(64, 4), (8, 32, 16)),
        "transformer24": (PreNormTransformer(32, 24), (4, 16, 16)),
        "cnn5": (CNN5(), (8, 3, 64, 64)),
        "lstm_loop": (LSTMLoop(32, 20), (8, 20, 32)),
    }
    return {name: (model.train(), torch.randn(batch or shape[0], *shape[1:])) for name, (model, shape) in specs.items()}
