"""Creating and rewriting files inside a bundle, recording or snapshot directory: never through a symlink.

Every entry the library writes inside such a directory is created exclusively
(``O_EXCL``) or opened with ``O_NOFOLLOW``, so a symlink planted there (``commits.jsonl ->
~/victim``) is refused with a :class:`~lens_train.errors.BundleError` instead of being
written through. Symlinks in the path the user gives (its parents, and the directory
itself) are followed as usual; reading a symlinked data file is allowed (``docs/bundles.md``).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ArgumentTypeError, BundleError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def as_path(value: object, argument: str, example: str) -> Path:
    """``value`` as a Path, or an error naming ``argument``, the value and a working ``example`` call.

    Example:
        >>> as_path(None, "path", "lt.load('runs/bundle')")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lens_train.errors.ArgumentTypeError: path must be a str or os.PathLike, got None (NoneType). Example: lt.load('runs/bundle').
    """
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise ArgumentTypeError(f"{argument} must be a str or os.PathLike, got {value!r} ({type(value).__name__}). Example: {example}.")


def bundle_dir(path: Path) -> Path:
    """Where a bundle at ``path`` is written: a symlinked directory is followed to its target.

    Replacing a bundle renames a new directory into place; renaming onto a link would
    replace the link, so the link's target is replaced instead and the link stays valid.

    Example:
        >>> bundle_dir(Path("runs/new")).as_posix()
        'runs/new'
    """
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _refused(path: Path, exc: OSError) -> BundleError:
    if path.is_symlink():
        why = f"it is a symlink (to {os.readlink(path)!r}); lens_train never writes through a link inside a bundle"
    else:
        why = f"{exc.strerror or exc}"
    return BundleError(f"Refusing to write {str(path)!r}: {why}. Remove it (or write to a new path).")


def _open(path: Path, flags: int, mode: str) -> BinaryIO:
    try:
        fd = os.open(path, flags | _NOFOLLOW | _BINARY, 0o644)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EEXIST, errno.EMLINK) or path.is_symlink():
            raise _refused(path, exc) from None
        raise
    return os.fdopen(fd, mode)


def create_new(path: str | os.PathLike) -> BinaryIO:
    """``path`` created for writing; refused if anything (a file, a symlink) is already there.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> with create_new(d / "a") as f:
        ...     _ = f.write(b"x")
        >>> create_new(d / "a")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        lens_train.errors.BundleError: Refusing to write '.../a': File exists. Remove it (or write to a new path).
    """
    return _open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, "wb")


def open_append(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for appending (created if missing); refused if it is a symlink.

    Example:
        >>> import tempfile
        >>> with open_append(Path(tempfile.mkdtemp()) / "log") as f:
        ...     f.write(b"one\\n")
        4
    """
    return _open(Path(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, "ab")


def open_rewrite(path: str | os.PathLike) -> BinaryIO:
    """An existing regular file opened for reading and writing in place; refused if it is a symlink."""
    return _open(Path(path), os.O_RDWR, "r+b")


def check_not_link(path: str | os.PathLike) -> None:
    """Raise :class:`BundleError` if ``path`` is a symlink (an entry about to be replaced)."""
    path = Path(path)
    if path.is_symlink():
        raise _refused(path, OSError(errno.ELOOP, "symlink"))


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


def write_atomic(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Replace ``path`` by a file holding ``data``: written beside it, fsynced, renamed into place.

    The temporary ``<name>.tmp`` is created exclusively (a leftover regular one from a
    crash is removed first, a symlink is refused), and ``path`` itself must not be a symlink.

    Example:
        >>> import tempfile
        >>> p = Path(tempfile.mkdtemp()) / "index.json"
        >>> write_atomic(p, b"{}"); write_atomic(p, b"[]"); p.read_bytes()
        b'[]'
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    check_not_link(path)
    check_not_link(tmp)
    tmp.unlink(missing_ok=True)
    with create_new(tmp) as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


# -- debris of killed writers ------------------------------------------------------------------
MARKER = ".lens_train-writer.json"  # in every temporary directory a writer creates: who is writing it


def writer_identity(pid: int | None = None) -> dict[str, Any]:
    """Who is writing: host, process id and the process's start time (which tells a reused pid apart).

    Example:
        >>> me = writer_identity()
        >>> me["pid"] == os.getpid(), writer_alive(me)
        (True, True)
    """
    pid = os.getpid() if pid is None else pid
    return {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    try:  # Linux: field 22 of /proc/<pid>/stat, the start time in clock ticks since boot
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return None


def writer_alive(marker: dict[str, Any]) -> bool:
    """Whether the writer a marker names may still be running (another host's writer always may)."""
    if marker.get("host") != socket.gethostname():
        return True
    try:
        os.kill(marker["pid"], 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return marker.get("start") is None or _start_time(marker["pid"]) in (None, marker["start"])


def new_temp_dir(target: Path) -> Path:
    """A new ``.<name>.new-*`` directory beside ``target``, holding a marker that names this writer."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    mark(tmp)
    return tmp


def mark(directory: Path) -> None:
    """Write this writer's marker into ``directory`` (a temporary or set-aside directory)."""
    with create_new(directory / MARKER) as f:
        f.write(json.dumps(writer_identity()).encode())


def unmark(directory: Path) -> None:
    """Remove the marker from a directory that is now published."""
    (directory / MARKER).unlink(missing_ok=True)


def remove_debris(target: Path) -> list[Path]:
    """Remove the ``.<name>.new-*`` / ``.<name>.old-*`` directories that killed writers of ``target`` left.

    Only directories holding a marker are touched, and only when the writer the marker
    names is no longer alive. Returns what was removed.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "bundle"
        >>> kept = new_temp_dir(target)  # this process is alive: kept
        >>> remove_debris(target), kept.is_dir()
        ([], True)
    """
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in sorted(target.parent.glob(f".{target.name}.*-*")):
        if path.name[len(target.name) + 2:].split("-", 1)[0] not in ("new", "old") or path.is_symlink() or not path.is_dir():
            continue
        marker = _read_marker(path / MARKER)
        if marker is not None and not writer_alive(marker):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        if path.is_symlink() or path.stat().st_size > 4096:
            return None
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(marker, dict) and isinstance(marker.get("host"), str) and type(marker.get("pid")) is int
    return marker if ok else None
