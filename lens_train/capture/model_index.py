"""One walk over a model's modules, parameters and buffers, shared by every part of a capture."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

HOT_PATH_ABI = 15  # what this package passes to _hotpath (bumped in _hotpath.c with every change of it)
try:  # the common cases of capture in C (built with the package where a compiler is available; optional)
    from . import _hotpath as loaded_hotpath
except ImportError:
    loaded_hotpath = None
# LENS_TRAIN_PURE_PYTHON=1: every part on the Python path (debugging); a build older than this code is not used
if os.environ.get("LENS_TRAIN_PURE_PYTHON") or getattr(loaded_hotpath, "ABI", None) != HOT_PATH_ABI:
    loaded_hotpath = None
# parent address -> {name: address}: the address strings of every capture's walk, made once (see _hotpath_model.c)
_ADDRESSES: dict[str, dict[str, str]] = {}


@dataclass(frozen=True, slots=True)
class ModelIndex:
    """Every ``(address, object)`` of a model; shared objects appear under each of their names.

    Example:
        >>> import torch
        >>> index = index_model(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
        >>> [a for a, _ in index.modules], [a for a, _ in index.params], [a for a, _ in index.buffers][:1]
        (['', '0', '1'], ['0.weight', '0.bias', '1.weight', '1.bias'], ['1.running_mean'])
    """

    modules: tuple[tuple[str, nn.Module], ...]
    params: tuple[tuple[str, nn.Parameter], ...]
    buffers: tuple[tuple[str, torch.Tensor], ...]
    facts: ModuleFacts | None = None  # module_facts(modules), when the caller made them

    def module_facts(self) -> ModuleFacts:
        """What a capture keeps of the modules (:func:`module_facts`)."""
        return self.facts if self.facts is not None else module_facts(self.modules)

    def unique_params(self) -> list[tuple[str, nn.Parameter]]:
        """Each parameter once, under its first name (as ``model.named_parameters()``)."""
        seen: set[int] = set()
        return [(a, p) for a, p in self.params if not (id(p) in seen or seen.add(id(p)))]


def index_model(model: nn.Module, modules: tuple[tuple[str, nn.Module], ...] | None = None,
                facts: ModuleFacts | None = None) -> ModelIndex:
    """Walk ``model`` once (``named_modules`` is a recursive generator: one walk, not ten).

    ``modules``: :func:`walk_modules` of ``model`` made already (its parameters and
    buffers are read now: a module's buffers may have been swapped since); ``facts``:
    :func:`module_facts` of them, kept in the index.
    """
    modules = walk_modules(model) if modules is None else modules
    found = loaded_hotpath.index_tensors(modules, _ADDRESSES) if loaded_hotpath is not None else None
    if found is not None:
        return ModelIndex(modules, *found, facts)
    params = tuple((f"{a}.{n}" if a else n, p) for a, m in modules for n, p in m._parameters.items() if p is not None)
    buffers = tuple((f"{a}.{n}" if a else n, b) for a, m in modules for n, b in m._buffers.items() if b is not None)
    return ModelIndex(modules, params, buffers, facts)


@dataclass(slots=True)
class ModuleFacts:
    """What a capture keeps of a model's walked modules, read in one pass (see :func:`module_facts`)."""

    unique: list[nn.Module]  # each module once, in walk order
    names: dict[int, str]  # id(module) -> its first address
    types: dict[int, str]  # id(module) -> its type's name
    with_buffers: list[nn.Module]  # the unique modules that own buffers, and the others
    bare: list[nn.Module]
    sharded: bool  # some module is one of FSDP's (a type name starting with "FSDP")


def module_facts(modules: tuple[tuple[str, nn.Module], ...]) -> ModuleFacts:
    """The :class:`ModuleFacts` of a module walk (:func:`walk_modules`).

    Example:
        >>> lin = nn.Linear(1, 1)
        >>> facts = module_facts(walk_modules(nn.Sequential(lin, nn.BatchNorm1d(1), lin)))
        >>> len(facts.unique), facts.names[id(lin)], facts.types[id(lin)], len(facts.with_buffers), facts.sharded
        (3, '0', 'Linear', 1, False)
    """
    found = loaded_hotpath.module_facts(modules, "FSDP") if loaded_hotpath is not None else None
    if found is not None:
        return ModuleFacts(*found)
    unique = list({id(m): m for _, m in modules}.values())
    return ModuleFacts(unique, first_names(modules), {id(m): type(m).__name__ for m in unique},
                       [m for m in unique if m._buffers], [m for m in unique if not m._buffers],
                       any(type(m).__name__.startswith("FSDP") for m in unique))


def first_names(named: Any) -> dict[int, str]:
    """``id(object) -> name`` from ``named_modules()``-style pairs, keeping the first name of shared objects.

    Example:
        >>> lin = torch.nn.Linear(1, 1)
        >>> list(first_names([("a", lin), ("b", lin)]).values())
        ['a']
    """
    out: dict[int, str] = {}
    for name, obj in named:
        out.setdefault(id(obj), name)
    return out


_NAMED_MODULES = nn.Module.named_modules


def walk_modules(model: nn.Module) -> tuple[tuple[str, nn.Module], ...]:
    """``tuple(model.named_modules(remove_duplicate=False))``, in one loop.

    ``named_modules`` is a recursive generator: each module is passed up through one
    generator per level above it (a 24-block transformer: 4000 generator steps for 220
    modules). A model whose modules define their own ``named_modules`` gets theirs.

    Example:
        >>> shared = nn.Linear(1, 1)
        >>> model = nn.Sequential(shared, nn.Sequential(nn.ReLU(), shared))
        >>> walk_modules(model) == tuple(model.named_modules(remove_duplicate=False))
        True
    """
    walked = loaded_hotpath.walk_modules(model, _NAMED_MODULES, _ADDRESSES) if loaded_hotpath is not None else None
    if walked is not None:
        return walked
    out = []
    stack = [("", model)]
    pop, push = stack.pop, stack.append
    while stack:
        prefix, module = pop()
        if type(module).named_modules is not _NAMED_MODULES:
            return tuple(model.named_modules(remove_duplicate=False))
        out.append((prefix, module))
        children = module._modules
        if children:
            dot = prefix + "." if prefix else ""
            for name, child in reversed(children.items()):
                if child is not None:
                    push((dot + name, child))
    return tuple(out)
