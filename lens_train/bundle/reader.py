"""Reading a bundle: committed units only, every byte checked before it is returned."""

from __future__ import annotations

import json
import mmap
import os
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .format import (CHECKSUM_BLOCK, FORMAT_NAME, FORMAT_VERSION, JOURNAL_NAME, MANIFEST_NAME, SHARD_PATTERN,
                            byte_view, checksum, expected_nbytes, from_bytes, parse_dtype, unframe)
from ..errors import BundleError
from .schema import check_header_entry
from ..capture.printing import human_bytes


class BundleReader:
    """The committed units of the bundle at ``path`` and their tensors.

    Opening reads only ``manifest.json`` and ``commits.jsonl``; tensors are read, and
    checked against their checksums, on request. ``left_out`` lists what a writer wrote
    but never committed.

    Args:
        path: the bundle directory.
        strict: raise :class:`BundleError` on a damaged commit record. ``False`` skips it
            (and its unit) and lists it in ``left_out``: for salvaging what is intact.

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> path = tempfile.mkdtemp() + "/b"
        >>> lt.save(lt.log_forward_pass(torch.nn.ReLU(), -torch.ones(2)), path)
        >>> reader = BundleReader(path)
        >>> len(reader.units), reader.left_out, reader.read_tensor(0, "activation/1")
        (1, [], tensor([0., 0.]))
    """

    def __init__(self, path: str | os.PathLike, *, strict: bool = True) -> None:
        self.path = Path(path)
        manifest = read_manifest(self.path)
        self.manifest = {k: v for k, v in manifest.items() if k != "units"}
        self.left_out: list[str] = []
        self.units = _checked_units(manifest["units"], MANIFEST_NAME)
        if not manifest["complete"] or "journal" in manifest:  # a bundle written by lt.save has no journal
            self.units += self._journal_units(len(self.units), manifest, strict)
        self._positions = {u["index"]: i for i, u in enumerate(self.units)}
        self._report_orphans()
        self._checked_shards: set[str] = set()
        self._entries: dict[tuple[int, str], dict[str, Any]] = {}

    def _journal_units(self, start: int, manifest: dict[str, Any], strict: bool) -> list[dict[str, Any]]:
        path = self.path / JOURNAL_NAME
        units, records, nbytes = [], 0, 0
        for number, line in _journal_records(path):
            if not line.endswith(b"\n"):  # the writer stopped while writing it
                self.left_out.append(f"{JOURNAL_NAME}: an unfinished commit record ({len(line)} bytes) at its end was ignored.")
                break
            records, nbytes = number, nbytes + len(line)
            try:
                units.append(_journal_unit(line, start + number - 1, f"{path}, line {number}"))
            except BundleError as exc:
                if strict:
                    raise
                self.left_out.append(f"{exc} Unit {start + number - 1} was skipped.")
        problem = journal_problem(path, manifest, records, nbytes)
        if problem is not None:
            if strict:
                raise BundleError(problem)
            self.left_out.append(problem)
        return units

    def _report_orphans(self) -> None:
        used = {s["file"] for u in self.units for s in u["shards"]}
        for f in sorted(os.listdir(self.path)):
            if SHARD_PATTERN.match(f) and f not in used:
                size = human_bytes((self.path / f).stat().st_size)
                self.left_out.append(f"{f} ({size}): written but never committed (the writer stopped before its unit's commit).")

    def verify(self, unit: int) -> None:
        """Check that every shard file of ``unit`` is present, of its committed size, with an intact header.

        Tensor bytes are checked when they are read; this catches missing or cut files without reading them.
        """
        u = self._unit(unit)
        for shard in u["shards"]:
            self._check_shard(u, shard["file"])

    # -- tensors ------------------------------------------------------------------------
    def tensor_names(self, unit: int) -> list[str]:
        """Names of the tensors of committed unit ``unit``."""
        return list(self._unit(unit)["tensors"])

    def read_tensor(self, unit: int, name: str) -> torch.Tensor:
        """Tensor ``name`` of unit ``unit``, read from disk and checked against its checksum."""
        return self.read_tensors(unit, [name])[name]

    def read_tensors(self, unit: int, names: list[str]) -> dict[str, torch.Tensor]:
        """Several tensors of one unit, each checked against its checksum as it is read."""
        u = self._unit(unit)
        entries = sorted((self._entry(u, n) for n in names), key=lambda e: (e["shard"], e["offset"]))
        out: dict[str, torch.Tensor] = {}
        mapped: dict[str, torch.Tensor] = {}
        for e in entries:
            if e["shard"] not in mapped:
                # Memory-mapped, copy-on-write: no page is copied until a tensor is written to,
                # and the file never changes (the same approach as safetensors' load_file).
                mapped[e["shard"]] = _map_shard(self._check_shard(u, e["shard"]))
            raw = mapped[e["shard"]][e["offset"]:e["offset"] + e["nbytes"]]
            if checksum(byte_view(raw)) != e["xxh3"]:
                raise BundleError(f"{self.path / e['shard']}: tensor {e['name']!r} fails its checksum (the file was modified or corrupted).")
            out[e["name"]] = from_bytes(raw, e["dtype"], e["shape"])
        return out

    def _unit(self, unit: int) -> dict[str, Any]:
        """The unit whose index is ``unit`` (negative: counted from the last committed one)."""
        ok = isinstance(unit, int) and not isinstance(unit, bool)
        position = (self._positions.get(unit) if unit >= 0 else len(self.units) + unit) if ok else None
        if position is None or position < 0:
            raise BundleError(f"Bundle {str(self.path)!r} has no committed unit {unit!r} (it has {len(self.units)}).")
        return self.units[position]

    def _entry(self, unit: dict[str, Any], name: str) -> dict[str, Any]:
        key = (unit["index"], name)
        if key not in self._entries:
            self._entries[key] = self._checked(unit, name)
        return self._entries[key]

    def _checked(self, unit: dict[str, Any], name: str) -> dict[str, Any]:
        e = unit["tensors"].get(name)
        where = f"{self.path / MANIFEST_NAME}: tensor {name!r}"
        if e is None:
            raise BundleError(f"{where} is not in unit {unit['index']} of this bundle.")
        return _checked_entry(e, name, unit, where)

    def _check_shard(self, unit: dict[str, Any], name: str) -> Path:
        path = self.path / name
        if name in self._checked_shards:
            return path
        info = next(s for s in unit["shards"] if s["file"] == name)
        if not path.is_file():
            raise BundleError(f"{path}: shard file is missing.")
        size = path.stat().st_size
        if size != info["size"]:
            problem = "truncated" if size < info["size"] else "modified (it grew)"
            raise BundleError(f"{path}: shard file is {problem}: {size} bytes, the manifest says {info['size']}.")
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 <= n <= size - 8:
                raise BundleError(f"{path}: shard header is corrupted (header length {n}).")
            head += f.read(n)
        if checksum(head)[0] != info["header_xxh3"]:
            raise BundleError(f"{path}: shard header fails its checksum (the file was modified or corrupted).")
        header = _parse_header(head[8:], path)
        for tensor, e in unit["tensors"].items():
            if isinstance(e, dict) and e.get("shard") == name:
                check_header_entry(self._entry(unit, tensor), header, 8 + n, f"{path}")
        self._checked_shards.add(name)
        return path

    def entries(self, unit: int) -> dict[str, dict[str, Any]]:
        """Every tensor entry of committed unit ``unit``, checked (dtype parsed, byte range inside its shard)."""
        u = self._unit(unit)
        return {name: self._entry(u, name) for name in u["tensors"]}


