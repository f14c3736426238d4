"""Interventions on real architectures: ``replay_with`` equals ``lt.intervene`` on every tiny Hugging Face model."""

from __future__ import annotations

import pytest
import torch

import lens_train as lt
from lens_train.errors import DifferentPathError

transformers = pytest.importorskip("transformers")
from tests.zoo.hf_architectures import HF_ARCHS, build_hf  # noqa: E402


def _close(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return torch.allclose(a.detach().float(), b.detach().float(), rtol=1e-5, atol=1e-6, equal_nan=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HF_ARCHS))
def test_replay_with_equals_intervene(name: str) -> None:
    model, args, kwargs = build_hf(name)
    model.eval()
    with torch.no_grad():
        model(*args, **kwargs)  # fills the model's own caches (BEiT's position index), as a user's model would be
    log = lt.log_forward_pass(model, args, kwargs, random_seed=0, replayable=True)
    ops = [layer for layer in log.layers if not (layer.is_input or layer.is_output or layer.is_buffer)
           and layer.tensor_dtype is not None and layer.tensor_dtype.is_floating_point and not layer.is_inplace]
    edit = {ops[len(ops) // 2].layer_label: lambda x: x * 0.5}
    full = lt.intervene(model, args, kwargs, edits=edit, random_seed=0)
    try:
        replayed = log.replay_with(edit)
    except DifferentPathError:
        return  # the edit changed a branch or a read value: a replay must refuse, never guess
    assert replayed.layer_labels == full.layer_labels
    for a, b in zip(replayed.layers, full.layers):
        assert a.layer_type.startswith("empty") or _close(a.tensor_contents, b.tensor_contents), a.layer_label
