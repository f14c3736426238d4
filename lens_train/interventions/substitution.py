""""What if these weights / this nonlinearity were different?": swap them in for one block, always undone."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..capture.scoping import interrupt_guard
from ..errors import ArgumentTypeError, InvalidArgumentError, LayerNotFoundError, suggestion_text


@contextmanager
def substituted(model: nn.Module, params: Mapping[str, torch.Tensor] | None = None,
                modules: Mapping[str, nn.Module] | None = None) -> Iterator[nn.Module]:
    """Run a block with some parameters and submodules of ``model`` replaced, then put the originals back.

    A parameter is replaced wherever the model holds it (tied weights stay tied); a tensor
    that is not an ``nn.Parameter`` is wrapped in one that shares its memory (pass an
    ``nn.Parameter`` to get gradients on your own tensor). A module is replaced at the
    address given. The originals are restored on every exit path, Ctrl-C included.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> with substituted(model, {"0.bias": torch.ones(2)}, {"1": torch.nn.Tanh()}):
        ...     type(model[1]).__name__, model[0].bias.tolist()
        ('Tanh', [1.0, 1.0])
        >>> type(model[1]).__name__
        'ReLU'
    """
    swaps = _param_swaps(model, params or {}) + _module_swaps(model, modules or {})
    done: list[tuple[dict, str, Any]] = []
    with interrupt_guard() as guard:
        try:
            for table, name, new in swaps:
                done.append((table, name, table[name]))
                table[name] = new
            guard.open()
            try:
                yield model
            finally:
                guard.close()
        finally:
            for table, name, old in reversed(done):
                table[name] = old


def _param_swaps(model: nn.Module, params: Mapping[str, Any]) -> list[tuple[dict, str, Any]]:
    named = dict(model.named_parameters(remove_duplicate=False))
    swaps = []
    for address, value in params.items():
        old = named.get(address)
        if old is None:
            raise LayerNotFoundError(f"params: the model has no parameter {address!r}."
                                     + suggestion_text(str(address), named, "[n for n, _ in model.named_parameters()]"))
        if not isinstance(value, torch.Tensor):
            raise ArgumentTypeError(f"params[{address!r}] must be a tensor, got {type(value).__name__} {value!r:.40}. "
                                    f"Example: params={{{address!r}: torch.zeros{tuple(old.shape)}}}.")
        if value.shape != old.shape or value.dtype != old.dtype:
            raise InvalidArgumentError(
                f"params[{address!r}] has shape {tuple(value.shape)} and dtype {value.dtype}; the parameter has "
                f"{tuple(old.shape)} and {old.dtype}. Pass a tensor of that shape, e.g. .to({old.dtype}).reshape{tuple(old.shape)}."
            )
        new = value if isinstance(value, nn.Parameter) else nn.Parameter(value.detach(), requires_grad=old.requires_grad)
        swaps += [(m._parameters, n, new) for m in model.modules() for n, p in m._parameters.items() if p is old]
    return swaps


def _module_swaps(model: nn.Module, modules: Mapping[str, Any]) -> list[tuple[dict, str, Any]]:
    named = dict(model.named_modules(remove_duplicate=False))
    swaps = []
    for address, value in modules.items():
        if address not in named or address == "":
            raise LayerNotFoundError(f"modules: the model has no submodule {address!r}."
                                     + suggestion_text(str(address), [a for a in named if a], "dict(model.named_modules())"))
        if not isinstance(value, nn.Module):
            raise ArgumentTypeError(f"modules[{address!r}] must be an nn.Module, got {type(value).__name__} {value!r:.40}. "
                                    f"Example: modules={{{address!r}: torch.nn.GELU()}}.")
        parent, _, attr = address.rpartition(".")
        swaps.append((named[parent]._modules, attr, value))
    return swaps
