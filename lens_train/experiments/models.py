"""Small classifiers for 8x8 images, each a stack of ``blocks`` followed by a ``head``.

Every model names its stages ``blocks.0``, ``blocks.1``, ... so the same lens configs
(probes on every block, deep supervision on ``blocks.1``) apply to all of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidArgumentError


def _check_widths(name: str, widths: Sequence[int], minimum: int = 2) -> list[int]:
    widths = [int(w) for w in widths]
    if len(widths) < minimum or any(w < 1 for w in widths):
        raise InvalidArgumentError(
            f"{name} must list at least {minimum} positive widths (one per block), got {list(widths)!r}. "
            f"Example: {name}=[16,32,64]."
        )
    return widths


class DigitsCNN(nn.Module):
    """Conv blocks (conv, batch norm, ReLU; max-pool after the first) then average pool and linear.

    Args:
        channels: output channels of each block (at least two blocks).
        num_classes: number of output logits.
        in_channels: channels of the input images.

    Example:
        >>> model = DigitsCNN(channels=[8, 16, 16], num_classes=10)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> [name for name, _ in model.blocks.named_children()]
        ['0', '1', '2']
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64), num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        widths = [in_channels, *_check_widths("channels", channels)]
        self.blocks = nn.Sequential(*(self._block(a, b, pool=i >= 1) for i, (a, b) in enumerate(zip(widths, widths[1:]))))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes))

    @staticmethod
    def _block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
        if pool:
            # 8x8 -> 4x4 -> 2x2; deeper blocks keep 2x2 (ceil_mode stops the map from vanishing).
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        return self.head(self.blocks(x))


class DigitsMLP(nn.Module):
    """Flatten, then linear + ReLU blocks, then a linear head.

    Args:
        hidden: width of each block (at least two blocks).
        num_classes: number of output logits.
        in_features: flattened input size (64 for 8x8 images).
        dropout: dropout after each block's ReLU.

    Example:
        >>> DigitsMLP(hidden=[32, 16], num_classes=10)(torch.zeros(3, 1, 8, 8)).shape
        torch.Size([3, 10])
    """

    def __init__(self, hidden: Sequence[int] = (128, 64, 32), num_classes: int = 10, in_features: int = 64,
                 dropout: float = 0.0) -> None:
        super().__init__()
        widths = [in_features, *_check_widths("hidden", hidden)]
        self.flatten = nn.Flatten()
        self.blocks = nn.Sequential(*(
            nn.Sequential(nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)) for a, b in zip(widths, widths[1:])
        ))
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)``."""
        return self.head(self.blocks(self.flatten(x)))


class RowBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Example:
        >>> RowBlock(16, num_heads=2)(torch.zeros(2, 8, 16)).shape
        torch.Size([2, 8, 16])
    """

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same shape as the input: ``(batch, tokens, dim)``."""
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class RowTransformer(nn.Module):
    """Reads an image's rows as a sequence of tokens: embed, transformer blocks, mean-pool, linear.

    Args:
        dim: token width.
        depth: number of transformer blocks (at least two).
        num_heads: attention heads (must divide ``dim``).
        num_classes: number of output logits.
        row_length: pixels per row (the token's input features).
        num_rows: rows per image (the sequence length).

    Example:
        >>> model = RowTransformer(dim=16, depth=2, num_heads=2)
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, dim: int = 32, depth: int = 3, num_heads: int = 4, num_classes: int = 10, row_length: int = 8,
                 num_rows: int = 8) -> None:
        super().__init__()
        if depth < 2 or dim % num_heads:
            raise InvalidArgumentError(
                f"RowTransformer needs depth >= 2 and num_heads dividing dim, got depth={depth}, dim={dim}, "
                f"num_heads={num_heads}. Example: model.net.dim=32 model.net.num_heads=4 model.net.depth=3."
            )
        self.embed = nn.Linear(row_length, dim)
        self.pos = nn.Parameter(torch.zeros(1, num_rows, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(RowBlock(dim, num_heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(batch, num_classes)`` for images ``(batch, 1, rows, row_length)``."""
        tokens = self.embed(x.flatten(1, 2)) + self.pos
        return self.head(self.norm(self.blocks(tokens)).mean(dim=1))
