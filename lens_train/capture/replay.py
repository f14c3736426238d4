"""Same-graph replay: refresh a log's activations from a new input, keeping its labels.

The pass is captured again with the log's own options (layers saved, ``train_mode``,
``activation_postfunc``, gradients, random seed) and the two op sequences are compared
layer by layer (label, function, parents, containing modules, parameters). Only when
they are the same graph are the layers updated in place; otherwise
:class:`~lens_train.errors.DifferentPathError` names the first operation that differs,
so activations from two different graphs are never mixed in one log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import DifferentPathError
from .api import run_capture
from .gradients import GradientHooks
from .layer_log import LayerLog
from .model_log import ModelLog
from .recorder import CapturePlan

# What a layer pass gets from the new run; labels and graph links stay as they are.
_REFRESHED = ("tensor_contents", "transformed_activation", "tensor_shape", "tensor_dtype", "tensor_fsize", "device",
              "requires_grad", "grad_fn_name", "time_s", "bool_values")


def save_new_activations(log: ModelLog, model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None,
                         random_seed: int | None = None) -> ModelLog:
    """Re-run ``model`` on new input and refresh ``log``'s saved activations in place.

    Args:
        log: a log made by ``log_forward_pass`` (or loaded from a bundle) for ``model``.
        model: the model, with the weights it should run with now.
        input_args, input_kwargs: the new input (same rules as ``log_forward_pass``).
        random_seed: seed for the new pass; the log's own seed when None, so dropout
            masks and other random ops repeat.

    Returns:
        ``log`` itself, updated (gradients are reset; a new ``backward()`` fills them).

    Raises:
        DifferentPathError: the new input takes a different path (other ops, another
            branch, another number of loop passes); ``log`` is left unchanged.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> log = lt.log_forward_pass(model, torch.ones(1, 2))
        >>> new = torch.full((1, 2), 2.0)
        >>> torch.equal(save_new_activations(log, model, new)["linear_1_1"].activation, model[0](new))
        True
    """
    plan = _plan_of(log)
    grads = GradientHooks() if log.meta.get("save_gradients") else None
    if grads is not None:
        plan = dataclasses.replace(plan, sink=grads.sink)
    seed = log.random_seed if random_seed is None else int(random_seed)
    fresh = run_capture(model, input_args, input_kwargs, plan, 0 if seed is None else seed)
    check_same_graph(log, fresh)
    for old, new in zip(log.layers, fresh.layers):
        _refresh(old, new)
    if grads is not None:
        grads.bind(log)
    log.output = fresh.output
    log.replay_state = fresh.replay_state  # a replayable log replays from the new values
    log.random_seed = fresh.random_seed
    log.elapsed_s = fresh.elapsed_s
    log.meta.update(random_seed=fresh.random_seed, elapsed_s=fresh.elapsed_s)
    return log


def _plan_of(log: ModelLog) -> CapturePlan:
    plan = getattr(log, "capture_plan", None)
    if isinstance(plan, CapturePlan):
        return plan
    # a log read back from disk: save what it saved, in the mode it was made in
    saved = frozenset(i for i, layer in enumerate(log.layers) if layer.is_saved)
    save: str | frozenset[int] = "all" if len(saved) == len(log.layers) else saved
    return CapturePlan(save=save or "none", train_mode=bool(log.meta.get("train_mode", False)))


def _signature(layer: LayerLog) -> tuple:
    return (layer.layer_label, layer.func_name, tuple(layer.parent_layers), tuple(layer.containing_modules),
            tuple(layer.param_addresses))


def _describe(layer: LayerLog | None) -> str:
    if layer is None:
        return "nothing (the pass ended)"
    inside = f" inside {layer.containing_modules[-1]}" if layer.containing_modules else ""
    return f"{layer.layer_label} ({layer.func_name}{inside}, parents {layer.parent_layers or 'none'})"


def check_same_graph(old: ModelLog, new: ModelLog) -> None:
    """Raise :class:`DifferentPathError` naming the first op where two logs differ.

    Example:
        >>> import torch, lens_train as lt
        >>> a = lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2))
        >>> check_same_graph(a, lt.log_forward_pass(torch.nn.ReLU(), torch.zeros(5)))
    """
    for i in range(max(len(old.layers), len(new.layers))):
        a = old.layers[i] if i < len(old.layers) else None
        b = new.layers[i] if i < len(new.layers) else None
        if a is None or b is None or _signature(a) != _signature(b):
            raise DifferentPathError(
                f"The new input takes a different path through {old.model_name}: operation #{i} was "
                f"{_describe(a)} in the logged pass but is {_describe(b)} now, so the log's layers cannot be "
                "refreshed in place. Log the new input separately: lt.log_forward_pass(model, new_input)."
            )


def _refresh(old: LayerLog, new: LayerLog) -> None:
    for name in _REFRESHED:
        setattr(old, name, getattr(new, name))
    old.gradient = None
    old._materialize = None
