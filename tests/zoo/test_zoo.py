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


_SPLIT_SEEN: list[str] = []


@pytest.mark.parametrize("name", sorted(ZOO))
def test_pass_grouping_and_labels_alike_in_c_and_python(name: str) -> None:
    """The C loops of ``passes.grouped_labels`` give the Python ones' groups and labels, field for field."""
    from lens_train.capture import passes, recorder
    from lens_train.capture.api import record_forward
    from lens_train.capture.bookkeeping import bookkeeping_flags
    from lens_train.capture.build import module_param_counts
    from lens_train.capture.recorder import CapturePlan

    if recorder._hotpath is None:
        pytest.skip("the C extension is not built")
    model, args, kwargs = build(name)
    args = args if isinstance(args, tuple) else (args,)
    rec = record_forward(model, args, kwargs, CapturePlan(save=frozenset()), 0)[0]
    rec.resolve_callsites()
    records, params = rec.records, frozenset(module_param_counts(model))
    side = bookkeeping_flags(records)

    def plain(result: tuple) -> tuple:
        groups, *lists = result
        return [(g.members, g.layer_type, g.label, g.type_index, g.layer_index, g.bookkeeping) for g in groups], lists

    split = passes._split_loops
    seen = []
    with pytest.MonkeyPatch.context() as m:  # (note the models that take the call back into Python)
        m.setattr(passes, "_split_loops", lambda ctx, members: seen.append(1) or split(ctx, members))
        hot = plain(passes.grouped_labels(records, params, side, recorder._hotpath))
    assert hot == plain(passes.grouped_labels(records, params, side))
    assert len(hot[1][0]) == len(records) and all(hot[1][0])
    if seen:
        _SPLIT_SEEN.append(name)


def test_the_zoo_splits_loops_on_the_c_path_too() -> None:
    """Some zoo model repeats a place without parameters (loop splitting runs inside the C grouping)."""
    from lens_train.capture import recorder

    if recorder._hotpath is None:
        pytest.skip("the C extension is not built")
    for name in ("loop_parameter_free", "loop_independent_iterations", *sorted(ZOO)):
        if name in ZOO and not _SPLIT_SEEN:
            test_pass_grouping_and_labels_alike_in_c_and_python(name)
    assert _SPLIT_SEEN
