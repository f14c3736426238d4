"""The schema of a capture unit's metadata, in one place: what a loader believes, and only that.

A unit's JSON is checked once per load, before anything is built from it: types and
ranges of every field, required fields, nesting depth, and agreement between records
(tensor cells against the tensor entries, parents against children, passes against
their count, the output against the output layers). A tensor entry is checked against
its shard's own safetensors header when the shard is opened
(:func:`check_header_entry`). Every problem is a :class:`~lens_train.errors.BundleError`
naming the file and the field.

The checksums in a bundle guard against corruption, not tampering: an edit that is
valid here and consistent with every other record (two same-shape tensor references
swapped) is not detectable without a signature.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from ..capture.layer_log import LayerLog
from ..errors import BundleError
from .format import dtype_name, stored_header

MAX_DEPTH = 64  # nesting of lists and objects anywhere in a unit's metadata
DERIVED_FIELDS = ("_lookup_keys", "_key_index", "_key_pos", "_materialize", "pass_labels")  # rebuilt by the loader, never stored


def _is_int(v: Any, low: int) -> bool:
    return type(v) is int and v >= low


def _is_tuple_of_ints(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and isinstance(v.get("$tuple"), list) and all(_is_int(s, 0) for s in v["$tuple"])


def _is_ref(v: Any) -> bool:
    return isinstance(v, dict) and len(v) == 1 and isinstance(v.get("$tensor"), str)


def _is_strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _is_frame(f: Any) -> bool:
    return isinstance(f, list) and len(f) == 3 and isinstance(f[0], str) and _is_int(f[1], 0) and isinstance(f[2], str)


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "str?": ("a string or null", lambda v: v is None or isinstance(v, str)),
    "int>=0": ("an int >= 0", lambda v: _is_int(v, 0)),
    "int>=1": ("an int >= 1", lambda v: _is_int(v, 1)),
    "int>=-1": ("an int >= -1", lambda v: _is_int(v, -1)),
    "bool": ("true or false", lambda v: type(v) is bool),
    "seconds": ("a finite number >= 0", lambda v: type(v) in (int, float) and math.isfinite(v) and v >= 0),
    "shape": ('{"$tuple": [ints >= 0]}', _is_tuple_of_ints),
    "dtype?": ("a dtype name or null", lambda v: v is None or isinstance(v, str)),
    "tensor?": ('a tensor reference {"$tensor": name} or null', lambda v: v is None or _is_ref(v)),
    "value": ("an encoded value", lambda v: True),
    "strs": ("a list of strings", _is_strs),
    "bools": ("a list of booleans", lambda v: isinstance(v, list) and all(type(b) is bool for b in v)),
    "shapes": ("a list of shapes", lambda v: isinstance(v, list) and all(_is_tuple_of_ints(s) for s in v)),
    "frames": ("a list of [file, line, function]", lambda v: isinstance(v, list) and all(_is_frame(f) for f in v)),
    "arg_locs": ("an object of lists", lambda v: isinstance(v, dict) and all(isinstance(x, list) for x in v.values())),
}

# Every stored LayerLog field and what its JSON must be. A LayerLog field missing here is
# checked only as an encoded value (tests/bundle/test_schema.py asks for an entry).
LAYER_COLUMNS: dict[str, str] = {
    "layer_label": "str", "layer_label_no_pass": "str", "layer_label_short": "str", "layer_type": "str",
    "layer_type_num": "int>=0", "layer_index": "int>=0", "operation_index": "int>=0", "pass_num": "int>=1",
    "num_passes": "int>=1", "func_name": "str", "grad_fn_name": "str?", "tensor_shape": "shape",
    "tensor_dtype": "dtype?", "tensor_fsize": "int>=0", "device": "str", "requires_grad": "bool",
    "tensor_contents": "tensor?", "transformed_activation": "value", "parent_layers": "strs",
    "parent_layer_arg_locs": "arg_locs", "child_layers": "strs", "containing_modules": "strs",
    "module_outputs": "strs", "parent_params": "shapes", "num_params": "int>=0", "param_bytes": "int>=0",
    "param_addresses": "strs", "time_s": "seconds", "is_input": "bool", "is_output": "bool", "is_buffer": "bool",
    "buffer_address": "str?", "is_internally_generated": "bool", "is_inplace": "bool", "output_index": "int>=0",
    "bool_values": "bools", "branch_start_layers": "strs", "raw_frames": "frames", "gradient": "tensor?",
    "op_index_in_call": "int>=-1", "edit": "str?", "original_activation": "tensor?",
}
_CALL_KEYS = {"address": "str", "pass_num": "int>=1", "depth": "int>=0", "parent": "str?", "inputs": "strs", "outputs": "strs"}
_MODULE_KEYS = {"address": "str", "module_type": "str", "depth": "int>=0", "num_params": "int>=0"}


def stored_columns() -> list[str]:
    """The LayerLog fields a capture unit stores, in order.

    Example:
        >>> stored_columns()[:3]
        ['layer_label', 'layer_label_no_pass', 'layer_label_short']
    """
    return [f.name for f in dataclasses.fields(LayerLog) if f.name not in DERIVED_FIELDS]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def column_accepts(column: str, value: Any) -> bool:
    """Whether the layer-table ``column`` may hold the JSON ``value`` (types and ranges only).

    Example:
        >>> column_accepts("requires_grad", -1), column_accepts("tensor_contents", {"$tensor": "activation/3"})
        (False, True)
    """
    return _KINDS[LAYER_COLUMNS.get(column, "value")][1](value)


def _check(kind: str, value: Any, where: str) -> None:
    what, ok = _KINDS[kind]
    if not ok(value):
        raise BundleError(f"{where}: expected {what}, got {_short(value)}.")


def check_depth(data: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`BundleError` if lists/objects in ``data`` nest deeper than ``limit`` (checked without recursion).

    Example:
        >>> check_depth([[[1]]], "x", limit=2)
        Traceback (most recent call last):
        lens_train.errors.BundleError: x nests lists or objects deeper than 2 levels.
    """
    if not isinstance(data, (list, dict)):
        return
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth >= limit:
            raise BundleError(f"{where} nests lists or objects deeper than {limit} levels.")
        items = value.values() if type(value) is dict else value
        stack.extend([(v, depth + 1) for v in items if type(v) is list or type(v) is dict])