def _parse_header(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        header = None
    if not isinstance(header, dict):
        raise BundleError(f"{path}: the shard's safetensors header is not a JSON object.")
    return header


def _map_shard(path: Path) -> torch.Tensor:
    try:
        with open(path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path}: cannot be read ({exc}).") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # frombuffer warns that mmap buffers are writable: ACCESS_COPY keeps the file safe
        return torch.frombuffer(mapped, dtype=torch.uint8)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror}).") from None


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest of the bundle directory ``path``, units included."""
    if not path.exists():
        raise BundleError(f"No bundle at {str(path)!r}: the path does not exist.{_interrupted_hint(path)} Write one with lt.save(log, path).")
    if not path.is_dir():
        raise BundleError(f"path {str(path)!r} is a file, not a bundle; a bundle is the directory lt.save(log, path) writes. "
                          "Example: lt.load('runs/bundle').")
    file = path / MANIFEST_NAME
    if not file.is_file():
        raise BundleError(f"{str(path)!r} is not a lens_train bundle: it has no {MANIFEST_NAME}.")
    manifest = unframe(_read_file(file), "manifest", str(file))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(f"{file} is not a lens_train bundle manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r}).")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{file}: unknown bundle format version {version!r}; this lens_train reads version {FORMAT_VERSION}. "
            "Load it with the lens_train version that wrote it (see manifest 'library')."
        )
    if not isinstance(manifest.get("units"), list) or not isinstance(manifest.get("complete"), bool):
        raise BundleError(f"{file} lacks its 'units' list or 'complete' flag.")
    return manifest


def _journal_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, line with its newline) of each record; the last lacks the newline if it was cut."""
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            yield from enumerate(f, 1)
    except OSError as exc:
        raise BundleError(f"{path}: cannot be read ({exc.strerror}).") from None


