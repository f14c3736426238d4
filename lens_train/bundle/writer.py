"""The append-only bundle writer: tensors stream into shard files, ``commit`` makes a unit durable.

A unit (one capture, one rollout) becomes visible only through its commit record, one
fsynced line of ``commits.jsonl``; whatever was appended after the last commit is
never returned by a reader as if complete. The writer keeps nothing of a committed
unit, so memory stays constant over any number of units, and a bundle can be reopened
later (``append=True``) to commit more.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import struct
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from .format import (FORMAT_NAME, FORMAT_VERSION, JOURNAL_NAME, MANIFEST_NAME, SHARD_PATTERN, byte_view, checksum,
                            dtype_name, frame, shard_name, to_stored)
from .files import MARKER, create_new, fsync_dir, new_temp_dir, open_append, open_rewrite, unmark, write_atomic
from .reader import journal_problem, read_manifest, scan_journal
from ..errors import BundleError, InvalidArgumentError

DEFAULT_SHARD_SIZE = 2 << 30
_MAX_HEADER = 64 << 20
_MIN_HEADER = 256
_BASE_HEADER = json.dumps({"__metadata__": {"format": FORMAT_NAME}}, separators=(",", ":"))


def _entry_json(name: str, tag: str, shape: list[int], begin: int, end: int) -> str:
    """One safetensors header entry, exactly as ``json.dumps`` with compact separators writes it."""
    return f'{json.dumps(name)}:{{"dtype":"{tag}","shape":[{",".join(map(str, shape))}],"data_offsets":[{begin},{end}]}}'


class _Shard:
    """One safetensors file being appended to; its header is written into reserved space at the end."""

    def __init__(self, path: Path, reserve: int) -> None:
        self.path = path
        self.reserve = (reserve + 7) // 8 * 8  # 8-byte aligned data start
        self.file = create_new(path)
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
    """Append tensors to a bundle directory; ``commit`` seals them, with metadata, as one unit.

    Args:
        path: a directory that does not exist yet (or is empty); with ``append=True``
            also an existing bundle of the same ``kind``, whose units are kept.
        kind: what the units are (``"capture"``, ``"fastlog"``...), recorded in the manifest.
        append: reopen an existing bundle and commit more units after its last one.
        shard_size: a shard file is closed once it holds this many bytes.
        header_reserve: bytes kept for the first shard's header (later shards size theirs
            from what earlier units used).
        info: extra JSON-able fields for the manifest of a new bundle.
        journal: commit each unit durably as it comes. ``False`` is for a directory that is
            published by renaming it once complete (as ``lt.save`` does): units are then
            recorded only by ``close``, and fewer fsyncs are needed.

    Example:
        >>> import tempfile, torch
        >>> from lens_train.bundle.reader import BundleReader
        >>> path = tempfile.mkdtemp() + "/rollouts"
        >>> with BundleWriter(path, kind="rollouts") as writer:
        ...     writer.append("obs/0", torch.arange(3))
        ...     writer.commit({"reward": 1.5})
        0
        >>> with BundleWriter(path, kind="rollouts", append=True) as writer:
        ...     writer.commit({"reward": 0.5})
        1
        >>> reader = BundleReader(path)
        >>> [u["metadata"]["reward"] for u in reader.units], reader.read_tensor(0, "obs/0")
        ([1.5, 0.5], tensor([0, 1, 2]))
    """

    def __init__(self, path: str | os.PathLike, *, kind: str = "stream", append: bool = False,
                 shard_size: int = DEFAULT_SHARD_SIZE, header_reserve: int = 64 << 10,
                 info: dict[str, Any] | None = None, journal: bool = True) -> None:
        if shard_size < 1 or header_reserve < 64 or (append and not journal):
            raise InvalidArgumentError(
                f"BundleWriter needs shard_size >= 1, header_reserve >= 64 and journal=True to append, got "
                f"shard_size={shard_size}, header_reserve={header_reserve}, append={append}, journal={journal}."
            )
        self.path = Path(path)
        self.shard_size = shard_size
        self._reserve = header_reserve
        self.num_units = 0
        self._units: list[dict[str, Any]] = []  # only without a journal: they go into the final manifest
        self._base_units: list[dict[str, Any]] = []  # units manifest.json already held when reopened
        self._tensors: dict[str, dict[str, Any]] = {}
        self._shards: list[dict[str, Any]] = []
        self._shard: _Shard | None = None
        self._next_shard = 0
        self._journal = None
        self._journal_size = (0, 0)  # (commit records, bytes) of the journal
        self.closed = False
        self.created = not (append and self.path.is_dir() and any(self.path.iterdir()))
        if self.created:
            self.header = _manifest_header(kind, info or {})
            _create_bundle_dir(self.path, frame("manifest", {**self.header, "complete": False, "units": []}) if journal else None)
            self._journal = _open_journal(self.path / JOURNAL_NAME) if journal else None
            return
        manifest = read_manifest(self.path)
        if manifest["kind"] != kind:
            raise BundleError(
                f"Cannot append units of kind {kind!r} to {str(self.path)!r}: it holds units of kind {manifest['kind']!r}. "
                f"Append with BundleWriter(path, kind={manifest['kind']!r}, append=True), or write to a new path."
            )
        self._journal = _open_journal(self.path / JOURNAL_NAME)  # locked before anything is changed
        try:
            self._reopen(manifest)
        except BaseException:
            self._journal.close()
            raise

    def _reopen(self, manifest: dict[str, Any]) -> None:
        """Continue an existing bundle: count its units, drop an unfinished commit record, mark it open."""
        self._base_units = manifest["units"]
        self.header = {k: v for k, v in manifest.items() if k not in ("units", "complete", "journal")}
        count, good_bytes = scan_journal(self.path / JOURNAL_NAME, len(self._base_units))
        problem = journal_problem(self.path / JOURNAL_NAME, manifest, count, good_bytes) if "journal" in manifest else None
        if problem is not None:
            raise BundleError(f"{problem} Not appending to a damaged bundle; read what is intact with BundleReader(path, strict=False).")
        self.num_units = len(self._base_units) + count
        self._journal_size = (count, good_bytes)
        numbers = [int(m.group(1)) for m in map(SHARD_PATTERN.match, os.listdir(self.path)) if m]
        self._next_shard = max(numbers, default=-1) + 1  # never reuse the name of a shard left by a crash
        journal = self.path / JOURNAL_NAME
        if journal.is_file() and journal.stat().st_size != good_bytes:
            with open_rewrite(journal) as f:  # appending after a torn record would corrupt the next one
                f.truncate(good_bytes)
                os.fsync(f.fileno())
        if manifest["complete"]:
            write_atomic(self.path / MANIFEST_NAME, frame("manifest", {**self.header, "complete": False, "units": self._base_units}))

    # -- appending --------------------------------------------------------------------
    def append(self, name: str, tensor: torch.Tensor) -> None:
        """Write ``tensor`` (any dtype, any device; saved from a CPU copy) as ``name`` in the open unit.

        The bytes are written and checksummed before this returns, so the caller may free the tensor.
        """
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
        offset = shard.write(data, header_entry)
        self._tensors[name] = {"shard": shard.path.name, "offset": offset, "nbytes": len(data), "dtype": dtype_name(stored.dtype),
                               "shape": list(stored.shape), "stored": kind, "xxh3": checksum(data)}

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
            self._shards.append(self._shard.finish())
            self._shard = None

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
        if self._shard is not None:
            # the next unit's shard header is sized from this one's, so many small units stay small
            self._reserve = max(_MIN_HEADER, min(_MAX_HEADER, 2 * self._shard.header_len))
        self._close_shard()
        unit = {"index": self.num_units, "metadata": metadata, "shards": self._shards, "tensors": self._tensors}
        if self._journal is not None:
            record = frame("unit", unit)
            fsync_dir(self.path)  # the new shard files' names must be durable before the record naming them
            self._journal.write(record)
            self._journal.flush()
            os.fsync(self._journal.fileno())
            self._journal_size = (self._journal_size[0] + 1, self._journal_size[1] + len(record))
        else:
            self._units.append(unit)
        self._tensors, self._shards = {}, []
        self.num_units += 1
        return unit["index"]

    def discard(self, name: str) -> None:
        """Leave the appended tensor ``name`` out of the open unit (its bytes stay, unreferenced, in the shard)."""
        self._check_open()
        if self._tensors.pop(name, None) is None:
            raise InvalidArgumentError(f"No tensor {name!r} appended since the last commit; appended: {self.uncommitted[:5]}.")

    @property
    def uncommitted(self) -> list[str]:
        """Names appended since the last commit."""
        return list(self._tensors)

    def close(self) -> None:
        """Finish the bundle: ``manifest.json`` says it is complete. Uncommitted tensors are discarded."""
        if self.closed:
            return
        journal = self._journal is not None
        self._release()
        if journal:
            records, nbytes = self._journal_size
            write_atomic(self.path / MANIFEST_NAME, frame("manifest", {
                **self.header, "complete": True, "units": self._base_units, "journal": {"units": records, "bytes": nbytes}}))
        else:
            with create_new(self.path / MANIFEST_NAME) as f:
                f.write(frame("manifest", {**self.header, "complete": True, "units": self._units}))
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.path)

    def abort(self, remove_if_empty: bool = True) -> None:
        """Stop writing and discard uncommitted tensors; a bundle this writer created with
        nothing committed is removed (unless ``remove_if_empty`` is False)."""
        if self.closed:
            return
        self._release()
        if remove_if_empty and self.created and not self.num_units:
            shutil.rmtree(self.path, ignore_errors=True)

    def _release(self) -> None:
        self.closed = True
        if self._shard is not None:
            self._shard.file.close()
            self._shards.append({"file": self._shard.path.name})
            self._shard = None
        for shard in self._shards:  # written for a unit that was never committed
            (self.path / shard["file"]).unlink(missing_ok=True)
        self._tensors, self._shards = {}, []
        if self._journal is not None:
            self._journal.close()

    def _check_open(self) -> None:
        if self.closed:
            raise InvalidArgumentError(
                f"The BundleWriter of {str(self.path)!r} is closed; reopen it with BundleWriter(path, kind=..., append=True)."
            )

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(remove_if_empty=False)


def _manifest_header(kind: str, info: dict[str, Any]) -> dict[str, Any]:
    from .._version import __version__

    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library": {"lens_train": __version__, "torch": torch.__version__, "python": platform.python_version()},
        **info,
    }


def _open_journal(path: Path) -> Any:
    """The journal opened for appending, locked against a second writer (in this process or another)."""
    f = open_append(path)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        return f
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise BundleError(
            f"{path.parent} is being written by another BundleWriter (its {JOURNAL_NAME} is locked). "
            "Close that writer first, or write to a different path."
        ) from None
    return f


def _create_bundle_dir(path: Path, manifest: bytes | None) -> None:
    """Create ``path`` holding only ``manifest`` and an empty journal, atomically (just the directory without one)."""
    if path.exists() and not (path.is_dir() and not [p for p in path.iterdir() if p.name != MARKER]):
        raise BundleError(
            f"Cannot write a bundle to {str(path)!r}: it already exists. Pick a new path, remove the old one "
            f"first (shutil.rmtree({str(path)!r})), or add to it with BundleWriter(path, kind=..., append=True)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        path.mkdir(exist_ok=True)
        return
    temporary = (path / MARKER).exists()  # path is itself a writer's temporary directory: it keeps a marker
    tmp = new_temp_dir(path)
    try:
        write_atomic(tmp / MANIFEST_NAME, manifest)
        with create_new(tmp / JOURNAL_NAME) as f:
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if path.exists():
            unmark(path)
            path.rmdir()
        os.rename(tmp, path)
        if not temporary:
            unmark(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
