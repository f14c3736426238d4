"""lt.save / lt.load: round trips of every field, lazy loading, atomic replacement, bad input."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.bundle import api as bundle_mod
from lens_train.bundle.format import FORMAT_NAME, frame, unframe
from lens_train.bundle.metadata import tensor_key
from lens_train.bundle.reader import BundleReader
from lens_train.bundle.writer import BundleWriter
from lens_train.errors import BundleError, InvalidArgumentError
from tests.models import DemoNetwork, SimpleRecurrent, SmallAlexNet
from tests.models.log_compare import assert_same_log, bit_equal


def _postfunc(t: torch.Tensor) -> tuple:
    return t.float().mean(dim=0), {"max": float(t.max()), "n": t.numel()}


@pytest.fixture()
def recurrent_log() -> lt.ModelLog:
    return lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5), activation_postfunc=_postfunc, random_seed=3)


@pytest.fixture()
def reads(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The tensor names of every BundleReader.read_tensors call made during the test."""
    calls: list[list[str]] = []
    original = BundleReader.read_tensors
    monkeypatch.setattr(BundleReader, "read_tensors", lambda self, unit, names: calls.append(list(names)) or original(self, unit, names))
    return calls


def _shards(path: Path) -> list[Path]:
    return sorted(path.glob("activations-*.safetensors"))


# -- round trips ---------------------------------------------------------------------------
@pytest.mark.parametrize("model_fn,x", [(SimpleRecurrent, torch.randn(2, 5)), (DemoNetwork, torch.randn(3, 5)),
                                        (SmallAlexNet, torch.randn(1, 3, 64, 64))])
def test_eager_round_trip_keeps_every_field(tmp_path: Path, model_fn, x: torch.Tensor) -> None:
    log = lt.log_forward_pass(model_fn(), x, activation_postfunc=_postfunc, random_seed=1)
    lt.save(log, tmp_path / "b")
    loaded = lt.load(tmp_path / "b")
    assert_same_log(log, loaded)
    assert torch.equal(loaded[-2].activation, log[-2].activation)


