"""Disk storage of fastlog rollouts: a bundle (``docs/bundles.md``) with one unit per rollout.

A recording directory is an append-only bundle of kind ``"fastlog"``: each committed
rollout is one unit whose tensors are the kept values, named by online label, and whose
metadata lists the kept events. The bundle's commit protocol makes it crash-safe: a
rollout exists once its fsynced commit record does, so a process killed at any moment
leaves complete rollouts plus, at worst, shard files and a cut record that no commit
names; :func:`recover` loads the former and reports the latter.
"""

from __future__ import annotations

import os
import warnings
from functools import partial
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..bundle.files import as_path, remove_debris
from ..bundle.format import parse_dtype
from ..bundle.reader import BundleReader
from ..bundle.schema import check_depth
from ..bundle.writer import BundleWriter
from ..errors import BundleError, BundleWarning
from .context import RecordContext
from .recording import Entry, Recording, Rollout

KIND = "fastlog"
# a rollout keeps a handful of tensors: a small first shard header (later ones adapt)
_HEADER_RESERVE = 4 << 10


class RolloutWriter:
    """Appends committed rollouts to a recording directory (new or existing).

    Example:
        >>> import tempfile, torch
        >>> w = RolloutWriter(tempfile.mkdtemp() + "/rec")
        >>> w.commit([], {}, num_calls=1), w.next_index
        (0, 1)
        >>> w.close()
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.bundle = BundleWriter(path, kind=KIND, append=True, header_reserve=_HEADER_RESERVE)

    @property
    def next_index(self) -> int:
        """Index the next committed rollout gets (rollouts of earlier sessions count)."""
        return self.bundle.num_units

    def commit(self, contexts: list[RecordContext], tensors: dict[str, torch.Tensor], num_calls: int) -> int:
        """Durably add one rollout; returns its index."""
        for label, value in tensors.items():
            self.bundle.append(label, value)
        return self.bundle.commit({"num_calls": num_calls, "entries": [c.describe() for c in contexts]})

    def close(self) -> None:
        """Mark the recording complete (everything committed is already on disk); remove killed writers' debris."""
        self.bundle.close()
        remove_debris(self.bundle.path)


def load(path: str | os.PathLike) -> Recording:
    """Open a fastlog recording directory; tensors are read from disk when first used.

    What a crashed writer left uncommitted (shard files, a cut commit record) is ignored
    with a :class:`~lens_train.errors.BundleWarning`, as ``lt.load`` does. Raises
    :class:`~lens_train.errors.BundleError` if anything committed is damaged (use
    :func:`recover` to load what is intact).

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> d = tempfile.mkdtemp() + "/rec"
        >>> net = torch.nn.ReLU()
        >>> with lt.fastlog.Recorder(net, keep_op=lambda c: True, storage="disk", path=d):
        ...     for _ in range(2):
        ...         _ = net(torch.ones(2))
        >>> rec = lt.fastlog.load(d)
        >>> len(rec.rollouts), rec[1]["relu_1"].tolist()
        (2, [1.0, 1.0])
    """
    root = _recording_dir(path, "lt.fastlog.load")
    hint = f"Load what is intact with lt.fastlog.recover({str(root)!r})."
    try:
        reader = _reader(root, strict=True)
    except BundleError as exc:
        raise BundleError(f"The recording at {str(root)!r} is damaged: {exc} {hint}") from None
    def damaged(index: int, exc: BundleError) -> None:
        raise BundleError(f"The recording at {str(root)!r} is damaged: rollout {index}: {exc} {hint}") from None

    rollouts = _read_rollouts(reader, damaged)
    if reader.left_out:
        warnings.warn(BundleWarning(f"Recording {str(root)!r}: loaded its {len(rollouts)} committed rollouts; left out "
                                    "what a stopped writer never committed: " + " ".join(reader.left_out)), stacklevel=2)
    return Recording(rollouts, path=str(root), lost=list(reader.left_out))


def recover(path: str | os.PathLike) -> Recording:
    """Load every complete rollout of a recording, even one whose process crashed.

    Rollouts whose commit did not finish, or whose files or commit records were damaged
    since, are skipped and described in ``rec.lost`` (also shown by ``rec.summary()``);
    this never raises for a malformed commit. Shard files are checked for presence,
    size and header now; tensor checksums when a value is read.

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> d = tempfile.mkdtemp() + "/rec"
        >>> model = torch.nn.Sequential(torch.nn.ReLU())
        >>> with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path=d):
        ...     _ = model(torch.ones(2))
        >>> rec = lt.fastlog.recover(d)
        >>> len(rec.rollouts), rec.lost
        (1, [])
    """
    root = _recording_dir(path, "lt.fastlog.recover")
    reader = _reader(root, strict=False)
    lost = list(reader.left_out)
    rollouts = _read_rollouts(reader, lambda index, exc: lost.append(f"rollout {index}: {exc}"))
    return Recording(rollouts, path=str(root), lost=lost)


def _read_rollouts(reader: Any, damaged: Callable[[int, BundleError], None]) -> list[Rollout]:
    """Every verified rollout of ``reader``; ``damaged(index, error)`` decides about the others."""
    rollouts = []
    for unit in reader.units:
        try:
            reader.verify(unit["index"])
            rollouts.append(_rollout(reader, unit))
        except BundleError as exc:
            damaged(unit["index"], exc)
    return rollouts


def _recording_dir(path: Any, call: str) -> Path:
    root = as_path(path, f"{call}(path)", f"{call}('runs/rollouts')")
    if not root.exists():
        raise BundleError(f"No fastlog recording at {str(root)!r}: the path does not exist. Record one with "
                          f"lt.fastlog.Recorder(model, keep_op, storage='disk', path={str(root)!r}).")
    return root


def _reader(root: Path, strict: bool) -> BundleReader:
    reader = BundleReader(root, strict=strict)
    kind = reader.manifest.get("kind")
    if kind != KIND:
        hint = " Load it with lt.load(path)." if kind == "capture" else ""
        raise BundleError(f"{str(root)!r} holds a bundle of kind {kind!r}, not a fastlog recording.{hint}")
    return reader


def _rollout(reader: BundleReader, unit: dict[str, Any]) -> Rollout:
    """A committed rollout; :class:`BundleError` if its commit record does not describe one."""
    index, meta = unit["index"], unit["metadata"]
    where = f"the commit record of rollout {index}"
    check_depth(meta, where)
    num_calls = meta.get("num_calls", 1)
    if not isinstance(meta.get("entries"), list) or type(num_calls) is not int or num_calls < 1:
        raise BundleError(f"{where} lacks its 'entries' list or a 'num_calls' int >= 1.")
    entries = []
    for d in meta["entries"]:
        if not isinstance(d, dict):
            raise BundleError(f"{where} holds an entry that is not an object: {d!r}.")
        parse_dtype(d.get("dtype"), where)  # only dtypes are looked up in torch
        try:
            ctx = RecordContext.from_description(d)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise BundleError(f"{where} holds a malformed entry ({type(exc).__name__}: {exc}).") from None
        if not isinstance(ctx.label, str) or ctx.label not in unit["tensors"]:
            raise BundleError(f"the value of {ctx.label!r} is not in the rollout's commit record.")
        entries.append(Entry(ctx, None, partial(reader.read_tensor, index, ctx.label)))
    return Rollout(index, entries, num_calls)
