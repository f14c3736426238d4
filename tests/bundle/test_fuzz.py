"""Seeded fuzzing of bundles: every load raises BundleError or returns exactly the saved values.

Cases: random byte flips and truncations, deleted and extra files, and schema-breaking or
contradictory edits of the metadata with every checksum recomputed (the checksums guard
against corruption, so an editor can always fix them up). Edits that stay schema-valid and
consistent with every other record (two same-shape tensor references swapped) are out of
scope: no loader can detect them without a signature.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import lens_train as lt
from lens_train.bundle.format import MANIFEST_NAME, checksum, frame, unframe
from lens_train.bundle.schema import column_accepts
from lens_train.errors import BundleError

CASES = 480


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> Any:
        h = torch.relu(self.fc(x))
        h = self.fc(h)  # the same weights again: a second pass of fc
        return h.to(torch.bfloat16), h.argmax(dim=1), torch.complex(h, -h)


def _saved(root: Path) -> tuple[Path, lt.ModelLog]:
    torch.manual_seed(0)
    log = lt.log_forward_pass(_Net(), torch.randn(2, 4), random_seed=0,
                              activation_postfunc=lambda t: (t.sum(), 1.5) if t.is_floating_point() else None)
    path = root / "base"
    lt.save(log, path, shard_size=200)  # several shards
    return path, lt.load(path)


# -- what a load returns, compared field by field ----------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and _same(dataclasses.asdict(a), dataclasses.asdict(b))
    return type(a) is type(b) and a == b


def _layer_values(layer: Any) -> dict[str, Any]:
    layer.materialize_activation()  # a lazy layer reads its tensors (all of them) first
    values = {f.name: getattr(layer, f.name) for f in dataclasses.fields(layer) if not f.name.startswith("_")}
    return {**values, "lookup_keys": layer.lookup_keys}


def _log_values(log: lt.ModelLog) -> dict[str, Any]:
    layers = [_layer_values(layer) for layer in log.layers]  # lazily loaded: materialized first
    return {"model_name": log.model_name, "meta": log.meta, "output": log.output, "layers": layers,
            "modules": {k: dataclasses.asdict(m) for k, m in log.modules.items()}}


def _outcome(path: Path, expected: dict[str, Any]) -> str:
    """'error' (a BundleError), 'exact' (the saved values), 'wrong' (anything else returned) or the exception's type."""
    outcomes = []
    for lazy in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", lt.BundleWarning)
                got = _log_values(lt.load(path, lazy=lazy))
        except BundleError:
            outcomes.append("error")
            continue
        except Exception as exc:  # what the fuzz test exists to find
            return f"{type(exc).__name__}: {exc}"
        outcomes.append("exact" if _same(got, expected) else "wrong")
    return "wrong" if "wrong" in outcomes else outcomes[0]


# -- the edits -------------------------------------------------------------------------------------
_JUNK = [-1, -7.5, 10**30, "x", "", None, True, [], [1, "a"], {}, {"$tensor": 3}, {"a": [1]}, float("nan")]
_BAD_VALUES = [{"$weird": 1}, {"$tensor": 5}, {"$tensor": "no/such/tensor"}, {"$float": "x"}, {"$dict": [[1]]},
               {"$tuple": 3}, {"$dtype": "load"}, {"$device": 7}]


def _deep(n: int) -> Any:
    value: Any = 0
    for _ in range(n):
        value = [value]
    return value


def _edit_cell(unit: dict, rng: random.Random) -> None:
    table = unit["layers"]
    row = rng.choice(table["rows"])
    column = rng.randrange(len(table["columns"]))
    name = table["columns"][column]
    pool = [v for v in _JUNK if not column_accepts(name, v)] + _BAD_VALUES + [_deep(rng.choice([70, 500]))]
    row[column] = rng.choice([v for v in pool if not column_accepts(name, v) or isinstance(v, (dict, list))])
    if column_accepts(name, row[column]) and name not in ("transformed_activation",):
        row[column] = {"$weird": 0}


def _edit_tensor_cell(unit: dict, rng: random.Random) -> None:
    table = unit["layers"]
    column = table["columns"].index(rng.choice(["tensor_contents", "gradient", "transformed_activation"]))
    rows = [r for r in table["rows"] if r[column] is not None] or table["rows"]
    rng.choice(rows)[column] = rng.choice(["activation/1", 3, 2.5, {"shape": [2]}, {"$tensor": "no/such/tensor"}, [1]])


