"""Resolving user keys (labels, module addresses, ints, substrings) to layer passes.

Resolution order, so keys are never ambiguous: exact label, short label,
``label:pass``, module address (with optional ``:pass``), then int position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import AmbiguousLayerError, InvalidArgumentError, LayerNotFoundError, suggestion_text

# A key maps to one pass index, or to several when it names a multi-pass layer or a
# module called several times (then a ``:pass`` suffix is required).
KeyMap = dict[str, int | tuple[int, ...]]


def build_key_map(layers: Sequence[Any]) -> KeyMap:
    """All lookup keys of all passes; higher-priority keys overwrite lower ones."""
    return _key_map([_key_row(layer) for layer in layers])


def _key_row(layer: Any) -> tuple[str, int, str, list[str]]:
    return layer.layer_label_no_pass, layer.pass_num, layer.layer_label_short, layer.module_outputs


def _key_map(rows: Sequence[tuple[str, int, str, list[str]]]) -> KeyMap:
    module_keys: dict[str, list[int]] = {}
    short_keys: dict[str, list[int]] = {}
    label_keys: dict[str, list[int]] = {}
    for i, (label, pass_num, short, module_outputs) in enumerate(rows):
        label_keys.setdefault(label, []).append(i)
        label_keys.setdefault(f"{label}:{pass_num}", []).append(i)
        short_keys.setdefault(short, []).append(i)
        short_keys.setdefault(f"{short}:{pass_num}", []).append(i)
        for mod in module_outputs:
            address = mod.rsplit(":", 1)[0]
            module_keys.setdefault(mod, []).append(i)
            module_keys.setdefault(address, []).append(i)
    keys: KeyMap = {}
    for table in (module_keys, short_keys, label_keys):
        for key, idx in table.items():
            uniq = tuple(dict.fromkeys(idx))
            keys[key] = uniq[0] if len(uniq) == 1 else uniq
    return keys


class LayerKeys:
    """The lookup keys of one log's passes, worked out on first use (most captures are never searched).

    It keeps what the keys are made of, not the layers, so a layer that outlives its log
    still knows its keys, and no reference cycle keeps a log's tensors alive.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.ReLU()), torch.ones(2))
        >>> keys = LayerKeys(log.layers)
        >>> keys.map["0"], keys.of(1)
        (1, ['0:1', '0', 'relu_1', 'relu_1:1', 'relu_1_1', 'relu_1_1:1', 1, -2])
    """

    __slots__ = ("_rows", "_map", "_per_layer", "source")

    def __init__(self, layers: Sequence[Any] = (), source: Any = None) -> None:
        # a capture's source (lens_train.capture.build.LayerSource) gives the rows, and fills its pending layers
        self.source = source
        self._rows = None if source is not None else [_key_row(layer) for layer in layers]
        self._map: KeyMap | None = None
        self._per_layer: list[list[str | int]] | None = None

    @property
    def map(self) -> KeyMap:
        """Key -> pass index (or indices, for a key that names several passes)."""
        if self._map is None:
            self._map = _key_map(self.rows)
        return self._map

    @property
    def rows(self) -> list[tuple[str, int, str, list[str]]]:
        """(label without pass, pass number, short label, module outputs) of every pass."""
        if self._rows is None:
            self._rows = self.source.key_rows()
        return self._rows

    def of(self, position: int) -> list[str | int]:
        """The keys that name the pass at ``position``, ints last (a new list)."""
        if self._per_layer is None:
            n = len(self.rows)
            per_layer: list[list[str | int]] = [[] for _ in range(n)]
            for key, idx in self.map.items():
                if not isinstance(idx, tuple):
                    per_layer[idx].append(key)
            for i, keys in enumerate(per_layer):
                keys += (i, i - n)
            self._per_layer = per_layer
        return list(self._per_layer[position])


def resolve(keys: KeyMap, layers: Sequence[Any], key: Any) -> int:
    """The index of the one pass that ``key`` names, or a helpful error."""
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise LayerNotFoundError(
            f"Layer keys are strings or ints, got {type(key).__name__} {key!r}. "
            "Use a label, a module address or an index, e.g. log['conv2d_3_7'], log['features.6'] or log[7]."
        )
    if isinstance(key, int):
        n = len(layers)
        if -n <= key < n:
            return key % n
        raise LayerNotFoundError(f"Layer index {key} is out of range for a log of {n} layers (use -{n}..{n - 1}), "
                                 f"e.g. log[0] or log[-1].")
    hit = keys.get(key)
    if hit is None:
        raise LayerNotFoundError(
            f"No layer or module named {key!r}." + suggestion_text(key, keys, "log.layer_labels or log.modules")
        )
    if isinstance(hit, tuple):
        names = ", ".join(layers[i].layer_label for i in hit)
        raise AmbiguousLayerError(
            f"{key!r} names {len(hit)} passes: {names}. Ask for one pass, e.g. log[{layers[hit[0]].layer_label!r}]."
        )
    return hit


def select(keys: KeyMap, layers: Sequence[Any], selectors: Any) -> list[int]:
    """Indices of the passes chosen by ``layers_to_save``-style selectors (in execution order).

    Each selector is a key understood by :func:`resolve` (a multi-pass key selects all
    its passes), or a substring of labels (``"linear"`` selects every linear op).
    """
    if isinstance(selectors, (str, int)):
        selectors = [selectors]
    if not isinstance(selectors, Iterable):
        raise InvalidArgumentError(
            f"layers_to_save must be 'all', None, or a list of names/ints, got {selectors!r}. "
            "Example: layers_to_save=['conv2d_3_7', 'features.6', -1, 'linear']."
        )
    chosen: set[int] = set()
    for sel in selectors:
        chosen.update(_select_one(keys, layers, sel))
    return sorted(chosen)


def _select_one(keys: KeyMap, layers: Sequence[Any], sel: Any) -> Iterable[int]:
    if isinstance(sel, int) and not isinstance(sel, bool):
        if not -len(layers) <= sel < len(layers):
            raise LayerNotFoundError(f"layers_to_save entry {sel!r} is out of range for a log of {len(layers)} layers. "
                                     f"Example: layers_to_save=[0, -1] (ints from {-len(layers)} to {len(layers) - 1}).")
        return [resolve(keys, layers, sel)]
    if not isinstance(sel, str):
        raise InvalidArgumentError(f"layers_to_save entries must be strings or ints, got {type(sel).__name__} {sel!r}. "
                                   "Example: layers_to_save=['conv2d_3_7', 'features.6', -1, 'linear'].")
    hit = keys.get(sel)
    if hit is not None:
        return hit if isinstance(hit, tuple) else [hit]
    matches = [i for i, layer in enumerate(layers) if sel in layer.layer_label]
    if not matches:
        raise LayerNotFoundError(
            f"layers_to_save entry {sel!r} matches no layer." + suggestion_text(sel, keys, "log.layer_labels")
        )
    return matches
