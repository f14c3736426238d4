"""``lt.intervene`` and ``log.replay_with``: a forward pass with chosen activations replaced."""

from __future__ import annotations

import copy as _copy
import dataclasses
import random
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..capture.api import log_forward_pass
from ..capture.calls import _flatten_output
from ..capture.model_log import ModelLog
from ..capture.replay_edits import replay_records
from ..capture.validation import _cloned
from ..errors import DifferentPathError, InvalidArgumentError
from .substitution import substituted
from .targets import AppliedEdit, Target, resolve_targets


def intervene(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None, *,
              edits: Mapping[str, Any] | None = None, params: Mapping[str, torch.Tensor] | None = None,
              modules: Mapping[str, nn.Module] | None = None, **log_options: Any) -> ModelLog:
    """Run the forward pass with chosen activations replaced, and log that run.

    Args:
        model: the model; it is left exactly as it was.
        input_args, input_kwargs: the input, as for :func:`lens_train.log_forward_pass`.
        edits: ``{selector: edit}``. A selector is a module address (the call's output;
            ``"fc:2"`` for one call), an op label (``"relu_1_2"``; ``"linear_1_1:2"`` for one
            pass) or a glob (``"blocks.*.act"``). An edit is ``lt.edits.zero()``,
            ``lt.edits.mean(reference=None)``, ``lt.edits.noise(std, relative=False)``,
            ``lt.edits.detach()`` (or the strings ``"zero"``, ``"mean"``, ``"noise"``,
            ``"detach"``), a tensor (the new value) or a callable ``tensor -> tensor``.
        params: ``{parameter address: tensor}`` to run with other weights.
        modules: ``{module address: nn.Module}`` to run with another submodule (a
            different nonlinearity...).
        **log_options: options of :func:`lens_train.log_forward_pass` (``random_seed``,
            ``layers_to_save``, ``replayable``...).

    Returns:
        The log of the edited run. An edited layer's ``activation`` is the edited value,
        ``original_activation`` the value before the edit and ``edit`` says what was done.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
        >>> log = lt.intervene(model, torch.ones(1, 2), edits={"1": "zero"})
        >>> log["1"].activation, log["1"].edit
        (tensor([[0., 0.]]), 'zero() on the output of 1:1')
        >>> bool((log.output == model[2].bias).all())
        True
    """
    if edits and log_options.get("save_activations_to") is not None:
        raise InvalidArgumentError(
            "save_activations_to streams each value as it is computed, before an edit replaces it: save the edited "
            "log afterwards instead, e.g. log = lt.intervene(model, x, edits=...); lt.save(log, 'run/bundle')."
        )
    seed = log_options.pop("random_seed", None)
    seed = random.randrange(2**31) if seed is None else seed
    with substituted(model, params, modules):
        if not edits:
            return log_forward_pass(model, input_args, input_kwargs, random_seed=seed, **log_options)
        # on copies: a model that writes into its inputs must not see the probe's writes
        memo: dict = {}
        probe = log_forward_pass(model, _cloned(input_args, memo), _cloned(input_kwargs, memo), layers_to_save=None,
                                 random_seed=seed)
        targets = resolve_targets(probe, edits)
        op_edits = {t.record: AppliedEdit(t.edit, t.label) for t in targets if t.record is not None}
        call_edits = {t.call: AppliedEdit(t.edit, t.label) for t in targets if t.call is not None}
        log = log_forward_pass(model, input_args, input_kwargs, random_seed=seed, intervention_edits=op_edits or None,
                               intervention_module_edits=call_edits or None, **log_options)
    _check_placed(log, probe, targets)
    log.meta["edits"] = {t.label: AppliedEdit(t.edit, t.label).description for t in targets}
    return log


def _check_placed(log: ModelLog, probe: ModelLog, targets: list[Target]) -> None:
    """Every op edit landed on the op it was meant for (an earlier edit can change the path)."""
    labels = {layer.operation_index: layer.layer_label for layer in log.layers}
    for t in targets:
        if t.record is not None and labels.get(t.record) != t.label:
            raise DifferentPathError(
                f"An earlier edit changed the model's path, so the edit of {t.label!r} could not be placed (that "
                f"position now holds {labels.get(t.record, 'nothing')!r}). Edit one layer at a time, or edit a module."
            )


