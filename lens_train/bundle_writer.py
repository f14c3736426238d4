"""The append-only bundle writer: tensors stream into shard files, ``commit`` makes a unit durable.

A unit (one capture, one rollout) becomes visible only through its commit record, one
fsynced line of ``commits.jsonl``; whatever was appended after the last commit is
never returned by a reader as if complete. ``close`` folds the commit records into
``manifest.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import struct
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from .bundle_format import (FORMAT_NAME, FORMAT_VERSION, JOURNAL_NAME, MANIFEST_NAME, byte_view, checksum,
                            dtype_name, finish_checksum, frame, shard_name, start_checksum, to_stored)
from .errors import BundleError, InvalidArgumentError

DEFAULT_SHARD_SIZE = 2 << 30
_MAX_HEADER = 64 << 20
_BASE_HEADER = json.dumps({"__metadata__": {"format": FORMAT_NAME}}, separators=(",", ":"))


def _entry_json(name: str, tag: str, shape: list[int], begin: int, end: int) -> str:
    """One safetensors header entry, exactly as ``json.dumps`` with compact separators writes it."""
    return f'{json.dumps(name)}:{{"dtype":"{tag}","shape":[{",".join(map(str, shape))}],"data_offsets":[{begin},{end}]}}'


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms that cannot open directories (Windows) have no such step
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durable(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync it and rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class _Shard:
    """One safetensors file being appended to; its header is written into reserved space at the end."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = (reserve + 7) // 8 * 8  # 8-byte aligned data start
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", self.reserve) + b" " * self.reserve)
        self.entries: list[str] = []
        self.header_len = len(_BASE_HEADER)
        self.data_len = 0

    def entry(self, name: str, tag: str, shape: list[int], nbytes: int) -> str:
        """The header entry of a tensor appended next."""
        return _entry_json(name, tag, shape, self.data_len, self.data_len + nbytes)

    def write(self, data: memoryview, entry: str) -> int:
        offset = 8 + self.reserve + self.data_len
        self.file.write(data)
        self.entries.append(entry)
        self.data_len += len(data)
        self.header_len += len(entry) + 1
        return offset

    def finish(self) -> dict[str, Any]:
        head = (_BASE_HEADER[:-1] + "".join("," + e for e in self.entries) + "}").encode("ascii")
        head = struct.pack("<Q", self.reserve) + head + b" " * (self.reserve - len(head))
        self.file.seek(0)
        self.file.write(head)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return {"file": self.path.name, "size": len(head) + self.data_len, "header_xxh3": checksum(head)[0]}


