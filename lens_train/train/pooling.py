"""Turning a tapped activation into one feature vector per example."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidArgumentError



def check_pool(pool: Any) -> None:
    """Raise for a pooling choice that :func:`pool_features` does not know."""
    if pool in ("avg", "flatten") or callable(pool) or (isinstance(pool, int) and not isinstance(pool, bool)):
        return
    raise InvalidArgumentError(
        f"pool must be 'avg', 'flatten', a token index (int) or a callable, got {pool!r}. Example: pool='avg'."
    )


def pool_features(x: torch.Tensor, pool: Any = "avg") -> torch.Tensor:
    """``(batch, features)`` from an activation.

    ``"avg"`` averages over the sequence of a ``(batch, seq, dim)`` tensor and over the
    spatial dims of a ``(batch, channels, *spatial)`` tensor; ``"flatten"`` keeps every
    value; an int picks one token of ``(batch, seq, dim)``; a callable is applied as is.

    Example:
        >>> import torch
        >>> pool_features(torch.ones(2, 3, 4, 4)).shape, pool_features(torch.ones(2, 5, 8), 0).shape
        (torch.Size([2, 3]), torch.Size([2, 8]))
    """
    if callable(pool):
        return pool(x)
    if x.dim() < 2:
        raise InvalidArgumentError(f"Cannot pool an activation of shape {tuple(x.shape)}: it has no batch dimension.")
    if pool == "flatten":
        return x.flatten(1)
    if isinstance(pool, int):
        if x.dim() != 3:
            raise InvalidArgumentError(f"pool={pool} picks a token of a (batch, seq, dim) tensor, got shape {tuple(x.shape)}.")
        return x[:, pool]
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        return x.mean(1)
    return x.mean(dim=tuple(range(2, x.dim())))
