"""The one rule for model inputs, shared by every function that runs a model.

``input_args`` is a tensor (one positional argument), a tuple of positional
arguments, or a list of positional arguments. A list is passed as ONE argument when
the model's ``forward`` takes exactly one positional parameter and the list has
more than one element; to be explicit either way, wrap the list in a tuple:
``(my_list,)``. ``input_kwargs`` holds keyword arguments (``input_ids=...``).
Nested lists, tuples and dicts of tensors are passed through unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import InputMismatchError, InvalidArgumentError, suggestion_text


def normalize_inputs(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` ready for ``model(*args, **kwargs)``.

    Example:
        >>> import torch
        >>> args, kwargs = normalize_inputs(torch.nn.Identity(), torch.ones(2))
        >>> len(args), kwargs
        (1, {})
    """
    if input_kwargs is not None and not isinstance(input_kwargs, Mapping):
        raise InvalidArgumentError(
            f"input_kwargs must be a dict of keyword arguments, got {type(input_kwargs).__name__} {input_kwargs!r:.60}. "
            "Example: log_forward_pass(model, (), input_kwargs={'input_ids': ids})."
        )
    kwargs = dict(input_kwargs or {})
    if kwargs:
        _check_keywords(model, kwargs)
    if input_args is None:
        return (), kwargs
    if isinstance(input_args, tuple):
        return input_args, kwargs
    if isinstance(input_args, list):
        if len(input_args) > 1 and _single_positional(model):
            return (input_args,), kwargs
        return tuple(input_args), kwargs
    return (input_args,), kwargs


def _check_keywords(model: nn.Module, kwargs: dict) -> None:
    """Unknown keyword names fail here, naming the closest parameters of ``forward``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise InputMismatchError(
            f"{type(model).__name__}.forward has no parameter {unknown[0]!r} (input_kwargs keys: {list(kwargs)})."
            + suggestion_text(str(unknown[0]), accepted, f"inspect.signature({type(model).__name__}.forward)")
        )


def _single_positional(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    return len(positional) == 1 and not varargs


def named_tensors(args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
    """Every tensor in the inputs with a readable path: ``args[0]``, ``kwargs['mask']``."""
    out: list[tuple[str, torch.Tensor]] = []
    for i, a in enumerate(args):
        _walk(a, f"args[{i}]", out, 0)
    for k, v in kwargs.items():
        _walk(v, f"kwargs[{k!r}]", out, 0)
    return out


def _walk(value: Any, path: str, out: list, depth: int) -> None:
    if isinstance(value, torch.Tensor):
        out.append((path, value))
    elif depth > 8:
        return
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _walk(v, f"{path}[{k!r}]", out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _walk(v, f"{path}[{i}]", out, depth + 1)