def replay_with(log: ModelLog, edits: Mapping[str, Any], fallback: str = "error") -> ModelLog:
    """``log`` recomputed with ``edits``, from its saved values: only the ops downstream of an edit run.

    Needs a log captured with ``replayable=True``. The new log shares every layer the edits
    do not reach with ``log`` (which is left as it was); its values equal a full
    :func:`intervene` with the same edits and seed. A module selector edits each tensor
    the call returned (a callable must then target an op label when the call returned
    several tensors).

    Raises:
        DifferentPathError: an edited value changes what Python read from a tensor (a
            branch, ``.item()``, an index) or a tensor's shape, so the saved path no longer
            holds; ``fallback="rerun"`` runs :func:`intervene` instead.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> log = lt.log_forward_pass(model, torch.ones(1, 2), replayable=True)
        >>> edited = log.replay_with({"linear_1_1": lambda x: x * 0 - 1})
        >>> edited["relu_1_2"].activation, edited["input_1_0"] is log["input_1_0"]
        (tensor([[0., 0.]]), True)
    """
    if fallback not in ("error", "rerun"):
        raise InvalidArgumentError(f"fallback must be 'error' or 'rerun', got {fallback!r}; "
                                   "e.g. log.replay_with(edits, fallback='rerun').")
    state = log.replay_state
    if state is None:
        raise InvalidArgumentError(
            "This log cannot be replayed: it was captured without replayable=True (or loaded from a bundle). "
            "Capture it with lt.log_forward_pass(model, x, replayable=True), then call log.replay_with(edits)."
        )
    targets = resolve_targets(log, edits)
    fns = _record_edits(log, targets)
    try:
        new, before = replay_records(state, fns)
    except DifferentPathError:
        if fallback != "rerun":
            raise
        return intervene(state.model, state.input_args, state.input_kwargs, edits=edits, random_seed=state.seed,
                         **_options_of(log))
    return _replayed_log(log, new, before, fns)


def _record_edits(log: ModelLog, targets: list[Target]) -> dict[int, AppliedEdit]:
    fns: dict[int, AppliedEdit] = {}
    for t in targets:
        if t.record is not None:
            fns[t.record] = AppliedEdit(t.edit, t.label)
            continue
        outputs = log.modules[t.call[0]].calls[t.call[1] - 1]["outputs"]
        if len(outputs) > 1 and getattr(t.edit, "fn", None) is not None:
            raise InvalidArgumentError(
                f"Module call {t.label!r} returned {len(outputs)} tensors ({', '.join(outputs)}); a replayed function "
                f"edit applies to one tensor. Edit one of those labels, or use lt.intervene for the whole output."
            )
        for label in outputs:
            fns[log[label].operation_index] = AppliedEdit(t.edit, label, t.label)
    return fns


def _replayed_log(log: ModelLog, new: dict[int, torch.Tensor], before: dict[int, torch.Tensor],
                  fns: dict[int, AppliedEdit]) -> ModelLog:
    state = log.replay_state
    layers = list(log.layers)
    for index, value in new.items():
        pos = state.positions.get(index)
        if pos is None:
            continue
        changes: dict[str, Any] = {"tensor_contents": value}
        if index in fns:
            changes.update(edit=fns[index].description, original_activation=before[index])
        layers[pos] = dataclasses.replace(layers[pos], **changes)
    described = {layers[state.positions[i]].layer_label: f.description for i, f in fns.items() if i in state.positions}
    out = ModelLog(log.model_name, layers, log.modules, {**log.meta, "edits": described})
    leaves = _flatten_output(log.output)
    outputs = [layer for layer in layers if layer.is_output]
    swapped = {id(old): layer.tensor_contents for old, layer, before_layer in
               zip(leaves, outputs, [lay for lay in log.layers if lay.is_output])
               if layer is not before_layer and layer.tensor_contents is not None}
    out.output = _swap_leaves(log.output, swapped)
    out.replay_state = state
    return out


def _swap_leaves(value: Any, swapped: dict[int, torch.Tensor], depth: int = 0) -> Any:
    """The model's output structure with each recomputed tensor in place of the old one."""
    if isinstance(value, torch.Tensor):
        return swapped.get(id(value), value)
    if depth > 8 or not swapped:
        return value
    if isinstance(value, dict):
        copy = _copy.copy(value)
        for k, v in value.items():
            copy[k] = _swap_leaves(v, swapped, depth + 1)
        return copy
    if isinstance(value, (list, tuple)):
        items = [_swap_leaves(v, swapped, depth + 1) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        copy = _copy.copy(value)
        for f in dataclasses.fields(value):
            setattr(copy, f.name, _swap_leaves(getattr(value, f.name), swapped, depth + 1))
        return copy
    return value


def _options_of(log: ModelLog) -> dict[str, Any]:
    saved = log.meta.get("layers_to_save", "all")
    return {"layers_to_save": saved, "train_mode": bool(log.meta.get("train_mode"))}