def test_loaded_log_supports_lookup_printing_and_graphs(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    lt.save(recurrent_log, tmp_path / "b")
    loaded = lt.load(tmp_path / "b", lazy=True)
    assert loaded["fc:3"].layer_label == "linear_1_1:3" and loaded["linear_1_1:3"] is loaded[7]
    assert loaded.modules["fc"].num_passes == 4 and loaded.structure["is_recurrent"]
    assert "(saved on disk; call .materialize_activation())" in str(loaded["add_1_2:2"])
    loaded["add_1_2:2"].materialize_activation()
    assert str(loaded["add_1_2:2"]) == str(recurrent_log["add_1_2:2"])
    assert loaded.to_dot() == recurrent_log.to_dot()


def test_call_stacks_round_trip_as_file_line_function(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    lt.save(recurrent_log, tmp_path / "b")
    stack = lt.load(tmp_path / "b")["mul_1_3:2"].func_call_stack
    assert [(f.file, f.function) for f in stack][0] == (SimpleRecurrent.forward.__code__.co_filename, "forward")
    assert stack == recurrent_log["mul_1_3:2"].func_call_stack
    assert stack[0].code_context == "x = x * 2"


def test_lazy_load_reads_no_tensor_until_one_is_materialized(tmp_path: Path, recurrent_log: lt.ModelLog,
                                                            reads: list[list[str]]) -> None:
    lt.save(recurrent_log, tmp_path / "b")
    lazy = lt.load(tmp_path / "b", lazy=True)
    assert reads == [] and all(layer.activation is None and layer.is_saved for layer in lazy)
    assert all(layer.transformed_activation is None for layer in lazy)
    value = lazy["linear_1_1:2"].materialize_activation()
    assert reads == [["activation/4", "transformed/4/0"]]
    assert torch.equal(value, recurrent_log["linear_1_1:2"].activation)
    assert bit_equal(lazy["linear_1_1:2"].transformed_activation, recurrent_log["linear_1_1:2"].transformed_activation)
    assert lazy["linear_1_1:2"].materialize_activation() is value and len(reads) == 1
    assert_same_log(recurrent_log, lazy, materialize=True)


def test_lazy_load_reads_the_output_on_first_use(tmp_path: Path, recurrent_log: lt.ModelLog,
                                                 reads: list[list[str]]) -> None:
    lt.save(recurrent_log, tmp_path / "b")
    lazy = lt.load(tmp_path / "b", lazy=True)
    assert reads == []
    output = lazy.output
    assert isinstance(output, torch.Tensor) and bit_equal(output, recurrent_log.output) and len(reads) == 1
    assert lazy.output is output and len(reads) == 1  # read once, then kept
    lazy.output = None
    assert lazy.output is None and len(reads) == 1


def test_appended_captures_are_units_that_load_can_pick(tmp_path: Path) -> None:
    path = tmp_path / "b"
    logs = [lt.log_forward_pass(DemoNetwork(), torch.randn(1, 5), random_seed=i) for i in range(3)]
    for log in logs:
        lt.save(log, path, append=True)
    assert_same_log(logs[-1], lt.load(path))
    for i, log in enumerate(logs):
        assert_same_log(log, lt.load(path, unit=i))
        assert lt.load(path, unit=i, lazy=True).bundle_info["unit"] == i
    assert_same_log(logs[0], lt.load(path, unit=-3))
    with pytest.raises(InvalidArgumentError, match=r"unit=3\): bundle .* has 3 committed unit\(s\), units 0 to 2; "
                                                   r"unit=3 is not one of them. Example: lt.load\(path, unit=2\)"):
        lt.load(path, unit=3)
    with pytest.raises(ValueError, match="unit='last'"):
        lt.load(path, unit="last")
    with BundleWriter(path, kind="capture", append=True) as w:
        w.commit({"kind": "note"})  # a unit that is not a capture
    assert_same_log(logs[-1], lt.load(path))
    with pytest.raises(InvalidArgumentError, match=r"4 committed unit\(s\), captures at units \[0, 1, 2\]"):
        lt.load(path, unit=-1)
    lt.save(logs[0], path)  # without append: replaced by a one-capture bundle
    assert len(BundleReader(path).units) == 1


def test_appending_needs_a_capture_bundle(tmp_path: Path) -> None:
    log = lt.log_forward_pass(nn.ReLU(), torch.ones(2))
    with BundleWriter(tmp_path / "r", kind="rollouts") as w:
        w.commit()
    with pytest.raises(BundleError, match="Cannot append units of kind 'capture' to .*it holds units of kind 'rollouts'"):
        lt.save(log, tmp_path / "r", append=True)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("x")
    with pytest.raises(BundleError, match="is not a lens_train bundle: it has no manifest.json"):
        lt.save(log, tmp_path / "d", append=True)
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["notes.txt"]


def test_metadata_only_and_subset_logs_round_trip(tmp_path: Path) -> None:
    model, x = DemoNetwork(), torch.randn(2, 5)
    for i, layers in enumerate([None, ["fc", "relu_2", -1]]):
        log = lt.log_forward_pass(model, x, layers_to_save=layers, random_seed=0)
        lt.save(log, tmp_path / f"b{i}")
        loaded = lt.load(tmp_path / f"b{i}")
        assert_same_log(log, loaded)
        assert loaded.num_saved == log.num_saved


def test_saving_a_lazy_log_copies_its_tensors(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    lt.save(recurrent_log, tmp_path / "a")
    lt.save(lt.load(tmp_path / "a", lazy=True), tmp_path / "b")
    assert_same_log(recurrent_log, lt.load(tmp_path / "b"))


def test_values_that_cannot_be_stored_are_left_out_with_a_note(tmp_path: Path) -> None:
    log = lt.log_forward_pass(nn.ReLU(), torch.ones(2), activation_postfunc=lambda t: object())
    log.meta["custom"] = {1: (2.5, float("nan")), "$odd": torch.float16, "dev": torch.device("cpu")}
    lt.save(log, tmp_path / "b")
    loaded = lt.load(tmp_path / "b")
    assert loaded["relu_1_1"].transformed_activation is None
    notes = loaded.bundle_info["notes"]
    assert any("transformed_activation of layer relu_1_1" in n and "builtins.object" in n for n in notes)
    assert bit_equal(loaded.meta["custom"], log.meta["custom"])
    manifest = unframe((tmp_path / "b" / "manifest.json").read_bytes(), "manifest", "m")
    assert manifest["units"][0]["metadata"]["notes"] == notes


def test_manifest_describes_the_capture_and_every_tensor(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    lt.save(recurrent_log, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())["manifest"]
    assert manifest["format"] == FORMAT_NAME and manifest["format_version"] == 1 and manifest["complete"]
    assert manifest["library"]["torch"] == torch.__version__
    unit = manifest["units"][0]
    assert unit["metadata"]["model_name"] == "SimpleRecurrent"
    assert unit["metadata"]["capture"] == {"random_seed": 3, "train_mode": False, "layers_to_save": "all"}
    entry = unit["tensors"]["activation/4"]
    assert entry["dtype"] == "float32" and entry["shape"] == [2, 5] and len(entry["xxh3"]) == 1


def test_shards_are_split_by_size_and_readable_by_safetensors(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    log = lt.log_forward_pass(SmallAlexNet(), torch.randn(1, 3, 64, 64), random_seed=0)
    lt.save(log, tmp_path / "b", shard_size=4096)
    shards = _shards(tmp_path / "b")
    assert len(shards) > 3
    assert_same_log(log, lt.load(tmp_path / "b"))
    found = 0
    for shard in shards:
        with safetensors.safe_open(str(shard), "pt") as f:
            for name in f.keys():
                layer = next(layer for layer in log if layer.operation_index == int(name.split("/")[1]))
                assert torch.equal(f.get_tensor(name), layer.activation)
                found += 1
    assert found == len({tensor_key(layer.activation) for layer in log if layer.activation is not None})


@pytest.mark.gpu
def test_cuda_activations_are_saved_from_cpu_copies(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).cuda()
    log = lt.log_forward_pass(model, torch.randn(2, 4, device="cuda"), random_seed=0)
    lt.save(log, tmp_path / "b")
    loaded = lt.load(tmp_path / "b")
    assert loaded["relu_1_2"].device == "cuda:0" and loaded["relu_1_2"].activation.device.type == "cpu"
    assert torch.equal(loaded["relu_1_2"].activation, log["relu_1_2"].activation.cpu())


# -- atomic writes ---------------------------------------------------------------------------
def test_save_replaces_an_old_bundle(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    lt.save(lt.log_forward_pass(nn.ReLU(), torch.ones(2)), tmp_path / "b")
    lt.save(recurrent_log, tmp_path / "b")
    assert_same_log(recurrent_log, lt.load(tmp_path / "b"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("fail_at", ["append", "commit", "rename"])
def test_a_failed_save_leaves_the_old_bundle_intact(tmp_path: Path, recurrent_log: lt.ModelLog,
                                                    monkeypatch: pytest.MonkeyPatch, fail_at: str) -> None:
    old = lt.log_forward_pass(DemoNetwork(), torch.randn(1, 5), random_seed=0)
    lt.save(old, tmp_path / "b")
    if fail_at == "rename":  # the new bundle is complete; moving it into place fails
        real_rename, calls = os.rename, []

        def rename(src, dst):  # noqa: ANN001
            calls.append(dst)
            if len(calls) == 2:
                raise OSError("disk gone")
            real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename)
    else:
        real = getattr(BundleWriter, fail_at)
        state = {"n": 0}

        def failing(self, *args):  # noqa: ANN001, ANN002
            state["n"] += 1
            if state["n"] == 3 or fail_at == "commit":
                raise OSError("disk full")
            return real(self, *args)

        monkeypatch.setattr(BundleWriter, fail_at, failing)
    with pytest.raises(OSError):
        lt.save(recurrent_log, tmp_path / "b")
    monkeypatch.undo()
    assert_same_log(old, lt.load(tmp_path / "b"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_save_refuses_to_overwrite_something_that_is_not_a_bundle(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="Refusing to overwrite .*data.*not a lens_train bundle"):
        lt.save(recurrent_log, tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep me"
    with pytest.raises(lt.errors.ArgumentTypeError, match="log must be a ModelLog, got {}"):
        lt.save({}, tmp_path / "x")


def test_load_points_to_the_old_bundle_after_an_interrupted_replace(tmp_path: Path, recurrent_log: lt.ModelLog) -> None:
    lt.save(recurrent_log, tmp_path / "b")
    os.rename(tmp_path / "b", tmp_path / ".b.old-1234abcd")  # a crash between the two renames
    with pytest.raises(BundleError, match=r"interrupted; the previous bundle is at .*\.b\.old-1234abcd"):
        lt.load(tmp_path / "b")


# -- bad input ---------------------------------------------------------------------------
def _saved(tmp_path: Path) -> Path:
    lt.save(lt.log_forward_pass(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.randn(2, 3), random_seed=0), tmp_path / "b")
    return tmp_path / "b"


def test_paths_that_are_not_bundles(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="No bundle at .*nowhere.*does not exist"):
        lt.load(tmp_path / "nowhere")
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(BundleError, match="f.txt.* is a file, not a bundle"):
        lt.load(tmp_path / "f.txt")
    with pytest.raises(BundleError, match="is not a lens_train bundle: it has no manifest.json"):
        lt.load(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_bytes(frame("manifest", {"format": "something.else"}))
    with pytest.raises(BundleError, match="manifest.json is not a lens_train bundle manifest"):
        lt.load(tmp_path / "other")


def test_unknown_format_version(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    manifest = unframe((path / "manifest.json").read_bytes(), "manifest", "m")
    (path / "manifest.json").write_bytes(frame("manifest", {**manifest, "format_version": 99}))
    with pytest.raises(BundleError, match="manifest.json: unknown bundle format version 99; this lens_train reads version 1"):
        lt.load(path)


def test_modified_and_truncated_manifest(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = (path / "manifest.json").read_bytes()
    (path / "manifest.json").write_bytes(data.replace(b'"random_seed":0', b'"random_seed":7'))
    with pytest.raises(BundleError, match="manifest.json fails its checksum"):
        lt.load(path)
    (path / "manifest.json").write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="manifest.json is not a lens_train manifest record"):
        lt.load(path)


def test_missing_truncated_grown_and_modified_shards(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    shard = _shards(path)[0]
    data = shard.read_bytes()
    shard.write_bytes(data[:-3])
    with pytest.raises(BundleError, match=f"{shard.name}: shard file is truncated: {len(data) - 3} bytes"):
        lt.load(path)
    lazy = lt.load(path, lazy=True)  # opening reads no shard...
    with pytest.raises(BundleError, match="shard file is truncated"):
        lazy["relu_1_2"].materialize_activation()  # ...reading a tensor does
    shard.write_bytes(data + b"\0")
    with pytest.raises(BundleError, match="shard file is modified \\(it grew\\)"):
        lt.load(path)
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match=f"{shard.name}: tensor 'activation/\\d+' fails its checksum"):
        lt.load(path)
    with pytest.raises(BundleError, match="fails its checksum"):
        lt.load(path, lazy=True)["output_1_3"].materialize_activation()
    shard.write_bytes(data[:20] + b"X" + data[21:])
    with pytest.raises(BundleError, match="shard header fails its checksum"):
        lt.load(path)
    shard.unlink()
    with pytest.raises(BundleError, match=f"{shard.name}: shard file is missing"):
        lt.load(path)


@pytest.mark.parametrize("written_by", ["save", "stream"])
def test_random_corruption_never_loads_wrong_values(tmp_path: Path, written_by: str) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    path = tmp_path / "b"
    log = lt.log_forward_pass(model, torch.randn(1, 2), activation_postfunc=lambda t: t.sum(), random_seed=0,
                              save_activations_to=path if written_by == "stream" else None)
    if written_by == "save":
        lt.save(log, path)
    files = [path / "manifest.json", *_shards(path), *path.glob("commits.jsonl")]
    assert len(files) == (3 if written_by == "stream" else 2)
    originals = {f: f.read_bytes() for f in files}
    rng = random.Random(0)
    outcomes = {"error": 0, "ok": 0}
    for _ in range(200):
        f = rng.choice(files)
        data = bytearray(originals[f])
        if rng.random() < 0.1:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.choice([1, 1, 2, 8])):
                data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        f.write_bytes(bytes(data))
        try:
            loaded = lt.load(path, lazy=rng.random() < 0.3)
            assert_same_log(log, loaded, materialize=True)
            outcomes["ok"] += 1
        except BundleError:
            outcomes["error"] += 1
        f.write_bytes(originals[f])
    assert outcomes["error"] > 150, outcomes
    assert_same_log(log, lt.load(path))


def test_a_finished_streams_journal_cut_or_removed_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "s"
    lt.log_forward_pass(nn.ReLU(), torch.ones(2), save_activations_to=path)
    journal = path / "commits.jsonl"
    data = journal.read_bytes()
    journal.write_bytes(b"")  # cut at a record boundary: every remaining record is intact
    with pytest.raises(BundleError, match=rf"commits.jsonl is truncated: 0 bytes holding 0 commit records; manifest.json says {len(data)} bytes, 1 records"):
        lt.load(path)
    journal.write_bytes(data + data)
    with pytest.raises(BundleError, match="commits.jsonl, line 2: commit record 1 is malformed"):  # a replayed record
        lt.load(path)
    journal.unlink()
    with pytest.raises(BundleError, match="commits.jsonl: the journal is missing; manifest.json says it holds 1 commit records"):
        lt.load(path, lazy=True)


def test_malformed_metadata_with_a_valid_checksum_is_a_bundle_error(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    manifest = unframe((path / "manifest.json").read_bytes(), "manifest", "m")
    table = manifest["units"][0]["metadata"]["layers"]
    column = table["columns"].index("transformed_activation")
    table["rows"][1][column] = {"$dtype": "load"}  # only dtypes are ever looked up in torch
    (path / "manifest.json").write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match="unknown dtype 'load'"):
        lt.load(path)
    table["rows"][1][column] = None
    table["rows"][1][0] = {"$dtype": "float32"}
    (path / "manifest.json").write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match="layer 1 field 'layer_label': expected a string"):
        lt.load(path)
    table["rows"][1][0] = "linear_1_1"
    del manifest["units"][0]["metadata"]["model_name"]
    (path / "manifest.json").write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match="field 'model_name' is missing"):
        lt.load(path)


def test_bundle_holding_no_capture(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "r", kind="rollouts") as w:
        w.commit({"reward": 1})
    with pytest.raises(BundleError, match="holds 1 units of kind 'rollouts', no capture"):
        lt.load(tmp_path / "r")
    shutil.rmtree(tmp_path / "r")
    w = BundleWriter(tmp_path / "r", kind="capture")
    w.append("activation/0", torch.ones(3))  # then the process dies: no commit
    with pytest.raises(BundleError, match="no committed capture.*activations-00000.safetensors .*never committed"):
        bundle_mod.load(tmp_path / "r")
