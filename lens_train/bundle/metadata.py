"""A :class:`ModelLog`'s metadata as plain JSON, and back: every non-tensor value explicitly.

Values are JSON where JSON can say them exactly; everything else is a one-key object
tagged with ``$``: ``{"$tuple": [...]}``, ``{"$float": "nan"}``, ``{"$dtype": "bfloat16"}``,
``{"$device": "cuda:0"}``, ``{"$dict": [[key, value], ...]}`` (non-string keys) and
``{"$tensor": name}`` (a tensor stored in a shard). Nothing is ever unpickled or evaluated.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from .format import dtype_name, parse_dtype
from .schema import DERIVED_FIELDS
from ..capture.layer_log import FrameInfo, LayerLog
from ..capture.model_log import ModelLog, ModuleLog, ModuleTable
from ..errors import BundleError

# LayerLog fields that hold tensors (stored in shards, read lazily); their names in the bundle.
TENSOR_FIELDS = {"tensor_contents": "activation", "transformed_activation": "transformed", "gradient": "gradient",
                 "original_activation": "original"}
_PLAIN = (str, int, bool, type(None))


class Unencodable(TypeError):
    """A value that is neither JSON-able nor a tensor (it is left out, with a note)."""


def encode_value(value: Any, put_tensor: Callable[[torch.Tensor], dict]) -> Any:
    """``value`` as tagged JSON; tensors become whatever ``put_tensor`` returns.

    Example:
        >>> encode_value({"a": (1, float("inf"))}, put_tensor=None)
        {'a': {'$tuple': [1, {'$float': 'inf'}]}}
    """
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, torch.Tensor):
        return put_tensor(value)
    if isinstance(value, list):
        return [encode_value(v, put_tensor) for v in value]
    if isinstance(value, tuple) and type(value) in (tuple, torch.Size):
        return {"$tuple": [encode_value(v, put_tensor) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)).startswith("$")):
            return {k: encode_value(v, put_tensor) for k, v in value.items()}
        return {"$dict": [[encode_value(k, put_tensor), encode_value(v, put_tensor)] for k, v in value.items()]}
    if isinstance(value, torch.dtype):
        return {"$dtype": dtype_name(value)}
    if isinstance(value, torch.device):
        return {"$device": str(value)}
    raise Unencodable(f"a {type(value).__module__}.{type(value).__qualname__} is neither JSON-able nor a tensor")


def decode_value(data: Any, get_tensor: Callable[[str], Any], where: str) -> Any:
    """Inverse of :func:`encode_value`; ``get_tensor(name)`` supplies stored tensors.

    Example:
        >>> decode_value({"a": {"$tuple": [1, {"$float": "inf"}]}}, None, "x")
        {'a': (1, inf)}
    """
    kind = type(data)
    if kind is str or kind is int or kind is float or kind is bool or data is None:
        return data
    if kind is list:
        return [v if type(v) is str else decode_value(v, get_tensor, where) for v in data]
    if not isinstance(data, dict):
        raise BundleError(f"{where} holds a value of unexpected type {type(data).__name__}.")
    if len(data) == 1:
        (key, inner), = data.items()
        if key.startswith("$"):
            return _decode_tagged(key, inner, get_tensor, where)
    return {k: decode_value(v, get_tensor, where) for k, v in data.items()}


def _decode_tagged(tag: str, inner: Any, get_tensor: Callable[[str], Any], where: str) -> Any:
    if tag == "$tuple" and isinstance(inner, list):
        return tuple(decode_value(v, get_tensor, where) for v in inner)
    if tag == "$float" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    if tag == "$tensor" and isinstance(inner, str):
        return get_tensor(inner)
    if tag == "$dtype":
        return parse_dtype(inner, where)
    if tag == "$device" and isinstance(inner, str):
        try:
            return torch.device(inner)
        except RuntimeError:
            raise BundleError(f"{where} names an invalid device {inner!r}.") from None
    if tag == "$dict" and isinstance(inner, list) and all(isinstance(p, list) and len(p) == 2 for p in inner):
        pairs = [(decode_value(k, get_tensor, where), decode_value(v, get_tensor, where)) for k, v in inner]
        try:
            return dict(pairs)
        except TypeError:
            raise BundleError(f"{where} holds a dict with an unhashable key.") from None
    raise BundleError(f"{where} holds an unknown or malformed tagged value {tag!r}.")


def tensor_key(t: torch.Tensor) -> tuple:
    """Identity of a tensor's bytes in memory: two tensors with one key hold the same values."""
    return (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, str(t.device))


