"""Built-in losses against hand-written formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.errors import InvalidArgumentError
from lens_train.train.losses import as_loss, param_dtype


def test_kd_kl_matches_formula() -> None:
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    p_t = F.softmax(t / 2, -1)
    expected = (p_t * (p_t.log() - F.log_softmax(s / 2, -1))).sum(-1).mean() * 4
    assert torch.allclose(lt.losses.kd_kl(2.0)(s, t), expected, atol=1e-6)


def test_feature_losses() -> None:
    a, b = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    assert torch.allclose(lt.losses.mse()(a, b), ((a - b) ** 2).mean())
    cos = F.cosine_similarity(a.flatten(1), b.flatten(1))
    assert torch.allclose(lt.losses.cosine()(a, b), (1 - cos).mean())
    am = lambda z: F.normalize(z.pow(2).mean(1).flatten(1), dim=1)  # noqa: E731
    assert torch.allclose(lt.losses.attention_transfer()(a, b), (am(a) - am(b)).pow(2).mean())


def test_activity_losses_and_decorrelation() -> None:
    a = torch.randn(8, 3)
    assert torch.allclose(lt.losses.l1_activity()(a, None), a.abs().mean())
    assert torch.allclose(lt.losses.l2_activation()(a, None), a.pow(2).mean())
    x = torch.randn(64, 5)
    corr = torch.corrcoef(x.T)
    off = corr - torch.diag(torch.diagonal(corr))
    assert torch.allclose(lt.losses.decorrelation()(x, None), off.pow(2).sum() / 20, atol=1e-4)
    independent = torch.eye(4).repeat(4, 1)
    assert lt.losses.decorrelation()(independent, None) < lt.losses.decorrelation()(torch.randn(16, 1).repeat(1, 4), None)


def test_deep_supervision_head_shape_dtype() -> None:
    loss = lt.losses.deep_supervision(5, hidden=7)
    loss.build(torch.zeros(2, 6, 3, 3, dtype=torch.float64))
    assert loss.head[0].weight.shape == (7, 6) and loss.head[0].weight.dtype == torch.float64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert param_dtype(torch.zeros(1, dtype=torch.bfloat16)) == torch.float32


def test_as_loss_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="attention_transfer"):
        as_loss("l3", "feature_loss")
    with pytest.raises(InvalidArgumentError, match="callable"):
        as_loss(3, "feature_loss")