def _swap_shapes(unit: dict, rng: random.Random) -> None:
    """Point a tensor cell at a stored tensor of another shape or dtype."""
    table = unit["layers"]
    column = table["columns"].index("tensor_contents")
    shapes = table["columns"].index("tensor_shape")
    dtypes = table["columns"].index("tensor_dtype")
    saved = [r for r in table["rows"] if r[column] is not None]
    a = rng.choice(saved)
    others = [r for r in saved if (r[shapes], r[dtypes]) != (a[shapes], a[dtypes])]
    a[column] = rng.choice(others)[column]


def _delete_row(unit: dict, rng: random.Random) -> None:
    rows = unit["layers"]["rows"]
    del rows[rng.randrange(len(rows))]


def _rename_column(unit: dict, rng: random.Random) -> None:
    columns = unit["layers"]["columns"]
    columns[rng.randrange(len(columns))] += "_renamed"


def _redirect_output(unit: dict, rng: random.Random) -> None:
    unit["output"] = {"$tensor": rng.choice(["activation/1", "activation/0", "transformed/3/0"])}


def _drop_key(unit: dict, rng: random.Random) -> None:
    del unit[rng.choice(sorted(unit))]


def _edit_module(unit: dict, rng: random.Random) -> None:
    module = rng.choice(unit["modules"])
    key = rng.choice(["address", "depth", "num_params", "calls", "module_type"])
    module[key] = rng.choice([-1, None, "x" if key != "address" else 5, [{"inputs": 3}]]) if key != "calls" else [{"inputs": ["nope"]}]
    if key == "module_type" and isinstance(module[key], str):
        module[key] = 7


def _edit_meta(unit: dict, rng: random.Random) -> None:
    unit["meta"] = rng.choice([_deep(500), {"k": _deep(200)}, {"x": {"$tensor": "nope"}}, {"$weird": 2}])


def _edit_entry(unit_record: dict, rng: random.Random) -> None:
    """Contradict a tensor entry: its shape, dtype, byte range, storage kind or checksum."""
    name = rng.choice(sorted(unit_record["tensors"]))
    e = unit_record["tensors"][name]
    change = rng.choice(["shape", "dtype", "offset", "nbytes", "stored", "xxh3", "shard"])
    if change == "shape":
        e["shape"] = e["shape"][::-1] if len(set(e["shape"])) > 1 else [*e["shape"], 1, 0]
    elif change == "dtype":
        e["dtype"] = {"float32": "int32", "int64": "float64", "bfloat16": "float16", "complex64": "float64"}.get(e["dtype"], "uint8")
        if e["dtype"] == "uint8":
            e["shape"] = [e["nbytes"]]
    elif change == "offset":
        e["offset"] += rng.choice([-8, 8, 1])
    elif change == "nbytes":
        e["nbytes"] += 4
    elif change == "stored":
        e["stored"] = rng.choice(["bytes", "native", "complex_as_real", 1])
    elif change == "xxh3":
        e["xxh3"] = ["0" * 16]
    else:
        e["shard"] = "activations-00099.safetensors"


def _metadata_edit(edit: Callable[[dict, random.Random], None]) -> Callable[[dict, random.Random], None]:
    return lambda manifest, rng: edit(manifest["units"][0]["metadata"], rng)


_MANIFEST_EDITS: list[Callable[[dict, random.Random], None]] = [
    *(_metadata_edit(e) for e in (_edit_cell, _edit_cell, _edit_cell, _edit_tensor_cell, _swap_shapes, _delete_row,
                                  _rename_column, _redirect_output, _drop_key, _edit_module, _edit_meta)),
    lambda manifest, rng: _edit_entry(manifest["units"][0], rng),
    lambda manifest, rng: _edit_entry(manifest["units"][0], rng),
]


def _frame(obj: Any) -> bytes:
    """:func:`frame`, also for values the writer never writes (NaN): what an editor can produce."""
    body = json.dumps(obj, separators=(",", ":")).encode("ascii")
    return b'{"crc32":"%08x","manifest":%s}\n' % (zlib.crc32(body), body)