def check_capture_unit(unit: Any, entries: dict[str, dict[str, Any]], where: str) -> None:
    """Check a capture unit's metadata against the schema and its ``entries`` (the checked tensor entries).

    Example:
        >>> check_capture_unit({"kind": "capture"}, {}, "m.json")
        Traceback (most recent call last):
        lens_train.errors.BundleError: m.json: field 'model_name' is missing.
    """
    if not isinstance(unit, dict):
        raise BundleError(f"{where}: the unit's metadata is not an object.")
    check_depth(unit, where)
    for key, kind in (("kind", "str"), ("model_name", "str"), ("meta", "value"), ("output", "value"), ("notes", "strs")):
        if key not in unit:
            raise BundleError(f"{where}: field {key!r} is missing.")
        _check(kind, unit[key], f"{where}, field {key!r}")
    if not isinstance(unit.get("capture"), dict):
        raise BundleError(f"{where}: field 'capture' must be an object.")
    _check("int>=0", unit["capture"].get("random_seed"), f"{where}, capture.random_seed")
    _check("bool", unit["capture"].get("train_mode"), f"{where}, capture.train_mode")
    rows = _layer_rows(unit.get("layers"), where)
    _check_graph(rows, where)
    _check_tensors(unit, rows, entries, where)
    _check_modules(unit.get("modules"), {r["layer_label"] for r in rows}, where)


