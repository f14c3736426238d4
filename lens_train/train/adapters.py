"""``Adapter``: the trainable map from a student layer's shape to its teacher layer's shape.

``adapters="auto"`` in :class:`lens_train.Distillation` builds one per pair whose shapes
differ, by these rules (``B`` is the batch):

- same layout: ``(B, F)`` and ``(B, N, D)`` get a linear map on the last axis,
  ``(B, C, H, W)`` a 1x1 convolution; token counts are interpolated linearly and
  spatial maps bilinearly to the teacher's;
- spatial <-> tokens (a CNN and a transformer): ``(C, H, W)`` is read as ``H*W`` tokens of
  ``C`` features, with a learned linear map on the channels. A token sequence with a
  leading CLS token (``N - 1`` a square and ``N`` not) loses it first: the teacher's is
  dropped from the target, the student's from its input. When the token count ``N``
  differs from ``H*W``, a square ``N`` resizes the map to ``sqrt(N) x sqrt(N)``
  (bilinear), any other ``N`` interpolates the token axis linearly.
- anything else (``(B, F)`` against a map, other ranks) raises with both shapes and the
  fix: ``adapters={student_layer: your_module}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError


def _square(n: int) -> int | None:
    root = math.isqrt(n) if n > 0 else 0
    return root if root and root * root == n else None


def cls_tokens(n: int) -> int:
    """1 when a sequence of ``n`` tokens reads as a CLS token plus a square grid, else 0.

    Example:
        >>> cls_tokens(17), cls_tokens(16), cls_tokens(12)
        (1, 0, 0)
    """
    return 1 if _square(n) is None and _square(n - 1) is not None else 0


class Adapter(nn.Module):
    """Maps student features to the teacher's shape (see the module docstring for the rules).

    ``adapter(student)`` has the shape of ``adapter.target(teacher)``, which drops a
    teacher's CLS token when the rule says so (otherwise returns the teacher unchanged).

    Example:
        >>> a = Adapter((2, 8, 4, 4), (2, 16, 8, 8))
        >>> a(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 16, 8, 8])
        >>> vit = Adapter((2, 16, 4, 4), (2, 17, 48))  # CNN student, ViT teacher with a CLS token
        >>> vit(torch.randn(2, 16, 4, 4)).shape, vit.target(torch.randn(2, 17, 48)).shape
        (torch.Size([2, 16, 48]), torch.Size([2, 16, 48]))
    """

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
        super().__init__()
        s, t = tuple(student_shape), tuple(teacher_shape)
        self.kind = _kind(s, t)
        self.teacher_skip = cls_tokens(t[1]) if self.kind == "map->tokens" else 0
        self.student_skip = cls_tokens(s[1]) if self.kind == "tokens->map" else 0
        if self.kind == "map->tokens":
            self.size: tuple[int, ...] = (t[1] - self.teacher_skip,)
            self.proj: nn.Module = nn.Linear(s[1], t[2])
        elif self.kind == "tokens->map":
            self.size = tuple(t[2:])
            self.proj = nn.Linear(s[2], t[1])
        elif len(s) == 4:
            self.size = tuple(t[2:])
            self.proj = nn.Conv2d(s[1], t[1], 1) if s[1] != t[1] else nn.Identity()
        else:
            self.size = (t[1],) if len(t) == 3 else ()
            self.proj = nn.Linear(s[-1], t[-1]) if s[-1] != t[-1] else nn.Identity()

    def target(self, teacher: torch.Tensor) -> torch.Tensor:
        """The teacher's features as the loss compares them (without a CLS token the rule drops)."""
        return teacher[:, self.teacher_skip:] if self.teacher_skip else teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "map->tokens":
            return self.proj(_map_to_tokens(x, self.size[0]))
        if self.kind == "tokens->map":
            return _tokens_to_map(self.proj(x[:, self.student_skip:]), self.size)
        x = self.proj(x)
        if x.dim() == 4 and tuple(x.shape[2:]) != self.size:
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        if x.dim() == 3 and x.shape[1] != self.size[0]:
            return _resize_tokens(x, self.size[0])
        return x


def _kind(s: tuple[int, ...], t: tuple[int, ...]) -> str:
    if len(s) == len(t) and len(s) in (2, 3, 4):
        return "same"
    if len(s) == 4 and len(t) == 3:
        return "map->tokens"
    if len(s) == 3 and len(t) == 4:
        return "tokens->map"
    raise InvalidArgumentError(
        f"adapters='auto' cannot map student {s} to teacher {t}: it maps (batch, features), (batch, tokens, dim) and "
        "(batch, channels, h, w) to the same layout, and (channels, h, w) maps to and from h*w tokens. Pass your own "
        "module for this pair: adapters={student_layer: module} (student shape in, teacher shape out)."
    )


def _resize_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, N, D)`` -> ``(B, n, D)``, linear along the tokens."""
    return F.interpolate(x.transpose(1, 2), size=n, mode="linear", align_corners=False).transpose(1, 2)


def _map_to_tokens(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, n, C)``: a square ``n`` resizes the map first, else the tokens are interpolated."""
    side = _square(n)
    if side is not None and tuple(x.shape[2:]) != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    tokens = x.flatten(2).transpose(1, 2)
    return tokens if tokens.shape[1] == n else _resize_tokens(tokens, n)


def _tokens_to_map(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``(B, N, C)`` -> ``(B, C, H, W)``: a square ``N`` is a grid, resized bilinearly; else tokens interpolated."""
    b, n, c = x.shape
    side = _square(n)
    if side is None:
        return _resize_tokens(x, size[0] * size[1]).transpose(1, 2).reshape(b, c, *size)
    grid = x.transpose(1, 2).reshape(b, c, side, side)
    return grid if (side, side) == tuple(size) else F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