class BundleWriter:
    """Append tensors to a new bundle directory; ``commit`` seals them, with metadata, as one unit.

    Args:
        path: a directory that does not exist yet (or is empty).
        kind: what the units are (``"capture"``, ``"rollouts"``...), recorded in the manifest.
        shard_size: a shard file is closed once it holds this many bytes.
        header_reserve: bytes kept for the first shard's header (later shards grow as needed).
        max_pending_bytes: appended bytes whose checksums may still be computing; 0 makes
            every ``append`` finish before it returns (then the caller may free the tensor).
        info: extra JSON-able fields for the manifest.
        journal: commit each unit durably as it comes. ``False`` is for a directory that is
            published by renaming it once complete (as ``lt.save`` does): units are then
            recorded only by ``close``, and fewer fsyncs are needed.

    Example:
        >>> import tempfile, torch
        >>> from lens_train.bundle_reader import BundleReader
        >>> path = tempfile.mkdtemp() + "/rollouts"
        >>> with BundleWriter(path, kind="rollouts") as writer:
        ...     writer.append("obs/0", torch.arange(3))
        ...     writer.commit({"reward": 1.5})
        0
        >>> reader = BundleReader(path)
        >>> reader.units[0]["metadata"], reader.read_tensor(0, "obs/0")
        ({'reward': 1.5}, tensor([0, 1, 2]))
    """

    def __init__(self, path: str | os.PathLike, *, kind: str = "stream", shard_size: int = DEFAULT_SHARD_SIZE,
                 header_reserve: int = 64 << 10, max_pending_bytes: int = 256 << 20, info: dict[str, Any] | None = None,
                 journal: bool = True) -> None:
        if shard_size < 1 or header_reserve < 64 or max_pending_bytes < 0:
            raise InvalidArgumentError(
                f"BundleWriter needs shard_size >= 1, header_reserve >= 64 and max_pending_bytes >= 0, got "
                f"{shard_size}, {header_reserve}, {max_pending_bytes}."
            )
        self.path = Path(path)
        self.shard_size, self.max_pending_bytes = shard_size, max_pending_bytes
        self._reserve = header_reserve
        self.header = _manifest_header(kind, info or {})
        self.units: list[dict[str, Any]] = []
        self._tensors: dict[str, dict[str, Any]] = {}
        self._shards: list[dict[str, Any]] = []
        self._shard: _Shard | None = None
        self._next_shard = 0
        self._pending: list[tuple[dict, list, memoryview]] = []
        self._pending_bytes = 0
        self._journal = None
        self.closed = False
        _create_bundle_dir(self.path, frame("manifest", {**self.header, "complete": False, "units": []}) if journal else None)
        if journal:
            self._journal = open(self.path / JOURNAL_NAME, "ab")

    # -- appending --------------------------------------------------------------------
    def append(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (any dtype, any device; saved from a CPU copy) as ``name`` in the open unit."""
        self._check_open()
        if not isinstance(name, str) or not name or name == "__metadata__" or name in self._tensors:
            taken = " (already used in this unit)" if name in self._tensors else ""
            raise InvalidArgumentError(f"Tensor name {name!r} is not usable{taken}: give each tensor of a unit a distinct, non-empty string name.")
        try:
            stored, kind, tag, st_shape = to_stored(tensor)
        except (TypeError, AttributeError) as exc:
            raise InvalidArgumentError(f"Cannot save {name!r}: {exc}. Pass a dense (strided) tensor.") from None
        data = byte_view(stored)
        shard, header_entry = self._shard_for(name, tag, st_shape, len(data))
        pending = start_checksum(data)
        offset = shard.write(data, header_entry)
        entry = {"shard": shard.path.name, "offset": offset, "nbytes": len(data), "dtype": dtype_name(stored.dtype),
                 "shape": list(stored.shape), "stored": kind}
        self._tensors[name] = entry
        self._pending.append((entry, pending, data))
        self._pending_bytes += len(data)
        if self._pending_bytes > self.max_pending_bytes:
            self._drain()

    def _shard_for(self, name: str, tag: str, shape: list[int], nbytes: int) -> tuple[_Shard, str]:
        """The shard the next tensor goes to (a new one when it is full) and the tensor's header entry."""
        shard = self._shard
        if shard is not None:
            entry = shard.entry(name, tag, shape, nbytes)
            full = shard.data_len > 0 and shard.data_len + nbytes > self.shard_size
            if not full and shard.header_len + len(entry) + 1 <= shard.reserve:
                return shard, entry
            if shard.header_len + len(entry) + 1 > shard.reserve:
                self._reserve = min(_MAX_HEADER, max(2 * self._reserve, 4 * len(entry)))
            self._close_shard()
        entry = _entry_json(name, tag, shape, 0, nbytes)
        reserve = max(self._reserve, len(_BASE_HEADER) + 2 * len(entry))
        self._shard = _Shard(self.path / shard_name(self._next_shard), reserve)
        self._next_shard += 1
        return self._shard, entry

    def _close_shard(self) -> None:
        if self._shard is not None:
            self._drain()
            self._shards.append(self._shard.finish())
            self._shard = None

    def _drain(self) -> None:
        for entry, pending, _data in self._pending:
            entry["xxh3"] = finish_checksum(pending)
        self._pending.clear()
        self._pending_bytes = 0

    # -- committing ---------------------------------------------------------------------
    def commit(self, metadata: dict[str, Any] | None = None) -> int:
        """Seal everything appended since the last commit, with ``metadata`` (JSON-able), as one unit.

        Returns the unit's index. Once this returns, the unit survives a crash.
        """
        self._check_open()
        metadata = {} if metadata is None else metadata
        try:
            json.dumps(metadata, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"commit metadata must be plain JSON (str keys, finite floats): {exc}.") from None
        self._close_shard()
        index = len(self.units)
        unit = {"index": index, "metadata": metadata, "shards": self._shards, "tensors": self._tensors}
        if self._journal is not None:
            record = frame("unit", unit)
            fsync_dir(self.path)  # the new shard files' names must be durable before the record naming them
            self._journal.write(record)
            self._journal.flush()
            os.fsync(self._journal.fileno())
        self.units.append(unit)
        self._tensors, self._shards = {}, []
        return index

    @property
    def uncommitted(self) -> list[str]:
        """Names appended since the last commit."""
        return list(self._tensors)

    def close(self) -> None:
        """Fold the commit records into ``manifest.json``; anything not committed is left out."""
        if self.closed:
            return
        journal = self._journal is not None
        self._release()
        manifest = frame("manifest", {**self.header, "complete": True, "units": self.units})
        if journal:
            write_durable(self.path / MANIFEST_NAME, manifest)
            (self.path / JOURNAL_NAME).unlink(missing_ok=True)
        else:
            with open(self.path / MANIFEST_NAME, "wb") as f:
                f.write(manifest)
                f.flush()
                os.fsync(f.fileno())
        fsync_dir(self.path)

    def abort(self, remove_if_empty: bool = True) -> None:
        """Stop writing; with nothing committed (and ``remove_if_empty``) remove the directory."""
        if self.closed:
            return
        self._release()
        if remove_if_empty and not self.units:
            shutil.rmtree(self.path, ignore_errors=True)

    def _release(self) -> None:
        self.closed = True
        self._pending.clear()
        if self._shard is not None:
            self._shard.file.close()
            self._shard = None
        if self._journal is not None:
            self._journal.close()

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidArgumentError(f"The BundleWriter of {str(self.path)!r} is closed; open a new one for a new bundle.")

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(remove_if_empty=False)


def _manifest_header(kind: str, info: dict[str, Any]) -> dict[str, Any]:
    from . import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library": {"lens_train": __version__, "torch": torch.__version__, "python": platform.python_version()},
        **info,
    }


def _create_bundle_dir(path: Path, manifest: bytes | None) -> None:
    """Create ``path`` holding only ``manifest`` and an empty journal, atomically (just the directory without one)."""
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        raise BundleError(
            f"Cannot write a bundle to {str(path)!r}: it already exists. Pick a new path, or remove the old one "
            f"first (shutil.rmtree({str(path)!r}))."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        path.mkdir(exist_ok=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    try:
        write_durable(tmp / MANIFEST_NAME, manifest)
        with open(tmp / JOURNAL_NAME, "wb") as f:
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if path.exists():
            path.rmdir()
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