def _layer_rows(table: Any, where: str) -> list[dict[str, Any]]:
    """The layer table as one dict per row, every cell checked."""
    if not isinstance(table, dict) or not _is_strs(table.get("columns")) or not isinstance(table.get("rows"), list):
        raise BundleError(f"{where}: field 'layers' must be an object with a 'columns' list of names and a 'rows' list.")
    columns = table["columns"]
    expected = stored_columns()
    missing, unknown = [c for c in expected if c not in columns], [c for c in columns if c not in expected]
    if missing or unknown or len(set(columns)) != len(columns):
        raise BundleError(f"{where}: the layer table's columns do not match a LayerLog: missing {missing}, unknown "
                          f"{unknown}{', some repeated' if len(set(columns)) != len(columns) else ''}.")
    checks = [(column, _KINDS[LAYER_COLUMNS.get(column, "value")][1]) for column in columns]
    rows = []
    for i, row in enumerate(table["rows"]):
        if type(row) is not list or len(row) != len(columns):
            raise BundleError(f"{where}: row {i} of the layer table does not match its {len(columns)} columns.")
        for (column, ok), value in zip(checks, row):
            if not ok(value):  # the message is built only for a bad cell
                _check(LAYER_COLUMNS.get(column, "value"), value, f"{where}, layer {i} field {column!r}")
        rows.append(dict(zip(columns, row)))
    return rows


def _check_graph(rows: list[dict[str, Any]], where: str) -> None:
    """Labels unique, parents and children naming each other, passes numbered 1..num_passes."""
    by_label = {r["layer_label"]: r for r in rows}
    if len(by_label) != len(rows):
        raise BundleError(f"{where}: the layer table repeats a layer_label.")
    passes: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        at = f"{where}, layer {i} ({r['layer_label']!r})"
        for field, back in (("parent_layers", "child_layers"), ("child_layers", "parent_layers")):
            for other in r[field]:
                if other not in by_label or r["layer_label"] not in by_label[other][back]:
                    raise BundleError(f"{at} field {field!r}: {other!r} is not a layer listing it in {back!r}.")
        if not set(r["parent_layer_arg_locs"]) <= set(r["parent_layers"]):
            raise BundleError(f"{at} field 'parent_layer_arg_locs' names layers that are not its parents.")
        passes.setdefault(r["layer_label_no_pass"], []).append(r["pass_num"])
    for r in rows:
        numbers = passes[r["layer_label_no_pass"]]
        if r["num_passes"] != len(numbers) or sorted(numbers) != list(range(1, len(numbers) + 1)):
            raise BundleError(f"{where}, layer {r['layer_label']!r}: num_passes={r['num_passes']} but the table holds "
                              f"passes {sorted(numbers)} of {r['layer_label_no_pass']!r}.")


def _check_tensors(unit: dict[str, Any], rows: list[dict[str, Any]], entries: dict[str, Any], where: str) -> None:
    """Every tensor reference names a stored tensor whose dtype and shape agree with its layer."""
    for i, r in enumerate(rows):
        for field in ("tensor_contents", "gradient"):
            ref = r[field]
            if ref is None:
                continue
            entry = _entry(entries, ref["$tensor"], f"{where}, layer {i} field {field!r}")
            shape = r["tensor_shape"]["$tuple"]
            if list(entry["shape"]) != shape or (field == "tensor_contents" and r["tensor_dtype"] is not None
                                                 and dtype_name(entry["dtype"]) != r["tensor_dtype"]):
                raise BundleError(
                    f"{where}, layer {i} field {field!r}: tensor {ref['$tensor']!r} is {dtype_name(entry['dtype'])} "
                    f"{list(entry['shape'])}, the layer says {r['tensor_dtype']} {shape}."
                )
    # the model's return value is stored once: as its own tensors, or as the (saved) output layers' values
    by_label = {r["layer_label"]: r for r in rows}
    producers = [by_label[p] for r in rows if r["is_output"] for p in [r["layer_label"], *r["parent_layers"]]]
    outputs = {r["tensor_contents"]["$tensor"] for r in producers if r["tensor_contents"] is not None}
    for name in _refs(unit["output"]):
        _entry(entries, name, f"{where}, field 'output'")
        if name not in outputs and name != "output" and not name.startswith("output/"):
            raise BundleError(f"{where}, field 'output': tensor {name!r} is not the activation of an output layer.")
    for key in ("meta", "capture"):  # a module entry never refers to a tensor (modules_from_json refuses one)
        for name in _refs(unit.get(key)):
            _entry(entries, name, f"{where}, field {key!r}")
    unused = set(entries) - set(referenced_tensors(unit, rows))
    if unused:
        raise BundleError(f"{where}: stored tensor(s) {sorted(unused)[:3]} are not referred to by any record "
                          "(the metadata was changed after it was written).")


