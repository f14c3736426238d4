"""Tensors inside structured values (tuples, dicts, dataclasses, ``ModelOutput``).

Module outputs come back to users with their structure unchanged; these helpers
visit and rebuild the tensors inside such values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch

_Tensor = torch.Tensor


def tensor_leaves(value: Any) -> list[torch.Tensor]:
    """Every tensor inside ``value``, depth first.

    Example:
        >>> import torch
        >>> len(tensor_leaves((torch.ones(1), {"a": torch.ones(2), "b": 3})))
        2
    """
    if isinstance(value, _Tensor):
        return [value]
    out: list[torch.Tensor] = []
    map_tensors(value, lambda t: out.append(t) or t)
    return out


def map_tensors(value: Any, fn: Callable[[torch.Tensor], Any], depth: int = 0) -> Any:
    """``value`` with every tensor ``t`` replaced by ``fn(t)``, structure kept.

    Example:
        >>> import torch
        >>> map_tensors((torch.ones(1), [torch.zeros(1)]), lambda t: t + 1)
        (tensor([2.]), [tensor([1.])])
    """
    if isinstance(value, _Tensor):
        return fn(value)
    if depth > 8:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: map_tensors(getattr(value, f.name), fn, depth + 1)
                   for f in dataclasses.fields(value) if f.init and hasattr(value, f.name)}
        return dataclasses.replace(value, **changes)
    if isinstance(value, Mapping):
        items = {k: map_tensors(v, fn, depth + 1) for k, v in value.items()}
        return items if type(value) is dict else type(value)(items)
    if isinstance(value, tuple):
        items = [map_tensors(v, fn, depth + 1) for v in value]
        return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
    if isinstance(value, list):
        return [map_tensors(v, fn, depth + 1) for v in value]
    return value


def zip_tensors(values: list[Any], fn: Callable[[list[torch.Tensor]], Any]) -> Any:
    """Combine equally structured values leaf by leaf: ``fn([t1, t2, ...])``.

    Example:
        >>> import torch
        >>> zip_tensors([(torch.ones(1),), (torch.zeros(1),)], torch.cat)
        (tensor([1., 0.]),)
    """
    columns = [tensor_leaves(v) for v in values]
    if len({len(c) for c in columns}) != 1:
        raise ValueError("values do not have the same structure")
    combined = iter([fn(list(group)) for group in zip(*columns)])
    return map_tensors(values[0], lambda _t: next(combined))


def select_item(value: Any, selector: Any) -> Any:
    """One element of a structured value: an index, a key/attribute, or a callable.

    Example:
        >>> select_item(("hidden", "attn"), 0), select_item({"logits": 1}, "logits")
        ('hidden', 1)
    """
    if selector is None:
        return value
    if callable(selector):
        return selector(value)
    if isinstance(selector, str) and not isinstance(value, Mapping):
        return getattr(value, selector)
    return value[selector]


def main_tensor(value: Any) -> torch.Tensor:
    """The tensor a loss should use by default: ``value`` itself, ``.logits``, or the first leaf.

    Example:
        >>> import torch
        >>> main_tensor((torch.ones(2), torch.zeros(1))).shape
        torch.Size([2])
    """
    if isinstance(value, _Tensor):
        return value
    logits = value.get("logits") if isinstance(value, Mapping) else getattr(value, "logits", None)
    if isinstance(logits, _Tensor):
        return logits
    leaves = tensor_leaves(value)
    if not leaves:
        raise TypeError(f"expected a tensor or a structure holding tensors, got {type(value).__name__}")
    return leaves[0]
