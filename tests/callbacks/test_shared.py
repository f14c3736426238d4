"""Batch unpacking and quiet extra passes shared by every callback."""

from __future__ import annotations

import pytest
import torch

from lens_train.callbacks._base import LensCallback
from lens_train.callbacks._session import unique_layers
from lens_train.callbacks._shared import default_batch_to_input, default_batch_to_targets, make_getter, quiet_forward
from lens_train.errors import InvalidArgumentError


def test_defaults_for_tuples_dicts_and_tensors():
    x, y = torch.ones(2, 3), torch.tensor([0, 1])
    assert default_batch_to_input((x, y)) is x and default_batch_to_targets([x, y]) is y
    assert default_batch_to_input({"image": x, "label": y}) is x and default_batch_to_targets({"image": x, "label": y}) is y
    assert default_batch_to_input(x) is x


def test_unknown_batches_name_the_arguments():
    with pytest.raises(InvalidArgumentError, match=r"keys \['a', 'b'\].*batch_to_input="):
        default_batch_to_input({"a": 1, "b": 2})
    with pytest.raises(InvalidArgumentError, match="batch_to_targets="):
        default_batch_to_targets(torch.ones(2))
    with pytest.raises(InvalidArgumentError, match="batch_to_input must be .*got 3.2"):
        make_getter(3.2, default_batch_to_input, "batch_to_input")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="batch_to_targets='y' does not select"):
        LensCallback(batch_to_targets="y").batch_targets({"x": 1})


def test_getters_by_index_key_and_function():
    cb = LensCallback(batch_to_input=1, batch_to_targets=lambda b: b[0] * 2)
    assert cb.batch_input((3, 4)) == 4 and cb.batch_targets((3, 4)) == 6


def test_quiet_forward_restores_buffers_flags_and_rng():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3), torch.nn.Dropout(0.5)).train()
    model[1].eval()
    before = [b.clone() for b in model.buffers()]
    state = torch.get_rng_state()
    with quiet_forward(model):
        model[1].train()  # even a forward in train mode inside must leave no trace
        model(torch.randn(4, 3))
        assert not torch.is_grad_enabled()
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))
    assert model.training and not model[1].training and model[2].training


def test_unique_layers_keeps_order_and_predicates():
    pred = lambda a, m: False  # noqa: E731
    assert unique_layers([["a", pred], ["a", "b", pred]]) == ["a", pred, "b"]