def referenced_tensors(unit: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> list[str]:
    """Names of every tensor the metadata of a capture unit refers to (``rows``: its checked layer rows).

    Only tensor and free-value cells can hold references; the schema gives every other column a
    type that cannot.

    Example:
        >>> table = {"columns": ["tensor_contents", "layer_label"], "rows": [[{"$tensor": "activation/1"}, "relu_1_1"]]}
        >>> referenced_tensors({"output": {"$tensor": "output"}, "layers": table})
        ['activation/1', 'output']
    """
    if rows is None:
        table = unit.get("layers", {})
        rows = [dict(zip(table.get("columns", []), row)) for row in table.get("rows", [])]
    free = [c for c in (rows[0] if rows else {}) if LAYER_COLUMNS.get(c, "value") in ("tensor?", "value")]
    names = [n for r in rows for c in free if r[c] is not None for n in _refs(r[c])]
    return names + [n for key in ("meta", "output", "capture") for n in _refs(unit.get(key))]


def _entry(entries: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    if name not in entries:
        raise BundleError(f"{where} refers to tensor {name!r}, which the unit does not hold.")
    return entries[name]


def _refs(data: Any) -> list[str]:
    """Names of the tensors an encoded value refers to (its depth is bounded by :func:`check_depth`)."""
    if isinstance(data, list):
        return [n for v in data for n in _refs(v)]
    if isinstance(data, dict):
        if _is_ref(data):
            return [data["$tensor"]]
        return [n for v in data.values() for n in _refs(v)]
    return []


def _check_modules(modules: Any, labels: set[str], where: str) -> None:
    if not isinstance(modules, list):
        raise BundleError(f"{where}: field 'modules' must be a list.")
    for i, module in enumerate(modules):
        at = f"{where}, module {i}"
        if not isinstance(module, dict) or not isinstance(module.get("calls", []), list):
            raise BundleError(f"{at}: expected an object with a 'calls' list.")
        for key, kind in _MODULE_KEYS.items():
            _check(kind, module.get(key), f"{at} field {key!r}")
        for j, call in enumerate(module.get("calls", [])):
            if not isinstance(call, dict):
                raise BundleError(f"{at}, call {j}: expected an object.")
            for key, kind in _CALL_KEYS.items():
                _check(kind, call.get(key), f"{at}, call {j} field {key!r}")
            if "buffer_updates" in call:  # bookkeeping labels; absent from bundles written before them
                _check("strs", call["buffer_updates"], f"{at}, call {j} field 'buffer_updates'")
            if not set(call["inputs"] + call["outputs"]) <= labels:
                raise BundleError(f"{at}, call {j}: its inputs/outputs name layers the table does not hold.")


def check_header_entry(entry: dict[str, Any], header: dict[str, Any], data_start: int, where: str) -> None:
    """Check a (parsed) tensor entry against its shard's safetensors header.

    Example:
        >>> import torch
        >>> e = {"name": "a", "dtype": torch.float32, "shape": [2], "offset": 16, "nbytes": 8, "stored": "native"}
        >>> check_header_entry(e, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, 16, "s")
        >>> check_header_entry(e, {"a": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}}, 16, "s")
        Traceback (most recent call last):
        lens_train.errors.BundleError: s: tensor 'a' is I32 [2] at [0, 8] in the shard's header; the manifest says F32 [2] at [0, 8].
    """
    kind, tag, shape = stored_header(entry["dtype"], entry["shape"], entry["nbytes"])
    begin = entry["offset"] - data_start
    said = header.get(entry["name"])
    expected = {"dtype": tag, "shape": shape, "data_offsets": [begin, begin + entry["nbytes"]]}
    if entry.get("stored") != kind:
        raise BundleError(f"{where}: tensor {entry['name']!r} is stored as {entry.get('stored')!r}; its dtype is stored as {kind!r}.")
    if not isinstance(said, dict) or {k: said.get(k) for k in expected} != expected:
        found = "absent" if not isinstance(said, dict) else f"{said.get('dtype')} {said.get('shape')} at {said.get('data_offsets')}"
        raise BundleError(f"{where}: tensor {entry['name']!r} is {found} in the shard's header; the manifest says "
                          f"{tag} {shape} at {expected['data_offsets']}.")
