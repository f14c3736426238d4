"""Pooling options: exact values for average, flatten, token index and callables."""

from __future__ import annotations

import pytest
import torch

from lens_train.errors import InvalidArgumentError
from lens_train.train.pooling import check_pool, pool_features


def test_pooling_values() -> None:
    maps, tokens, vectors = torch.randn(2, 3, 4, 5), torch.randn(2, 6, 7), torch.randn(2, 9)
    assert torch.equal(pool_features(maps, "avg"), maps.mean((2, 3)))
    volume = torch.randn(2, 3, 2, 2, 2)
    assert torch.equal(pool_features(volume, "avg"), volume.mean((2, 3, 4)))
    assert torch.equal(pool_features(tokens, "avg"), tokens.mean(1))
    assert torch.equal(pool_features(vectors, "avg"), vectors)
    assert torch.equal(pool_features(maps, "flatten"), maps.reshape(2, 60))
    assert torch.equal(pool_features(tokens, 0), tokens[:, 0]) and torch.equal(pool_features(tokens, -1), tokens[:, -1])
    assert torch.equal(pool_features(maps, lambda x: x.amax((2, 3))), maps.amax((2, 3)))


def test_pooling_errors() -> None:
    with pytest.raises(InvalidArgumentError, match=r"picks a token of a \(batch, seq, dim\) tensor, got shape \(2, 3, 4, 5\)"):
        pool_features(torch.randn(2, 3, 4, 5), 0)
    with pytest.raises(InvalidArgumentError, match="no batch dimension"):
        pool_features(torch.randn(3), "avg")
    for bad in ("max", True, 1.5):
        with pytest.raises(InvalidArgumentError, match="pool must be"):
            check_pool(bad)