def _rewrite_manifest(path: Path, rng: random.Random) -> None:
    manifest = unframe((path / MANIFEST_NAME).read_bytes(), "manifest", "m")
    rng.choice(_MANIFEST_EDITS)(manifest, rng)
    (path / MANIFEST_NAME).write_bytes(_frame(manifest))  # checksum recomputed


def _rewrite_shard_header(path: Path, rng: random.Random) -> None:
    """Contradict the manifest inside a shard's own header, with the manifest's header checksum fixed up."""
    shard = rng.choice(sorted(path.glob("activations-*.safetensors")))
    data = bytearray(shard.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    name = rng.choice([k for k in header if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets"])
    header[name][field] = {"dtype": "I32", "shape": header[name]["shape"][::-1] + [1],
                           "data_offsets": [o + 4 for o in header[name]["data_offsets"]]}[field]
    text = json.dumps(header, separators=(",", ":")).encode()
    data[8:8 + n] = text + b" " * (n - len(text))
    shard.write_bytes(bytes(data))
    manifest = unframe((path / MANIFEST_NAME).read_bytes(), "manifest", "m")
    for s in manifest["units"][0]["shards"]:
        if s["file"] == shard.name:
            s["header_xxh3"] = checksum(bytes(data[:8 + n]))[0]
    (path / MANIFEST_NAME).write_bytes(frame("manifest", manifest))


def _flip(path: Path, rng: random.Random) -> None:
    file = rng.choice(sorted(path.iterdir()))
    data = bytearray(file.read_bytes())
    if data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        file.write_bytes(bytes(data))


def _truncate(path: Path, rng: random.Random) -> None:
    file = rng.choice(sorted(path.iterdir()))
    data = file.read_bytes()
    file.write_bytes(data[: rng.randrange(max(len(data), 1))])


def _delete_or_add(path: Path, rng: random.Random) -> None:
    if rng.random() < 0.5:
        rng.choice(sorted(path.iterdir())).unlink()
    else:
        (path / "activations-00077.safetensors").write_bytes(b"\0" * rng.randrange(64))


_EDITS = [(_rewrite_manifest, 6), (_rewrite_shard_header, 1), (_flip, 2), (_truncate, 1), (_delete_or_add, 1)]


def run_fuzz(root: Path, cases: int, seed: int = 0) -> dict[str, Any]:
    """Run ``cases`` seeded cases; counts of each outcome and the cases that failed."""
    base, reference = _saved(root)
    expected = _log_values(reference)
    rng = random.Random(seed)
    counts = {"cases": 0, "error": 0, "exact": 0, "wrong": 0, "other": 0}
    failures = []
    edits, weights = zip(*_EDITS)
    for i in range(cases):
        case = root / f"case{i}"
        shutil.copytree(base, case)
        edit = rng.choices(edits, weights)[0]
        edit(case, random.Random(rng.random()))
        outcome = _outcome(case, expected)
        key = outcome if outcome in counts else "other"
        counts[key] += 1
        counts["cases"] += 1
        if key in ("wrong", "other"):
            failures.append((i, edit.__name__, outcome))
        shutil.rmtree(case)
    return {**counts, "failures": failures}


@pytest.mark.slow
def test_fuzzed_bundles_load_exactly_or_raise_bundle_error(tmp_path: Path) -> None:
    result = run_fuzz(tmp_path, CASES)
    assert result["failures"] == []
    assert result["cases"] == CASES and result["error"] > CASES * 0.8


def test_a_short_fuzz_run(tmp_path: Path) -> None:
    result = run_fuzz(tmp_path, 60, seed=1)
    assert result["failures"] == [] and result["cases"] == 60


def test_the_fuzz_harness_sees_a_wrong_value(tmp_path: Path) -> None:
    """The oracle is not blind: an out-of-scope, consistent swap of two same-shape tensors is reported as wrong."""
    base, reference = _saved(tmp_path)
    manifest = unframe((base / MANIFEST_NAME).read_bytes(), "manifest", "m")
    tensors = manifest["units"][0]["tensors"]
    a, b = "transformed/1/0", "transformed/2/0"  # two scalars of one dtype
    tensors[a], tensors[b] = copy.deepcopy(tensors[b]), copy.deepcopy(tensors[a])
    (base / MANIFEST_NAME).write_bytes(frame("manifest", manifest))
    assert _outcome(base, _log_values(reference)) in ("wrong", "error")
