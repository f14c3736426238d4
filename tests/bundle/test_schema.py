"""lens_train.bundle.schema: a manifest cannot make the loader return something else."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import lens_train as lt
from lens_train.bundle.format import MANIFEST_NAME, frame, unframe
from lens_train.bundle.schema import DERIVED_FIELDS, LAYER_COLUMNS, stored_columns
from lens_train.capture.layer_log import LayerLog
from lens_train.errors import BundleError


def test_every_stored_layer_field_has_a_schema_entry() -> None:
    fields = [f.name for f in dataclasses.fields(LayerLog) if f.name not in DERIVED_FIELDS]
    assert stored_columns() == fields
    assert sorted(LAYER_COLUMNS) == sorted(fields), "add the new LayerLog field to schema.LAYER_COLUMNS"


def _saved(tmp_path: Path) -> Path:
    model = torch.nn.Sequential(torch.nn.Linear(5, 2), torch.nn.ReLU())
    path = tmp_path / "b"
    lt.save(lt.log_forward_pass(model, torch.randn(2, 5), random_seed=0), path)
    return path


def _column(unit: dict, name: str) -> int:
    return unit["layers"]["columns"].index(name)


def _cell(unit: dict, row: int, name: str, value: Any) -> None:
    unit["layers"]["rows"][row][_column(unit, name)] = value


def _entry(record: dict, name: str, **changes: Any) -> None:
    record["tensors"][name].update(changes)


def _deep(n: int) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value]
    return value


# The edits the audit found accepted (checksum recomputed), each with the message expected.
EDITS: dict[str, tuple[Callable[[dict, dict], None], str]] = {
    "shape reversed in the entry and the layer: the shard header disagrees": (
        lambda r, u: _entry(r, "activation/0", shape=[5, 2]) or _cell(u, 0, "tensor_shape", {"$tuple": [5, 2]}),
        r"is F32 \[2, 5\] .* in the shard's header; the manifest says F32 \[5, 2\]"),
    "dtype int32 in the entry and the layer: the shard header disagrees": (
        lambda r, u: _entry(r, "activation/0", dtype="int32") or _cell(u, 0, "tensor_dtype", "int32"),
        r"is F32 \[2, 5\] .* in the shard's header; the manifest says I32"),
    "tensor entry shape (2, 5) -> (5, 2)": (lambda r, u: _entry(r, "activation/0", shape=[5, 2]), "header|the layer says"),
    "tensor entry dtype int32": (lambda r, u: _entry(r, "activation/1", dtype="int32"), "header|the layer says|stored as"),
    "string in a tensor cell": (lambda r, u: _cell(u, 1, "tensor_contents", "activation/1"), "tensor reference"),
    "number in a tensor cell": (lambda r, u: _cell(u, 1, "tensor_contents", 3), "tensor reference"),
    "dict in a tensor cell": (lambda r, u: _cell(u, 1, "tensor_contents", {"shape": [2]}), "tensor reference"),
    "tensor column renamed": (lambda r, u: u["layers"]["columns"].__setitem__(_column(u, "tensor_contents"), "contents"),
                              "columns do not match"),
    "layer row deleted": (lambda r, u: u["layers"]["rows"].pop(1), "is not a layer listing it"),
    "output redirected": (lambda r, u: u.__setitem__("output", {"$tensor": "activation/1"}), "not the activation of an output"),
    "requires_grad=-1": (lambda r, u: _cell(u, 1, "requires_grad", -1), "'requires_grad': expected true or false"),
    "num_passes=0": (lambda r, u: _cell(u, 1, "num_passes", 0), "'num_passes': expected an int >= 1"),
    "num_passes=2 with one pass": (lambda r, u: _cell(u, 1, "num_passes", 2), "num_passes=2 but the table holds"),
    "tensor_dtype contradicts": (lambda r, u: _cell(u, 1, "tensor_dtype", "float64"), "the layer says float64"),
    "a list 500 deep in meta": (lambda r, u: u.__setitem__("meta", {"x": _deep(500)}), "nests lists or objects deeper"),
    "a list 500 deep in a cell": (lambda r, u: _cell(u, 1, "transformed_activation", _deep(500)), "nests lists"),
    "notes a string": (lambda r, u: u.__setitem__("notes", "hello"), "'notes': expected a list of strings"),
    "an unreferenced tensor": (lambda r, u: _cell(u, 2, "transformed_activation", 2.5) or r["tensors"].__setitem__(
        "transformed/9", dict(r["tensors"]["activation/1"])), "not referred to by any record"),
    "a module naming an unknown layer": (lambda r, u: u["modules"][0]["calls"][0].__setitem__("inputs", ["nope_1_1"]),
                                         "name layers the table does not hold"),
}


@pytest.mark.parametrize("edit", list(EDITS))
@pytest.mark.parametrize("lazy", [False, True])
def test_contradictory_metadata_is_a_bundle_error(tmp_path: Path, edit: str, lazy: bool) -> None:
    path = _saved(tmp_path)
    manifest = unframe((path / MANIFEST_NAME).read_bytes(), "manifest", "m")
    change, message = EDITS[edit]
    change(manifest["units"][0], manifest["units"][0]["metadata"])
    (path / MANIFEST_NAME).write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match=message):
        log = lt.load(path, lazy=lazy)
        [layer.materialize_activation() for layer in log]


def test_bare_nan_in_a_manifest_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    text = (path / MANIFEST_NAME).read_bytes().replace(b'"time_s"', b'"time_s"')
    body = text.split(b'"manifest":', 1)[1][:-2].replace(b'"elapsed_s":', b'"elapsed_s":NaN,"was":', 1)
    import zlib

    (path / MANIFEST_NAME).write_bytes(b'{"crc32":"%08x","manifest":%s}\n' % (zlib.crc32(body), body))
    with pytest.raises(BundleError, match="invalid JSON.*NaN"):
        lt.load(path)