class LogEncoder:
    """Turns a :class:`ModelLog` into the JSON of one capture unit, storing tensors via ``put``.

    ``put(name, tensor)`` stores a tensor; a tensor stored once is referenced again, not
    stored twice. Values that cannot be stored are left out with a note in ``notes``.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2))
        >>> stored = {}
        >>> unit = LogEncoder(stored.__setitem__).encode_log(log)
        >>> sorted(stored), unit["model_name"]  # the output holds the ReLU's bytes: stored once
        (['activation/0', 'activation/1'], 'ReLU')
    """

    def __init__(self, put: Callable[[str, torch.Tensor], None]) -> None:
        self.put = put
        self.notes: list[str] = []
        self.seen: dict[tuple, str] = {}

    def tensor_ref(self, name: str, t: torch.Tensor) -> dict:
        """Store ``t`` as ``name`` unless its bytes are stored already; its JSON reference."""
        key = tensor_key(t)
        if key not in self.seen:
            self.put(name, t)
            self.seen[key] = name
        return {"$tensor": self.seen[key]}

    def value(self, value: Any, name: str, what: str) -> Any:
        """``value`` encoded, its tensors stored as ``name`` (``name/i`` inside containers)."""
        if isinstance(value, _PLAIN):
            return value
        try:
            if isinstance(value, torch.Tensor):
                return self.tensor_ref(name, value)
            count = itertools.count()
            return encode_value(value, lambda t: self.tensor_ref(f"{name}/{next(count)}", t))
        except (Unencodable, TypeError, ValueError) as exc:
            self.notes.append(f"{what} was not saved: {exc}.")
            return None

    def field(self, layer: LayerLog, column: str, value: Any) -> Any:
        """One LayerLog field as JSON."""
        if isinstance(value, _PLAIN) and column != "tensor_contents":
            return value
        if column == "tensor_dtype":
            return None if value is None else dtype_name(value)
        if column == "raw_frames":
            return [_frame_json(f) for f in value]
        if column == "tensor_contents" and value is None and layer._materialize is not None:
            # a lazily loaded log: read now and not kept, so never matched by address later
            name = f"activation/{layer.operation_index}"
            self.put(name, layer._materialize(layer))
            return {"$tensor": name}
        prefix = TENSOR_FIELDS.get(column, column)
        return self.value(value, f"{prefix}/{layer.operation_index}", f"{column} of layer {layer.layer_label}")

    def encode_log(self, log: ModelLog) -> dict[str, Any]:
        """The unit metadata of ``log``: layers (as columns and rows), modules, meta, output."""
        columns = [f.name for f in dataclasses.fields(LayerLog) if f.name not in DERIVED_FIELDS]
        rows = [[self.field(layer, c, getattr(layer, c)) for c in columns] for layer in log.layers]
        meta = log.meta
        return {
            "kind": "capture",
            "model_name": log.model_name,
            "capture": {k: self.value(meta.get(k), k, f"meta[{k!r}]") for k in ("random_seed", "train_mode", "layers_to_save")},
            "meta": self.value(meta, "meta", "log.meta"),
            "output": self.value(getattr(log, "output", None), "output", "log.output (the model's return value)"),
            "modules": [self.value(dataclasses.asdict(m), f"module/{m.address}", f"module {m.address!r}") for m in log.modules.values()],
            "layers": {"columns": columns, "rows": rows},
            "notes": self.notes,
        }


def _frame_json(frame: Any) -> list:
    if isinstance(frame, FrameInfo):
        return [frame.file, frame.line, frame.function]
    code, line = frame
    return [code.co_filename, line, code.co_name]


def layer_fields(unit: dict[str, Any], get_tensor: Callable[[str], Any], where: str) -> list[dict[str, Any]]:
    """LayerLog keyword arguments of every layer; the tensor fields are left as their JSON."""
    table = unit.get("layers")
    if not isinstance(table, dict) or not isinstance(table.get("columns"), list) or not isinstance(table.get("rows"), list):
        raise BundleError(f"{where} has no layer table.")
    columns = table["columns"]
    known = {f.name for f in dataclasses.fields(LayerLog)} - set(DERIVED_FIELDS)
    out = []
    for i, row in enumerate(table["rows"]):
        if not isinstance(row, list) or len(row) != len(columns):
            raise BundleError(f"{where}: row {i} of the layer table does not match its {len(columns)} columns.")
        out.append({c: _field(c, v, get_tensor, f"{where}, layer {i} field {c!r}") for c, v in zip(columns, row) if c in known})
    passes: dict[str, list[str]] = {}
    for fields in out:
        passes.setdefault(fields["layer_label_no_pass"], []).append(fields["layer_label"])
    for fields in out:
        fields["pass_labels"] = passes[fields["layer_label_no_pass"]]
    return out


def _field(column: str, data: Any, get_tensor: Callable[[str], Any], where: str) -> Any:
    if column == "tensor_dtype":
        return None if data is None else parse_dtype(data, where)
    kind = type(data)
    if kind is str or kind is int or kind is bool or data is None or column in TENSOR_FIELDS:
        return data
    if column == "raw_frames":
        if not isinstance(data, list) or not all(_is_frame(f) for f in data):
            raise BundleError(f"{where} is not a list of [file, line, function] frames.")
        return tuple(FrameInfo(f, n, fn) for f, n, fn in data)
    return decode_value(data, get_tensor, where)


def _is_frame(f: Any) -> bool:
    return isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and type(f[1]) is int and isinstance(f[2], str)


def _no_tensor(where: str) -> Callable[[str], Any]:
    def fail(name: str) -> Any:
        raise BundleError(f"{where} refers to tensor {name!r} where none belongs.")

    return fail


def modules_from_json(data: Any, where: str) -> ModuleTable:
    """The :class:`ModuleTable` of a unit's ``modules`` list."""
    table = ModuleTable()
    if not isinstance(data, list):
        raise BundleError(f"{where} has no module list.")
    names = {f.name for f in dataclasses.fields(ModuleLog)}
    for i, item in enumerate(data):
        fields = decode_value(item, _no_tensor(where), where)
        if not isinstance(fields, dict) or not {"address", "module_type", "depth", "num_params"} <= set(fields):
            raise BundleError(f"{where}: module entry {i} lacks address/module_type/depth/num_params.")
        mod = ModuleLog(**{k: v for k, v in fields.items() if k in names})
        dict.__setitem__(table, mod.address, mod)
    return table
