"""Every zoo model: the log's output equals a plain forward pass, and replay validation passes."""

from __future__ import annotations

import pytest
import torch

import lens_train as lt
from lens_train.capture.api import forked_rng

from . import ZOO, build


def _leaves(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _leaves(v)]
    if hasattr(value, "__dataclass_fields__"):
        return [t for n in value.__dataclass_fields__ for t in _leaves(getattr(value, n))]
    return []


def _call(model, args, kwargs):
    if isinstance(args, tuple):
        return model(*args, **kwargs)
    if isinstance(args, list) and len(args) > 1:
        return model(args, **kwargs)
    return model(args, **kwargs)


def test_zoo_is_large_enough() -> None:
    assert len(ZOO) >= 80


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model(name: str) -> None:
    model, args, kwargs = build(name)
    with forked_rng(0):
        expected = _call(model, args, kwargs)
    model, args, kwargs = build(name)
    log = lt.log_forward_pass(model, args, kwargs, random_seed=0)
    want, got = _leaves(expected), _leaves(log.output)
    assert len(want) == len(got) > 0
    for a, b in zip(want, got):
        assert torch.equal(a.detach(), b.detach())
    outputs = [log[label].activation for label in log.output_layers]
    for a, b in zip(want, outputs):
        assert torch.equal(a.detach(), b)
    model, args, kwargs = build(name)
    assert lt.validate_model_activations(model, args, kwargs, verbose=True, random_seed=0)


# Zoo models whose own computation differs between train and eval mode, and why.
MODE_DEPENDENT: dict[str, str] = {}


def _layout(log):
    return [(layer.layer_label, layer.layer_type, layer.tensor_shape, tuple(layer.containing_modules))
            for layer in log.layers]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_labels_identical_in_train_and_eval_mode(name: str) -> None:
    model, args, kwargs = build(name)
    train = lt.log_forward_pass(model.train(), args, kwargs, layers_to_save=None, random_seed=0)
    evaluated = lt.log_forward_pass(model.eval(), args, kwargs, layers_to_save=None, random_seed=0)
    if name in MODE_DEPENDENT:
        assert _layout(train) != _layout(evaluated), f"{name} is listed as mode-dependent: {MODE_DEPENDENT[name]}"
    else:
        assert _layout(train) == _layout(evaluated)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_labels_do_not_depend_on_what_is_saved(name: str) -> None:
    """Saving values (``detach``, clones) is the engine's work, never an op of the log."""
    logs = []
    for save in ("all", None, "replayable"):
        model, args, kwargs = build(name)
        options = {"replayable": True} if save == "replayable" else {"layers_to_save": save}
        logs.append(lt.log_forward_pass(model, args, kwargs, random_seed=0, **options))
    assert logs[0].layer_labels == logs[1].layer_labels == logs[2].layer_labels
