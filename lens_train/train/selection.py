"""Resolving the layer names users write into an immutable tap plan.

A name is tried in this order, so it is never ambiguous:

1. a module address (``"layer2"``, ``"blocks.3.mlp"``), with an optional ``:pass``;
   the ``module.`` prefix of DDP/DataParallel, the ``_orig_mod.`` of
   ``torch.compile``, and the ``_fsdp_wrapped_module.`` / ``_checkpoint_wrapped_module.``
   that FSDP1 and activation checkpointing insert are ignored (a name then taps the
   outermost wrapper, whose output is the wrapped module's);
2. an op label from :func:`lens_train.log_forward_pass` (``"relu_5_12"``, short
   ``"relu_5"``, ``"linear_1_1:2"``), resolved on an example forward pass;
3. a unique suffix of a module address (``"layer2"`` finds ``net.layer2``);
4. a glob (``"blocks.*.attn"``) over module addresses, else over op labels;
5. a predicate ``(address, module) -> bool`` over the modules.

Op-level taps are identified by an :class:`OpSite`: the innermost module that runs
the op, the op type, and its index among the ops of that type run directly by that
module call. A branch taken elsewhere in the model does not shift that index.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import (
    AmbiguousLayerError,
    InvalidArgumentError,
    LayerNotFoundError,
    UnsupportedModelError,
    suggestion_text,
)

LISTING = "lt.get_layers(model) (modules) or lt.get_nodes(model, x) (ops)"
# Records that enter the graph without an operation: nothing to intercept.
_SOURCE_TYPES = frozenset({"input", "output", "buffer", "tensor", "fromnumpy"})
_GLOB_CHARS = frozenset("*?[")
_OP_LABEL = re.compile(r"^[a-z0-9]+_\d+(_\d+)?$")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside DDP / DataParallel / ``torch.compile`` wrappers.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 2)
        >>> unwrap_model(torch.nn.DataParallel(net)) is net
        True
    """
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif is_compiled(model):
            model = model._orig_mod
        else:
            return model


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is a ``torch.compile`` wrapper."""
    return type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod")


# Segments that wrappers insert anywhere in an address: torch.compile, FSDP1, checkpoint_wrapper.
_WRAPPER_SEGMENTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})


def clean_name(name: str) -> str:
    """``name`` without wrapper segments (``module.`` prefixes; ``_orig_mod``,
    ``_fsdp_wrapped_module``, ``_checkpoint_wrapped_module`` anywhere).

    Example:
        >>> clean_name("module._orig_mod.layer2.0")
        'layer2.0'
        >>> clean_name("_fsdp_wrapped_module.blocks.0._checkpoint_wrapped_module.attn")
        'blocks.0.attn'
    """
    parts = name.split(".")
    while parts and parts[0] == "module":
        parts.pop(0)
    return ".".join(p for p in parts if p not in _WRAPPER_SEGMENTS)


def split_pass(name: str) -> tuple[str, int | None]:
    """``"fc:2"`` -> ``("fc", 2)``; ``"fc"`` -> ``("fc", None)``."""
    base, sep, num = name.rpartition(":")
    if sep and num.isdigit() and int(num) > 0:
        return base, int(num)
    return name, None


class ModuleIndex:
    """The modules of the unwrapped model under their clean addresses (root: ``""``)."""

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise UnsupportedModelError(
                f"model must be a torch.nn.Module, got {type(model).__name__} {model!r:.60}. "
                "Pass the module itself, e.g. lt.Taps(model, ['layer2'])."
            )
        self.root = unwrap_model(model)
        self.modules: dict[str, nn.Module] = {}
        self.real: dict[str, str] = {}
        for address, module in self.root.named_modules():
            clean = clean_name(address)
            if clean not in self.modules or is_compiled(self.modules[clean]):
                self.modules[clean] = module
                self.real[clean] = address

    def addresses(self) -> list[str]:
        """Every clean module address except the root."""
        return [a for a in self.modules if a]

    def find(self, name: str) -> str | None:
        """The clean address ``name`` names (exactly or as a unique suffix), or None."""
        name = clean_name(name)
        if name in self.modules:
            return name
        hits = [a for a in self.modules if a.endswith("." + name)]
        if len(hits) > 1:
            raise AmbiguousLayerError(
                f"{name!r} is the end of several module addresses: {', '.join(hits[:8])}. "
                f"Use the full address, e.g. lt.Taps(model, [{hits[0]!r}])."
            )
        return hits[0] if hits else None


@dataclass(frozen=True, slots=True)
class OpSite:
    """Where one op output sits: module call, op type, index within the call, output."""

    address: str
    call: int
    layer_type: str
    index: int
    output_index: int


def op_sites(log: Any) -> list[OpSite | None]:
    """The :class:`OpSite` of every layer pass of ``log`` (None for inputs, buffers...).

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.get_model_metadata(torch.nn.Sequential(torch.nn.ReLU()), torch.ones(2))
        >>> op_sites(log)[1]
        OpSite(address='0', call=1, layer_type='relu', index=0, output_index=0)
    """
    counts: dict[tuple[str, str], int] = {}
    sites: list[OpSite | None] = []
    current = 0
    for layer in log.layers:
        if layer.layer_type in _SOURCE_TYPES or layer.is_input or layer.is_output or layer.is_buffer:
            sites.append(None)
            continue
        call = layer.containing_modules[-1] if layer.containing_modules else ":1"
        if layer.op_index_in_call >= 0:  # counted by the capture, bookkeeping ops included
            current = layer.op_index_in_call
        elif layer.output_index == 0:  # the outputs of one op are consecutive records
            key = (call, layer.layer_type)
            current = counts.get(key, 0)
            counts[key] = current + 1
        address, _, num = call.rpartition(":")
        sites.append(OpSite(address, int(num), layer.layer_type, current, layer.output_index))
    return sites


@dataclass(frozen=True, slots=True)
class TapSpec:
    """One resolved tap: a module's output, or an op's output inside ``address``."""

    key: str
    kind: str  # "module" or "op"
    address: str  # clean address; for op taps, the module that runs the op
    pass_num: int | None = None
    op_keys: frozenset[tuple[str, int, int]] = frozenset()  # (layer type, index, output index)

    @property
    def label(self) -> str:
        """The name with its pass, as shown in messages."""
        return f"{self.key}:{self.pass_num}" if self.pass_num else self.key


@dataclass(frozen=True)
class Selection:
    """The resolved plan: specs, and which user keys name which specs."""

    specs: tuple[TapSpec, ...]
    keys: dict[Any, tuple[int, ...]]
    grouped: frozenset[Any]

    @property
    def needs_ops(self) -> bool:
        """Whether any tap is op-level (interception inside a module)."""
        return any(s.kind == "op" for s in self.specs)


def as_selector_list(layers: Any) -> list[Any]:
    """``layers`` as a list of names and predicates, validated."""
    items = [layers] if isinstance(layers, str) or callable(layers) else layers
    if not isinstance(items, Sequence) or isinstance(items, str) or not items:
        raise InvalidArgumentError(
            f"layers must be a name, a predicate, or a non-empty list of them, got {layers!r}. "
            "Example: lt.Taps(model, ['layer2', 'relu_5', 'blocks.*.attn'])."
        )
    for item in items:
        if not (isinstance(item, str) or callable(item)):
            raise InvalidArgumentError(
                f"Each layer must be a string or a predicate (address, module) -> bool, got {type(item).__name__} {item!r}."
            )
    return list(items)


class Resolver:
    """Turns selectors into a :class:`Selection`; fetches the op log only when needed."""

    def __init__(self, index: ModuleIndex, log_fn: Callable[[], Any] | None) -> None:
        self.index = index
        self._log_fn = log_fn
        self._log: Any = None
        self._sites: list[OpSite | None] | None = None
        self.specs: list[TapSpec] = []
        self.keys: dict[Any, tuple[int, ...]] = {}
        self.grouped: set[Any] = set()

    def resolve(self, selectors: list[Any]) -> Selection:
        """Resolve every selector; unknown names raise with the closest names."""
        for sel in selectors:
            if isinstance(sel, nn.Module):
                raise InvalidArgumentError(self._module_message(sel))
            if isinstance(sel, str):
                self._resolve_name(sel)
            else:
                found = [a for a, m in self.index.modules.items() if a and sel(a, m)]
                if not found:
                    raise LayerNotFoundError(f"The predicate {sel!r} matches no module. List modules with {LISTING}.")
                self._bind(sel, [TapSpec(a, "module", a) for a in found], group=True)
        return Selection(tuple(self.specs), dict(self.keys), frozenset(self.grouped))

    def _module_message(self, module: nn.Module) -> str:
        address = next((a for a, m in self.index.modules.items() if m is module), None)
        if address:
            return (f"Layers are named, not passed as module objects: got the {type(module).__name__} at {address!r}. "
                    f"Pass its address: lt.Taps(model, [{address!r}]).")
        return (f"Layers are named, not passed as module objects, and this {type(module).__name__} is not part of the "
                f"model. Pass a module address of the model, listed by {LISTING}.")

    def needs_log(self, selectors: list[Any]) -> bool:
        """Whether some selector is not a module name (so an example pass is needed)."""
        for sel in selectors:  # checked here, when the taps are made, not at the first forward pass
            if isinstance(sel, nn.Module):
                raise InvalidArgumentError(self._module_message(sel))
        for sel in selectors:
            if not isinstance(sel, str):
                continue
            base, _ = split_pass(sel)
            if _is_glob(base):
                if not any(fnmatch.fnmatchcase(a, clean_name(base)) for a in self.index.addresses()):
                    return True
            elif self._module_or_none(base) is None:
                return True
        return False

    def check_deferrable(self, selectors: list[Any]) -> None:
        """Without an example pass, raise now for names that cannot be op labels either."""
        for sel in selectors:
            if not isinstance(sel, str):
                continue
            base, _ = split_pass(sel)
            if _is_glob(base) or _OP_LABEL.match(base) or self._module_or_none(base) is not None:
                continue
            raise LayerNotFoundError(
                f"lt.Taps: no module named {sel!r}, and it is not shaped like an op label ('relu_5', 'relu_5_12')."
                + suggestion_text(base, self.index.addresses(), LISTING)
            )

    def _module_or_none(self, base: str) -> str | None:
        try:
            return self.index.find(base)
        except AmbiguousLayerError:
            return "ambiguous"

    def _resolve_name(self, name: str) -> None:
        base, pass_num = split_pass(name)
        if _is_glob(base):
            self._bind(name, self._glob(base, pass_num), group=True)
            return
        clean = clean_name(base)
        if clean in self.index.modules:
            self._bind(name, [TapSpec(clean, "module", clean, pass_num)])
            return
        log = self._get_log(name) if self._log_fn is not None or self._log is not None else None
        if log is not None and self._op_passes(base):
            self._bind(name, [self._op_spec(base, pass_num)])
            return
        address = self.index.find(base)
        if address is None:
            raise LayerNotFoundError(f"lt.Taps: no module or op named {name!r}." + suggestion_text(base, self._names(), LISTING))
        self._bind(name, [TapSpec(address, "module", address, pass_num)])

    def _glob(self, pattern: str, pass_num: int | None) -> list[TapSpec]:
        clean = clean_name(pattern)
        found = [a for a in self.index.addresses() if fnmatch.fnmatchcase(a, clean)]
        if found:
            return [TapSpec(a, "module", a, pass_num) for a in found]
        log = self._get_log(pattern)
        labels = list(dict.fromkeys(layer.layer_label_no_pass for layer, s in zip(log.layers, self._sites) if s))
        hits = [lab for lab in labels if fnmatch.fnmatchcase(lab, pattern)]
        if not hits:
            raise LayerNotFoundError(f"The pattern {pattern!r} matches no module address or op label. List names with {LISTING}.")
        return [self._op_spec(lab, pass_num) for lab in hits]

    def _bind(self, key: Any, specs: list[TapSpec], group: bool = False) -> None:
        indices = []
        for spec in specs:
            if spec not in self.specs:
                self.specs.append(spec)
            i = self.specs.index(spec)
            indices.append(i)
            self.keys.setdefault(spec.label, (i,))
        self.keys[key] = tuple(indices)
        if group:
            self.grouped.add(key)

    def _get_log(self, name: str) -> Any:
        if self._log is None:
            if self._log_fn is None:
                raise LayerNotFoundError(f"lt.Taps: {name!r} is not a module address; op labels need an example pass.")
            self._log = self._log_fn()
            self._sites = op_sites(self._log)
        return self._log

    def _names(self) -> list[str]:
        names = self.index.addresses()
        if self._log is not None:
            for layer, site in zip(self._log.layers, self._sites):
                if site is not None:
                    names += [layer.layer_label_short, layer.layer_label_no_pass]
        return names

    def _op_passes(self, base: str) -> list[int]:
        """Indices (into the log) of the passes of the op layer ``base``."""
        log = self._log
        return [i for i, layer in enumerate(log.layers) if base in (layer.layer_label_no_pass, layer.layer_label_short)]

    def _op_spec(self, base: str, pass_num: int | None) -> TapSpec:
        idx = self._op_passes(base)
        if pass_num is not None and pass_num > len(idx):
            raise LayerNotFoundError(f"Op {base!r} ran {len(idx)} time(s) in the example pass; there is no pass {pass_num}.")
        sites = [self._sites[i] for i in idx]
        label = self._log.layers[idx[0]].layer_label_no_pass
        if any(s is None for s in sites):
            raise InvalidArgumentError(
                f"{base!r} is an input, output, buffer or constant, not an operation. Tap the op or module that uses it."
            )
        module = self._module_output(idx, sites)
        if module is not None:
            return TapSpec(module, "module", module, pass_num)
        address = sites[0].address
        keys = frozenset((s.layer_type, s.index, s.output_index) for s in sites)
        return TapSpec(label, "op", clean_name(address), pass_num, keys)

    def _module_output(self, idx: list[int], sites: list[OpSite]) -> str | None:
        """The module whose whole output this op is, in every call (a module tap is cheaper)."""
        log = self._log
        address = sites[0].address
        if not address or any(s.address != address for s in sites):
            return None
        calls = log.modules[address].calls
        if len(calls) != len(idx):
            return None
        for i, site in zip(idx, sites):
            call = calls[site.call - 1]
            if f"{address}:{site.call}" not in log.layers[i].module_outputs or len(call["outputs"]) != 1:
                return None
        return clean_name(address)


def _is_glob(name: str) -> bool:
    return any(c in _GLOB_CHARS for c in name)
