"""Writes never leave their directory: no writing through symlinks, names from files confined."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import lens_train as lt
from lens_train.bundle.files import MARKER, writer_identity
from lens_train.bundle.format import JOURNAL_NAME, MANIFEST_NAME
from lens_train.bundle.snapshots import Snapshot, read_index, write_index
from lens_train.callbacks._reference import save_reference
from lens_train.errors import BundleError


def _log() -> lt.ModelLog:
    return lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), torch.ones(1, 3))


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    return victim


def _record(path: Path) -> None:
    net = torch.nn.ReLU()
    with lt.fastlog.Recorder(net, keep_op=lambda c: True, storage="disk", path=path):
        net(torch.ones(2))


@pytest.mark.parametrize("planted", [JOURNAL_NAME, MANIFEST_NAME + ".tmp", MANIFEST_NAME])
def test_append_refuses_a_planted_symlink_and_leaves_its_target(tmp_path: Path, planted: str) -> None:
    bundle, victim = tmp_path / "b", _victim(tmp_path)
    lt.save(_log(), bundle, append=True)
    if planted == MANIFEST_NAME:  # a link to a valid manifest: readable, never replaced
        victim.write_bytes((bundle / MANIFEST_NAME).read_bytes())
    before = victim.read_bytes()
    (bundle / planted).unlink(missing_ok=True)
    (bundle / planted).symlink_to(victim)
    with pytest.raises(BundleError, match="is a symlink"):
        lt.save(_log(), bundle, append=True)
    assert victim.read_bytes() == before


def test_append_never_writes_into_a_planted_shard_name(tmp_path: Path) -> None:
    bundle, victim = tmp_path / "b", _victim(tmp_path)
    lt.save(_log(), bundle, append=True)
    (bundle / "activations-00001.safetensors").symlink_to(victim)
    lt.save(_log(), bundle, append=True)  # the next shard gets a fresh name
    assert victim.read_text() == "precious" and lt.load(bundle, unit=1).model_name == "Sequential"


@pytest.mark.parametrize("planted", [JOURNAL_NAME, MANIFEST_NAME + ".tmp"])
def test_a_disk_recording_refuses_a_planted_symlink(tmp_path: Path, planted: str) -> None:
    rec, victim = tmp_path / "rec", _victim(tmp_path)
    _record(rec)
    (rec / planted).unlink(missing_ok=True)
    (rec / planted).symlink_to(victim)
    with pytest.raises(BundleError, match="symlink"):
        _record(rec)
    assert victim.read_text() == "precious"


def test_snapshot_index_and_reference_refuse_planted_symlinks(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    snaps = tmp_path / "runs" / "v0" / "snapshots"
    snaps.mkdir(parents=True)
    (snaps / "index.json.tmp").symlink_to(victim)
    with pytest.raises(BundleError, match="symlink"):
        write_index(snaps, [], None)
    (snaps / "reference.safetensors.tmp").symlink_to(victim)
    with pytest.raises(BundleError, match="symlink"):
        save_reference(torch.ones(2), snaps / "reference.safetensors")
    assert victim.read_text() == "precious"


def test_symlinks_in_the_given_path_are_followed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (tmp_path / "logs").symlink_to(scratch)  # a parent that is a link
    log = _log()
    lt.save(log, tmp_path / "logs" / "run")
    assert (scratch / "run" / MANIFEST_NAME).is_file()
    (tmp_path / "latest").symlink_to(scratch / "run")  # the bundle directory itself is a link
    lt.save(log, tmp_path / "latest")
    lt.save(log, tmp_path / "latest", append=True)
    assert (tmp_path / "latest").is_symlink() and lt.load(tmp_path / "latest", unit=1).model_name == log.model_name
    assert torch.equal(lt.load(scratch / "run")["relu_1_2"].activation, log["relu_1_2"].activation)


def test_reading_symlinked_data_files_inside_a_bundle_is_allowed(tmp_path: Path) -> None:
    """Data managed by tools such as DVC is a link into a cache: reading through it is fine."""
    log, bundle, cache = _log(), tmp_path / "b", tmp_path / "cache"
    lt.save(log, bundle)
    cache.mkdir()
    for shard in bundle.glob("activations-*.safetensors"):
        shard.rename(cache / shard.name)
        shard.symlink_to(cache / shard.name)
    assert torch.equal(lt.load(bundle)["relu_1_2"].activation, log["relu_1_2"].activation)
    assert torch.equal(lt.load(bundle, lazy=True)["relu_1_2"].materialize_activation(), log["relu_1_2"].activation)


def _index(directory: Path, paths: list[str]) -> None:
    entries = [{"index": i, "name": Path(p).name, "epoch": 0, "step": i, "path": p, "cka": {}} for i, p in enumerate(paths)]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "index.json").write_text(json.dumps({"format": "lens_train.snapshots", "version": 2, "snapshots": entries}))


def test_an_index_lists_other_runs_only_under_the_same_log_root(tmp_path: Path) -> None:
    here = tmp_path / "logs" / "runs" / "v1" / "snapshots"
    _index(here, ["../../v0/snapshots/epoch=000-step=000003", "epoch=000-step=000004"])
    assert [s.path for s in read_index(here)] == [str(tmp_path / "logs/runs/v0/snapshots/epoch=000-step=000003"),
                                                  str(here / "epoch=000-step=000004")]
    outside = ["../../../other/epoch=000-step=000001", "/etc/epoch=000-step=000001",
               str(tmp_path / "elsewhere" / "epoch=000-step=000001"), "../../v0/snapshots/../../../x/epoch=000-step=000001"]
    for bad in outside:
        _index(here, [bad])
        with pytest.raises(BundleError, match="outside the log root"):
            lt.load_snapshots(here)


@pytest.mark.parametrize("entry", [
    {"name": "../../etc", "path": "../../etc"}, {"name": "epoch=000-step=000001", "path": "epoch=000-step=000002"},
    {"index": -1}, {"step": "3"}, {"cka": {"a": "x"}}, {"path": None}])
def test_malformed_index_entries_are_bundle_errors(tmp_path: Path, entry: dict) -> None:
    good = {"index": 0, "name": "epoch=000-step=000001", "epoch": 0, "step": 1, "path": "epoch=000-step=000001", "cka": {}}
    here = tmp_path / "r" / "v0" / "snapshots"
    here.mkdir(parents=True)
    (here / "index.json").write_text(json.dumps({"format": "lens_train.snapshots", "snapshots": [{**good, **entry}]}))
    with pytest.raises(BundleError):
        read_index(here)


def test_write_index_stores_paths_relative_and_refuses_outside_the_root(tmp_path: Path) -> None:
    here = tmp_path / "runs" / "v1" / "snapshots"
    earlier = tmp_path / "runs" / "v0" / "snapshots" / "epoch=000-step=000002"
    write_index(here, [Snapshot(0, earlier.name, 0, 2, str(earlier))], None)
    stored = json.loads((here / "index.json").read_text())["snapshots"][0]["path"]
    assert stored == "../../v0/snapshots/epoch=000-step=000002" and not os.path.isabs(stored)
    far = tmp_path / "elsewhere" / "epoch=000-step=000002"
    with pytest.raises(BundleError, match="outside the log root"):
        write_index(here, [Snapshot(0, far.name, 0, 2, str(far))], None)


# -- debris of killed writers ------------------------------------------------------------------------
def _debris(parent: Path, name: str, marker: dict | None) -> Path:
    path = parent / name
    path.mkdir()
    (path / "activations-00000.safetensors").write_bytes(b"\0" * 100)
    if marker is not None:
        (path / MARKER).write_text(json.dumps(marker))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_the_next_save_removes_debris_of_dead_writers_only(tmp_path: Path) -> None:
    lt.save(_log(), tmp_path / "b")
    host = socket.gethostname()
    dead = {"host": host, "pid": _dead_pid(), "start": "1"}
    debris = {
        "dead new": _debris(tmp_path, ".b.new-aaaa", dead),
        "dead old": _debris(tmp_path, ".b.old-bbbb", dead),
        "reused pid": _debris(tmp_path, ".b.new-cccc", {"host": host, "pid": os.getpid(), "start": "-5"}),
    }
    kept = {
        "alive": _debris(tmp_path, ".b.new-dddd", writer_identity()),
        "no marker": _debris(tmp_path, ".b.new-eeee", None),
        "other host": _debris(tmp_path, ".b.new-ffff", {**dead, "host": host + "-elsewhere"}),
        "another bundle": _debris(tmp_path, ".c.new-gggg", dead),
        "not debris": _debris(tmp_path, ".b.newer", dead),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lt.load(tmp_path / "b")  # loading never deletes anything
    assert all(p.is_dir() for p in [*debris.values(), *kept.values()])
    lt.save(_log(), tmp_path / "b")
    assert [k for k, p in debris.items() if p.exists()] == [] and all(p.is_dir() for p in kept.values())
    assert not (tmp_path / "b" / MARKER).exists()


def test_a_killed_save_leaves_debris_the_next_save_removes(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, torch, lens_train as lt
        from lens_train.bundle import writer
        log = lt.log_forward_pass(torch.nn.Linear(200, 200), torch.ones(50, 200))
        commit = writer.BundleWriter.commit
        writer.BundleWriter.commit = lambda self, metadata=None: os._exit(9)  # killed after writing the tensors
        lt.save(log, {str(tmp_path / "b")!r})
    """)
    lt.save(_log(), tmp_path / "b")
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent.parent, timeout=300)
    assert proc.returncode == 9
    (left,) = tmp_path.glob(".b.new-*")
    assert json.loads((left / MARKER).read_text())["host"] == socket.gethostname()
    assert lt.load(tmp_path / "b").model_name == "Sequential" and left.is_dir()  # loading never deletes
    lt.save(_log(), tmp_path / "b")
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("name", ["../activations-00000.safetensors", "/etc/activations-00000.safetensors",
                                  "sub/../../activations-00000.safetensors", "activations-00000.safetensors/../../x"])
def test_shard_names_from_a_manifest_never_leave_the_bundle(tmp_path: Path, name: str) -> None:
    from lens_train.bundle.format import frame, unframe

    bundle = tmp_path / "b"
    lt.save(_log(), bundle)
    manifest = unframe((bundle / MANIFEST_NAME).read_bytes(), "manifest", "m")
    unit = manifest["units"][0]
    old = unit["shards"][0]["file"]
    unit["shards"][0]["file"] = name
    for entry in unit["tensors"].values():
        entry["shard"] = name if entry["shard"] == old else entry["shard"]
    (bundle / MANIFEST_NAME).write_bytes(frame("manifest", manifest))
    with pytest.raises(BundleError, match="commit record 0 is malformed"):
        lt.load(bundle)
