"""``log.replay_with`` equals a full ``lt.intervene`` run with the same edits, on every zoo model."""

from __future__ import annotations

import pytest
import torch

import lens_train as lt
from lens_train.errors import DifferentPathError
from tests.zoo import ZOO, build


def _scale(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 + 0.25


def _target(log: lt.ModelLog) -> str | None:
    """A floating-point op about two thirds through the pass (not an input, output or buffer)."""
    ops = [layer for layer in log.layers if not (layer.is_input or layer.is_output or layer.is_buffer)
           and layer.tensor_dtype is not None and layer.tensor_dtype.is_floating_point and not layer.is_inplace
           and layer.tensor_contents is not None and layer.tensor_contents.numel() > 0]
    return ops[(2 * len(ops)) // 3].layer_label if ops else None


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = a.detach(), b.detach()
    return a.shape == b.shape and (torch.equal(a, b) or torch.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_replay_with_equals_a_full_rerun(name: str) -> None:
    model, args, kwargs = build(name)
    log = lt.log_forward_pass(model, args, kwargs, random_seed=0, replayable=True)
    target = _target(log)
    if target is None:
        pytest.skip("no floating-point op to edit")
    before = [layer.tensor_contents for layer in log.layers]
    model, args, kwargs = build(name)
    full = lt.intervene(model, args, kwargs, edits={target: _scale}, random_seed=0)
    try:
        replayed = log.replay_with({target: _scale})
    except DifferentPathError:
        rerun = log.replay_with({target: _scale}, fallback="rerun")
        assert rerun.layer_labels == full.layer_labels
        return
    assert replayed.layer_labels == full.layer_labels
    for a, b in zip(replayed.layers, full.layers):
        if a.layer_type.startswith("empty"):
            continue  # uninitialized memory
        assert _equal(a.tensor_contents, b.tensor_contents), (a.layer_label, a.func_name)
    assert _equal(replayed[target].original_activation, full[target].original_activation)
    assert all(x is layer.tensor_contents for x, layer in zip(before, log.layers))  # the original log is untouched
    assert log[target].edit is None
