"""Experiment models: shapes, block names, and that they learn."""

import pytest
import torch
import torch.nn.functional as F

from lens_train.errors import InvalidArgumentError
from lens_train.experiments.models import DigitsCNN, DigitsMLP, RowBlock, RowTransformer


@pytest.mark.parametrize("model", [DigitsCNN(), DigitsMLP(), RowTransformer()], ids=type)
def test_every_model_has_three_blocks_and_ten_logits(model: torch.nn.Module) -> None:
    assert [n for n, _ in model.blocks.named_children()] == ["0", "1", "2"]
    assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)


def test_cnn_feature_map_sizes() -> None:
    model = DigitsCNN(channels=[4, 8, 8, 8])
    x = torch.rand(2, 1, 8, 8)
    shapes = []
    for block in model.blocks:
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(4, 8, 8), (8, 4, 4), (8, 2, 2), (8, 1, 1)]


def test_row_transformer_reads_rows_as_tokens() -> None:
    model = RowTransformer(dim=8, depth=2, num_heads=2)
    x = torch.rand(1, 1, 8, 8)
    expected = model.embed(x[:, 0]) + model.pos  # row i of the image is token i
    seen = {}
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("tokens", args[0]))
    model(x)
    assert torch.allclose(seen["tokens"], expected)


def test_row_block_is_pre_norm_residual() -> None:
    block = RowBlock(8, num_heads=2)
    x = torch.randn(2, 3, 8)
    h = block.norm1(x)
    y = x + block.attn(h, h, h, need_weights=False)[0]
    assert torch.allclose(block(x), y + block.mlp(block.norm2(y)), atol=1e-6)


@pytest.mark.parametrize("cls", [DigitsCNN, DigitsMLP, RowTransformer])
def test_models_fit_a_small_batch(cls: type) -> None:
    torch.manual_seed(0)
    model = cls()
    x, y = torch.rand(32, 1, 8, 8), torch.arange(32) % 10
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert (model(x).argmax(1) == y).float().mean() > 0.9


def test_bad_widths_raise() -> None:
    with pytest.raises(InvalidArgumentError, match=r"channels=\[16,32,64\]"):
        DigitsCNN(channels=[16])
    with pytest.raises(InvalidArgumentError, match="num_heads"):
        RowTransformer(dim=10, num_heads=4)
