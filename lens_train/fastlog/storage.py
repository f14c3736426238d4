"""Disk storage of fastlog rollouts: append-only, crash-safe, no pickle.

Layout of a recording directory::

    manifest.jsonl                 header line, then one JSON line per committed rollout
    rollouts/rollout_000000.safetensors   the kept tensors of rollout 0, keyed by label

A rollout is committed in two steps: its shard is written to a temporary file,
fsynced and renamed into place; then its manifest line is appended and fsynced. A
rollout exists only once its manifest line does, so a process killed at any moment
leaves complete rollouts plus, at worst, one shard without a line or one torn line:
:func:`recover` loads the former and reports the latter.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from ..errors import BundleError
from .context import RecordContext
from .recording import Entry, Recording, Rollout

FORMAT = "lens_train.fastlog"
VERSION = 1
MANIFEST = "manifest.jsonl"
SHARDS = "rollouts"


class RolloutWriter:
    """Appends committed rollouts to a recording directory (new or existing).

    Example:
        >>> import tempfile, torch
        >>> w = RolloutWriter(tempfile.mkdtemp())
        >>> w.commit([], {}, num_calls=1)
        0
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        (self.path / SHARDS).mkdir(parents=True, exist_ok=True)
        manifest = self.path / MANIFEST
        committed = _read_manifest(manifest)[0] if manifest.exists() else None
        self.next_index = 1 + max((line["rollout"] for line in committed), default=-1) if committed else 0
        self._file = open(manifest, "a", encoding="utf-8")
        if committed is None:
            self._append({"format": FORMAT, "version": VERSION})

    def commit(self, contexts: list[RecordContext], tensors: dict[str, torch.Tensor], num_calls: int) -> int:
        """Durably add one rollout; returns its index."""
        index = self.next_index
        shard = f"{SHARDS}/rollout_{index:06d}.safetensors"
        final = self.path / shard
        tmp = final.with_suffix(".tmp")
        data = save({k: _storable(v) for k, v in tensors.items()}, metadata={"format": FORMAT, "rollout": str(index)})
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        _fsync_path(final.parent)
        self._append({"rollout": index, "shard": shard, "num_calls": num_calls,
                      "entries": [c.describe() for c in contexts]})
        self.next_index += 1
        return index

    def close(self) -> None:
        """Close the manifest (everything committed is already on disk)."""
        self._file.close()

    def _append(self, obj: dict[str, Any]) -> None:
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def _storable(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # directories cannot be opened on some platforms
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_manifest(manifest: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(committed rollout lines, problems) of a manifest; a torn last line is a problem."""
    raw = manifest.read_bytes().decode("utf-8", errors="replace")
    lines = raw.split("\n")
    problems: list[str] = []
    if not lines or not lines[0].strip():
        raise BundleError(f"{manifest} is empty: no fastlog recording was started there. Record one with lt.fastlog.Recorder(model, keep_op, storage='disk', path=...).")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = {}
    if header.get("format") != FORMAT:
        raise BundleError(f"{manifest} is not a fastlog manifest (first line {lines[0][:80]!r}). Pass the directory given to lt.fastlog.Recorder(..., path=...).")
    if header.get("version", 0) > VERSION:
        raise BundleError(f"{manifest} has format version {header['version']}, newer than this lens_train ({VERSION}). Upgrade lens_train to read it.")
    committed = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        try:
            committed.append(json.loads(line))
        except json.JSONDecodeError:
            problems.append(f"manifest line {n} is incomplete ({len(line)} bytes): a rollout whose commit was interrupted")
    return committed, problems


def load(path: str | os.PathLike) -> Recording:
    """Open a fastlog recording directory; tensors are read from disk when first used.

    Raises :class:`~lens_train.errors.BundleError` if anything committed is damaged
    (use :func:`recover` after a crash).

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> d = tempfile.mkdtemp()
        >>> net = torch.nn.ReLU()
        >>> with lt.fastlog.Recorder(net, keep_op=lambda c: True, storage="disk", path=d):
        ...     for _ in range(2):
        ...         _ = net(torch.ones(2))
        >>> rec = lt.fastlog.load(d)
        >>> len(rec.rollouts), rec[1]["relu_1"].tolist()
        (2, [1.0, 1.0])
    """
    rec = recover(path)
    if rec.lost:
        raise BundleError(f"The recording at {path} is damaged: {rec.lost[0]}. Load what is complete with lt.fastlog.recover({str(path)!r}).")
    return rec


def recover(path: str | os.PathLike) -> Recording:
    """Load every complete rollout of a recording, even one whose process crashed.

    Rollouts whose commit did not finish are skipped and described in ``rec.lost``
    (also shown by ``rec.summary()``).

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> d = tempfile.mkdtemp()
        >>> model = torch.nn.Sequential(torch.nn.ReLU())
        >>> with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path=d):
        ...     _ = model(torch.ones(2))
        >>> rec = lt.fastlog.recover(d)
        >>> len(rec.rollouts), rec.lost
        (1, [])
    """
    root = Path(path)
    manifest = root / MANIFEST
    if not manifest.exists():
        raise BundleError(f"No fastlog recording at {root} ({MANIFEST} is missing). Record with lt.fastlog.Recorder(model, keep_op, storage='disk', path={str(root)!r}).")
    committed, lost = _read_manifest(manifest)
    rollouts = []
    listed = set()
    for line in committed:
        listed.add(line["shard"])
        shard = root / line["shard"]
        problem = _check_shard(shard, [e["label"] for e in line["entries"]])
        if problem:
            lost.append(f"rollout {line['rollout']}: {problem}")
            continue
        entries = [Entry(RecordContext.from_description(e), None, _loader(shard, e["label"])) for e in line["entries"]]
        rollouts.append(Rollout(line["rollout"], entries, line.get("num_calls", 1)))
    shard_dir = root / SHARDS
    for f in sorted(shard_dir.iterdir()) if shard_dir.exists() else ():
        rel = f"{SHARDS}/{f.name}"
        if rel not in listed:
            what = "partly written shard" if f.suffix == ".tmp" else "shard with no manifest line"
            lost.append(f"{rel}: {what} (its rollout was not committed)")
    return Recording(rollouts, path=str(root), lost=lost)


def _check_shard(shard: Path, labels: list[str]) -> str | None:
    if not shard.exists():
        return f"shard {shard.name} is missing"
    try:
        with safe_open(str(shard), framework="pt") as f:
            missing = set(labels) - set(f.keys())
    except Exception as exc:  # safetensors raises its own error types for damaged files
        return f"shard {shard.name} cannot be read ({exc})"
    return f"shard {shard.name} lacks {sorted(missing)}" if missing else None


def _loader(shard: Path, key: str) -> Any:
    def load_one() -> torch.Tensor:
        with safe_open(str(shard), framework="pt") as f:
            return f.get_tensor(key)

    return load_one