def _journal_unit(line: bytes, index: int, where: str) -> dict[str, Any]:
    return _checked_units([unframe(line, "unit", where)], where, index)[0]


def journal_problem(path: Path, manifest: dict[str, Any], records: int, nbytes: int) -> str | None:
    """What is wrong with a finished bundle's journal of ``records`` records and ``nbytes`` bytes, if anything.

    A writer that closes a bundle records the journal's length in the manifest, so a
    journal cut at a record boundary (which a crash cannot do to a finished bundle) is caught.

    Example:
        >>> journal_problem(Path("b/commits.jsonl"), {"complete": True, "journal": {"units": 2, "bytes": 90}}, 1, 45)
        'b/commits.jsonl is truncated: 45 bytes holding 1 commit records; manifest.json says 90 bytes, 2 records.'
    """
    info = manifest.get("journal")
    if not manifest["complete"]:
        return None  # still being written, or its writer crashed: any complete record counts
    if not isinstance(info, dict) or type(info.get("units")) is not int or type(info.get("bytes")) is not int:
        return f"{path.parent / MANIFEST_NAME} has a malformed 'journal' entry."
    if (records, nbytes) == (info["units"], info["bytes"]):
        return None
    if not nbytes and not path.is_file():
        return f"{path}: the journal is missing; {MANIFEST_NAME} says it holds {info['units']} commit records."
    what = "truncated" if nbytes < info["bytes"] else "modified"
    return (f"{path} is {what}: {nbytes} bytes holding {records} commit records; "
            f"{MANIFEST_NAME} says {info['bytes']} bytes, {info['units']} records.")


def scan_journal(path: Path, start: int) -> tuple[int, int]:
    """(committed records, bytes up to the end of the last one) of the journal ``path``.

    Every record is checked, one at a time (constant memory).

    Example:
        >>> scan_journal(Path("no-such-journal"), 0)
        (0, 0)
    """
    count = good = 0
    for number, line in _journal_records(path):
        if not line.endswith(b"\n"):
            break
        _journal_unit(line, start + number - 1, f"{path}, line {number}")
        count, good = number, good + len(line)
    return count, good


def _interrupted_hint(path: Path) -> str:
    old = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
    return f" A save replacing it was interrupted; the previous bundle is at {str(old[-1])!r}." if old else ""


def _checked_units(units: list[Any], where: str, start: int = 0) -> list[dict[str, Any]]:
    for i, u in enumerate(units, start):
        ok = (isinstance(u, dict) and u.get("index") == i and isinstance(u.get("metadata"), dict)
              and isinstance(u.get("tensors"), dict) and isinstance(u.get("shards"), list)
              and all(_is_shard(s) for s in u["shards"]))
        if not ok:
            raise BundleError(f"{where}: commit record {i} is malformed.")
    return units


def _is_shard(s: Any) -> bool:
    return (isinstance(s, dict) and isinstance(s.get("file"), str) and SHARD_PATTERN.match(s["file"]) is not None
            and type(s.get("size")) is int and isinstance(s.get("header_xxh3"), str))


def _checked_entry(e: Any, name: str, unit: dict[str, Any], where: str) -> dict[str, Any]:
    """A tensor entry with every field checked, its dtype parsed and its name added."""
    if not isinstance(e, dict):
        raise BundleError(f"{where} has a malformed entry.")
    shard = next((s for s in unit["shards"] if s["file"] == e.get("shard")), None)
    shape, offset, nbytes, crcs = e.get("shape"), e.get("offset"), e.get("nbytes"), e.get("xxh3")
    if (shard is None or not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape)
            or type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0
            or offset + nbytes > shard["size"] or not isinstance(crcs, list)
            or len(crcs) != max(1, -(-nbytes // CHECKSUM_BLOCK))):
        raise BundleError(f"{where} has a malformed entry (shard, offset, size, shape or checksum).")
    dtype = parse_dtype(e.get("dtype"), where)
    if expected_nbytes(dtype, shape) != nbytes:
        raise BundleError(f"{where}: {nbytes} bytes do not fit shape {shape} of dtype {dtype}.")
    return {**e, "name": name, "dtype": dtype}
