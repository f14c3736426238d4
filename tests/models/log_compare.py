"""Field-by-field comparison of two ModelLogs (a captured one and one read back from disk)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lens_train import LayerLog, ModelLog


def bit_equal(a: Any, b: Any) -> bool:
    """Equal values; tensors must match in dtype, shape and every byte (NaN payloads included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        a = a.detach().cpu().clone(memory_format=torch.contiguous_format)
        b = b.detach().cpu().clone(memory_format=torch.contiguous_format)
        return a.numel() == 0 or torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(bit_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(bit_equal(a[k], b[k]) for k in a)
    if isinstance(a, float) and isinstance(b, float) and a != a:
        return b != b
    return type(a) is type(b) and a == b


def assert_same_layer(a: LayerLog, b: LayerLog) -> None:
    """Every LayerLog field equal; call stacks compared as (file, line, function)."""
    names = [f.name for f in dataclasses.fields(LayerLog) if not f.name.startswith("_") and f.name != "raw_frames"]
    for name in [*names, "lookup_keys"]:
        va, vb = getattr(a, name), getattr(b, name)
        assert bit_equal(va, vb), f"{a.layer_label}.{name}: {va!r} != {vb!r}"
    assert a.func_call_stack == b.func_call_stack, a.layer_label
    assert len(a.func_call_stack) == len(a.raw_frames)


def assert_same_log(a: ModelLog, b: ModelLog, materialize: bool = False) -> None:
    """Two logs with equal layers, modules, meta, output and printout (``materialize``: ``b`` is lazy)."""
    assert b.model_name == a.model_name
    assert b.layer_labels == a.layer_labels
    for la, lb in zip(a.layers, b.layers):
        if materialize:
            lb.materialize_activation()
        assert_same_layer(la, lb)
    assert list(b.modules) == list(a.modules)
    for address, mod in a.modules.items():
        assert dataclasses.asdict(b.modules[address]) == dataclasses.asdict(mod)
    assert bit_equal(a.meta, b.meta), (a.meta, b.meta)
    if not materialize:  # a lazily loaded log does not read the model's output
        assert bit_equal(getattr(a, "output", None), getattr(b, "output", None))
    assert str(b) == str(a)
