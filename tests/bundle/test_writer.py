"""BundleWriter / BundleReader: append-only units, commits, what a crash leaves, every dtype."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from lens_train.bundle.format import JOURNAL_NAME, MANIFEST_NAME, frame
from lens_train.bundle.reader import BundleReader
from lens_train.bundle.writer import BundleWriter
from lens_train.errors import BundleError, InvalidArgumentError
from tests.models.log_compare import bit_equal

_DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.complex128, torch.complex64,
           torch.complex32, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16,
           torch.uint32, torch.uint64, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
           torch.float8_e5m2fnuz, torch.float8_e8m0fnu]


def _random_bits(dtype: torch.dtype, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """A tensor of ``dtype`` whose bytes are random (NaN payloads, subnormals, negative zeros)."""
    n = dtype.itemsize
    for s in shape:
        n *= s
    return torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen).view(dtype).reshape(shape)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_every_cpu_dtype_round_trips_bit_exactly(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {f"t/{d}": _random_bits(d, (3, 4), gen) for d in _DTYPES}
    tensors["bool"] = torch.randint(0, 2, (5,), generator=gen).bool()
    tensors["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.empty(0, 3, dtype=torch.complex64)
    tensors["transposed"] = torch.arange(12.0).reshape(3, 4).t()
    tensors["conj"] = torch.tensor([1 + 2j, 3 - 4j]).conj()
    tensors["neg_view"] = torch.tensor([1 + 2j]).conj().imag
    tensors["needs_grad"] = torch.ones(2, requires_grad=True) * 3
    with BundleWriter(tmp_path / "b") as w:
        for name, t in tensors.items():
            w.append(name, t)
        w.commit()
    got = BundleReader(tmp_path / "b").read_tensors(0, list(tensors))
    for name, t in tensors.items():
        assert bit_equal(got[name], t.detach().resolve_conj().resolve_neg()), name
        assert not got[name].requires_grad


def test_shards_are_valid_safetensors_with_complex_stored_as_real_pairs(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors")
    z = torch.tensor([[1 + 2j, 3 - 4j]], dtype=torch.complex64)
    with BundleWriter(tmp_path / "b") as w:
        w.append("z", z)
        w.append("b", torch.tensor([True, False]))
        w.append("f8", torch.zeros(2, dtype=torch.float8_e8m0fnu))
        w.commit()
    with safetensors.safe_open(str(tmp_path / "b" / "activations-00000.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("z"), torch.view_as_real(z))
        assert torch.equal(f.get_tensor("b"), torch.tensor([True, False]))
        assert f.get_tensor("f8").dtype == torch.uint8 and f.get_tensor("f8").shape == (2,)
    entries = BundleReader(tmp_path / "b").units[0]["tensors"]
    assert (entries["z"]["stored"], entries["f8"]["stored"], entries["b"]["stored"]) == ("complex_as_real", "bytes", "native")


def test_units_commit_independently_and_close_marks_the_bundle_complete(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "r", kind="rollouts")
    for i in range(3):
        w.append("obs", torch.full((2,), float(i)))
        w.append("act", torch.tensor([i]))
        assert w.commit({"rollout": i}) == i
    reader = BundleReader(tmp_path / "r")  # readable while still open
    assert not reader.manifest["complete"]
    assert [u["metadata"] for u in reader.units] == [{"rollout": 0}, {"rollout": 1}, {"rollout": 2}]
    assert torch.equal(reader.read_tensor(2, "obs"), torch.full((2,), 2.0))
    w.close()
    assert len((tmp_path / "r" / JOURNAL_NAME).read_bytes().splitlines()) == 3  # the journal is where units live
    reader = BundleReader(tmp_path / "r")
    assert reader.manifest["complete"] and reader.manifest["kind"] == "rollouts" and len(reader.units) == 3
    assert torch.equal(reader.read_tensor(1, "act"), torch.tensor([1]))
    assert torch.equal(reader.read_tensor(-1, "act"), torch.tensor([2]))


def test_a_crash_leaves_committed_units_and_reports_the_rest(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "r")
    w.append("x", torch.ones(3))
    w.commit({"n": 0})
    w.append("x", torch.zeros(1000))  # appended, never committed: the process dies here
    journal = tmp_path / "r" / JOURNAL_NAME
    with open(journal, "ab") as f:
        f.write(frame("unit", {"index": 1})[:25])  # and died in the middle of a commit record
    reader = BundleReader(tmp_path / "r")
    assert len(reader.units) == 1 and torch.equal(reader.read_tensor(0, "x"), torch.ones(3))
    assert any("unfinished commit record (25 bytes)" in s for s in reader.left_out)
    assert any(s.startswith("activations-00001.safetensors (") and "never committed" in s for s in reader.left_out)
    with pytest.raises(BundleError, match="no committed unit 1"):
        reader.read_tensor(1, "x")


def test_a_modified_commit_record_is_an_error_not_a_crash_artifact(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "r")
    for i in range(2):
        w.commit({"n": i})
    journal = tmp_path / "r" / JOURNAL_NAME
    journal.write_bytes(journal.read_bytes().replace(b'"n":0', b'"n":5'))
    with pytest.raises(BundleError, match=r"commits.jsonl, line 1 fails its checksum"):
        BundleReader(tmp_path / "r")


def test_shards_rotate_on_size_and_on_a_full_header(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "a", shard_size=100) as w:
        for i in range(5):
            w.append(f"t{i}", torch.full((10,), float(i)))  # 40 bytes each: two per shard
        w.commit()
    assert len(list((tmp_path / "a").glob("*.safetensors"))) == 3
    with BundleWriter(tmp_path / "b", header_reserve=64) as w:
        for i in range(300):
            w.append(f"layer/{i}", torch.tensor([i]))
        w.commit()
    reader = BundleReader(tmp_path / "b")
    assert 2 <= len(reader.units[0]["shards"]) <= 10
    got = reader.read_tensors(0, reader.tensor_names(0))
    assert all(int(got[f"layer/{i}"]) == i for i in range(300))


def test_writer_refuses_bad_names_values_and_paths(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "b")
    w.append("x", torch.ones(1))
    with pytest.raises(InvalidArgumentError, match="'x' is not usable \\(already used in this unit\\)"):
        w.append("x", torch.ones(1))
    with pytest.raises(InvalidArgumentError, match="Cannot save 's': sparse|Cannot save 's'"):
        w.append("s", torch.eye(2).to_sparse())
    with pytest.raises(InvalidArgumentError, match="commit metadata must be plain JSON"):
        w.commit({"f": float("nan")})
    w.commit({"ok": True})
    w.close()
    with pytest.raises(InvalidArgumentError, match="is closed"):
        w.append("y", torch.ones(1))
    with pytest.raises(BundleError, match="already exists"):
        BundleWriter(tmp_path / "b")


def test_reader_rejects_entries_that_point_outside_their_shard(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b", journal=False) as w:  # units in manifest.json, as lt.save writes them
        w.append("x", torch.ones(4))
        w.commit()
    path = tmp_path / "b" / MANIFEST_NAME
    manifest = json.loads(path.read_text())["manifest"]
    manifest["units"][0]["tensors"]["x"]["nbytes"] = 1 << 40
    path.write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match="tensor 'x' has a malformed entry"):
        BundleReader(tmp_path / "b").read_tensor(0, "x")
    manifest["units"][0]["tensors"]["x"]["nbytes"] = 16
    manifest["units"][0]["shards"][0]["file"] = "../../etc/passwd"
    path.write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match="commit record 0 is malformed"):
        BundleReader(tmp_path / "b")


def test_shard_header_is_reserved_then_filled(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b", header_reserve=200) as w:
        w.append("x", torch.arange(3, dtype=torch.int16))
        w.commit()
    data = (tmp_path / "b" / "activations-00000.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n == 200 and json.loads(data[8:8 + n])["x"] == {"dtype": "I16", "shape": [3], "data_offsets": [0, 6]}
    assert data[8 + n:] == torch.arange(3, dtype=torch.int16).numpy().tobytes()


def test_reopening_appends_after_the_last_unit_even_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "r"
    w = BundleWriter(path, kind="rollouts")
    w.append("x", torch.zeros(2))
    w.commit({"n": 0})
    w.append("x", torch.ones(500))  # never committed
    w._journal.close()  # the process dies: its files stay as they are, its lock goes with it
    with open(path / JOURNAL_NAME, "ab") as f:
        f.write(frame("unit", {"index": 1})[:30])
    with BundleWriter(path, kind="rollouts", append=True) as w2:
        assert w2.num_units == 1
        w2.append("x", torch.full((2,), 7.0))
        assert w2.commit({"n": 1}) == 1
    reader = BundleReader(path)
    assert [u["metadata"] for u in reader.units] == [{"n": 0}, {"n": 1}] and reader.manifest["complete"]
    assert torch.equal(reader.read_tensor(1, "x"), torch.full((2,), 7.0))
    assert reader.units[1]["shards"][0]["file"] == "activations-00002.safetensors"  # the dead writer's shard is not reused
    (left,) = reader.left_out
    assert left.startswith("activations-00001.safetensors (") and left.endswith("): written but never committed "
                                                                               "(the writer stopped before its unit's commit).")


def test_reopening_a_saved_bundle_keeps_its_units(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b", kind="capture", journal=False) as w:
        w.append("a", torch.arange(3))
        w.commit({"i": 0})
    w = BundleWriter(tmp_path / "b", kind="capture", append=True)
    assert not BundleReader(tmp_path / "b").manifest["complete"]  # open for writing again
    w.append("a", torch.arange(4))
    w.commit({"i": 1})
    w.close()
    reader = BundleReader(tmp_path / "b")
    assert reader.manifest["complete"] and [u["index"] for u in reader.units] == [0, 1]
    assert torch.equal(reader.read_tensor(0, "a"), torch.arange(3)) and torch.equal(reader.read_tensor(1, "a"), torch.arange(4))


def test_reopening_checks_kind_locks_and_paths(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "r", kind="rollouts") as w:
        w.commit()
    with pytest.raises(BundleError, match=r"kind 'capture'.*holds units of kind 'rollouts'.*kind='rollouts', append=True"):
        BundleWriter(tmp_path / "r", kind="capture", append=True)
    first = BundleWriter(tmp_path / "r", kind="rollouts", append=True)
    with pytest.raises(BundleError, match="being written by another BundleWriter"):
        BundleWriter(tmp_path / "r", kind="rollouts", append=True)
    first.close()
    BundleWriter(tmp_path / "r", kind="rollouts", append=True).close()
    with pytest.raises(InvalidArgumentError, match="journal=True to append"):
        BundleWriter(tmp_path / "x", append=True, journal=False)
    w = BundleWriter(tmp_path / "new", kind="rollouts", append=True)  # append to nothing: a new bundle
    w.abort()
    assert not (tmp_path / "new").exists()


def test_close_and_abort_discard_uncommitted_tensors(tmp_path: Path) -> None:
    w = BundleWriter(tmp_path / "r", header_reserve=64)
    w.append("kept", torch.ones(2))
    w.commit()
    for i in range(5):
        w.append(f"dropped/{i}", torch.ones(100))  # several shards (small headers), none committed
    assert w.uncommitted == [f"dropped/{i}" for i in range(5)]
    w.close()
    reader = BundleReader(tmp_path / "r")
    assert reader.left_out == [] and len(list((tmp_path / "r").glob("*.safetensors"))) == 1
    w = BundleWriter(tmp_path / "r", append=True)
    w.append("dropped", torch.ones(3))
    w.abort()  # a reopened bundle is never removed
    assert len(BundleReader(tmp_path / "r").units) == 1 and BundleReader(tmp_path / "r").left_out == []


def test_a_lenient_reader_skips_a_damaged_record_and_says_so(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "r") as w:
        for i in range(3):
            w.append("x", torch.tensor([i]))
            w.commit({"n": i})
    journal = tmp_path / "r" / JOURNAL_NAME
    journal.write_bytes(journal.read_bytes().replace(b'"n":1', b'"n":9'))
    with pytest.raises(BundleError, match="line 2 fails its checksum"):
        BundleReader(tmp_path / "r")
    reader = BundleReader(tmp_path / "r", strict=False)
    assert [u["index"] for u in reader.units] == [0, 2]
    assert torch.equal(reader.read_tensor(2, "x"), torch.tensor([2])) and torch.equal(reader.read_tensor(-1, "x"), torch.tensor([2]))
    with pytest.raises(BundleError, match="no committed unit 1"):
        reader.read_tensor(1, "x")
    assert any("line 2 fails its checksum" in s and "Unit 1 was skipped" in s for s in reader.left_out)
    with pytest.raises(BundleError, match="line 2 fails its checksum"):
        BundleWriter(tmp_path / "r", append=True)  # damage is not silently appended to


def test_discard_leaves_an_appended_tensor_out_of_the_unit(tmp_path: Path) -> None:
    with BundleWriter(tmp_path / "b", kind="rollouts") as writer:
        writer.append("kept", torch.ones(2))
        writer.append("dropped", torch.zeros(3))
        writer.discard("dropped")
        with pytest.raises(InvalidArgumentError, match="No tensor 'nope' appended"):
            writer.discard("nope")
        writer.commit({})
    reader = BundleReader(tmp_path / "b")
    assert reader.tensor_names(0) == ["kept"] and reader.read_tensor(0, "kept").tolist() == [1.0, 1.0]
