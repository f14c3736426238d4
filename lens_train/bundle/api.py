"""Portable bundles: ``lt.save(log, path)`` and ``lt.load(path, lazy=False)``.

A bundle is a directory of safetensors shards and checksummed JSON (``docs/bundles.md``).
Saving is atomic: the bundle is written into a temporary sibling directory and renamed
into place, so a crash leaves the old bundle (or none), never a half-written one.
Loading never unpickles or evaluates anything, so an untrusted bundle cannot run code.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .format import MANIFEST_NAME
from .metadata import TENSOR_FIELDS, LogEncoder, decode_value, layer_fields, modules_from_json
from .reader import BundleReader
from .schema import check_capture_unit
from ..arguments import check_bool, check_int, fail
from .files import as_path, bundle_dir, fsync_dir, mark, new_temp_dir, remove_debris, unmark
from .writer import DEFAULT_SHARD_SIZE, BundleWriter
from ..capture.api import gc_paused
from ..capture.layer_log import LayerLog
from ..capture.model_log import ModelLog
from ..errors import BundleError, BundleWarning, InvalidArgumentError


def save(log: ModelLog, path: str | os.PathLike, *, shard_size: int = DEFAULT_SHARD_SIZE, append: bool = False) -> None:
    """Write ``log`` (metadata and every saved tensor) to the bundle directory ``path``.

    An existing bundle at ``path`` is replaced atomically: until the new one is complete
    on disk the old one stays in place.

    Args:
        log: a :class:`ModelLog` (captured, or loaded from another bundle).
        path: the bundle directory to write.
        shard_size: activations are split across ``.safetensors`` files of about this many bytes.
        append: add ``log`` as one more capture unit of the bundle at ``path`` (created if
            missing) instead of replacing it; the commit is durable and append-only, and
            ``lt.load(path, unit=i)`` reads capture ``i``.

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), torch.ones(1, 3))
        >>> path = tempfile.mkdtemp() + "/run"
        >>> lt.save(log, path)
        >>> torch.equal(lt.load(path)["relu_1_2"].activation, log["relu_1_2"].activation)
        True
    """
    if not isinstance(log, ModelLog):
        fail("log", log, "a ModelLog", "lt.save(lt.log_forward_pass(model, x), 'runs/bundle')", wrong_type=True)
    target = bundle_dir(as_path(path, "path", "lt.save(log, 'runs/bundle')"))
    check_int("shard_size", shard_size, "lt.save(log, path, shard_size=2 << 30)", low=1)
    check_bool("append", append, "lt.save(log, path, append=True)")
    saved = sum(1 for layer in log.layers if any(getattr(layer, f) is not None for f in TENSOR_FIELDS))
    sizes = {"shard_size": shard_size, "header_reserve": 1024 + 200 * saved}
    if append:
        with gc_paused(), BundleWriter(target, kind="capture", append=True, **sizes) as writer:
            writer.commit(LogEncoder(writer.append).encode_log(log))
        remove_debris(target)
        return
    check_replaceable(target)
    tmp = new_temp_dir(target)
    try:
        with gc_paused(), BundleWriter(tmp, kind="capture", journal=False, **sizes) as writer:
            writer.commit(LogEncoder(writer.append).encode_log(log))
        move_into_place(tmp, target)  # the writer's close made the files and tmp's entries durable
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    remove_debris(target)  # what killed saves of this bundle left, if their writers are gone


def check_replaceable(target: Path, example: str = "lt.save(log, 'runs/new_bundle')") -> None:
    """Raise unless ``target`` is absent, empty, or a bundle (which a new bundle may replace)."""
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not (target / MANIFEST_NAME).is_file()):
        raise BundleError(
            f"Refusing to overwrite {str(target)!r}: it exists and is not a lens_train bundle. Write to a new path. "
            f"Example: {example}."
        )


def move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``target``; an old bundle is moved aside first, then deleted.

    The set-aside old bundle gets this writer's marker, so that if the process dies
    before deleting it, a later save knows it as debris (:func:`~lens_train.bundle.files.remove_debris`).
    """
    if not target.exists():
        os.rename(tmp, target)
        unmark(target)
        fsync_dir(target.parent)
        return
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        mark(old)
        os.rename(tmp, target)
    except BaseException:
        unmark(old)
        os.rename(old, target)
        raise
    unmark(target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def load(path: str | os.PathLike, lazy: bool = False, unit: int | None = None) -> ModelLog:
    """Read the bundle at ``path`` back into a :class:`ModelLog`.

    Args:
        path: a bundle directory written by :func:`save` or by a streaming capture
            (``log_forward_pass(..., save_activations_to=path)``).
        lazy: read only metadata now; ``log[key].materialize_activation()`` reads one
            layer's tensors (activation, and its transformed activation and gradient)
            when asked, and ``log.output`` (the model's return value) is read on first
            use. Checksums are verified whenever tensor bytes are read.
        unit: which committed unit to read when the bundle holds several captures
            (``lt.save(..., append=True)``): its index, or negative from the last;
            None reads the last capture.

    Raises:
        BundleError: the path is not a bundle, a file is missing, truncated or modified,
            a checksum does not match, or the format version is unknown.
        InvalidArgumentError: ``unit`` is not the index of a committed capture.

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> path = tempfile.mkdtemp() + "/run"
        >>> lt.save(lt.log_forward_pass(torch.nn.ReLU(), torch.tensor([-1.0, 2.0])), path)
        >>> log = lt.load(path, lazy=True)
        >>> log["relu_1_1"].activation is None, log["relu_1_1"].materialize_activation(), log.output
        (True, tensor([0., 2.]), tensor([0., 2.]))
    """
    path = as_path(path, "path", "lt.load('runs/bundle')")
    check_bool("lazy", lazy, "lt.load(path, lazy=True)")
    with gc_paused():
        return _load(path, lazy, unit)


def _load(path: str | os.PathLike, lazy: bool, unit: int | None) -> ModelLog:
    reader = BundleReader(path)
    index = _capture_index(reader, unit)
    where = f"{reader.path / MANIFEST_NAME}, unit {index}"
    check_capture_unit(reader.units[index]["metadata"], reader.entries(index), where)
    try:
        log = _restore(reader, index, lazy, where)
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise BundleError(f"{where}: the capture metadata is malformed ({type(exc).__name__}: {exc}).") from None
    if reader.left_out:
        warnings.warn(BundleWarning(f"Bundle {str(reader.path)!r}: loaded its committed capture; left out: " + " ".join(reader.left_out)), stacklevel=4)
    return log


def _capture_index(reader: BundleReader, unit: int | None) -> int:
    """The index of the capture unit to read: ``unit``, or the last capture."""
    captures = [u["index"] for u in reader.units if u["metadata"].get("kind") == "capture"]
    if not captures:
        left = " Left out: " + " ".join(reader.left_out) if reader.left_out else ""
        what = "no committed capture: its writer stopped before the capture finished" if not reader.units else (
            f"{len(reader.units)} units of kind {reader.manifest.get('kind')!r}, no capture; read them with "
            "lens_train.bundle.reader.BundleReader(path)")
        raise BundleError(f"Bundle {str(reader.path)!r} holds {what}.{left}")
    if unit is None:
        return captures[-1]
    n = len(reader.units)
    index = unit + n if type(unit) is int and unit < 0 else unit
    if type(unit) is not int or index not in captures:
        listed = f"units 0 to {n - 1}" if len(captures) == n else f"captures at units {captures}"
        raise InvalidArgumentError(
            f"lt.load(..., unit={unit!r}): bundle {str(reader.path)!r} has {n} committed unit(s), {listed}; "
            f"unit={unit!r} is not one of them. Example: lt.load(path, unit={captures[-1]}) (or unit=-1 for the last)."
        )
    return index


class LoadedModelLog(ModelLog):
    """A :class:`ModelLog` read from a bundle; when loaded lazily, ``output`` is read on first use.

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> path = tempfile.mkdtemp() + "/run"
        >>> lt.save(lt.log_forward_pass(torch.nn.Tanh(), torch.zeros(2)), path)
        >>> log = lt.load(path, lazy=True)
        >>> type(log).__name__, log.output, log.bundle_info["unit"]
        ('LoadedModelLog', tensor([0., 0.]), 0)
    """

    _read_output: Callable[[], Any] | None = None
    _output: Any = None

    @property
    def output(self) -> Any:
        """The model's return value (read from the bundle the first time it is asked for)."""
        if self._read_output is not None:
            self._output, self._read_output = self._read_output(), None
        return self._output

    @output.setter
    def output(self, value: Any) -> None:
        self._output, self._read_output = value, None


def _restore(reader: BundleReader, index: int, lazy: bool, where: str) -> ModelLog:
    unit = reader.units[index]["metadata"]  # a strict reader's units sit at their index
    if lazy:
        def get(name: str) -> Any:
            return reader.read_tensor(index, name)
    else:
        tensors = reader.read_tensors(index, reader.tensor_names(index))

        def get(name: str) -> Any:
            if name not in tensors:
                raise BundleError(f"{where} refers to tensor {name!r}, which the unit does not hold.")
            return tensors[name]
    hooks = materializers(reader, index, unit, where) if lazy else None
    layers = []
    for i, fields in enumerate(layer_fields(unit, get, where)):
        hook = hooks[i] if hooks else None
        for field in TENSOR_FIELDS:
            fields[field] = None if hook is not None and hook.defers(field) else decode_value(fields.get(field), get, where)
        layers.append(LayerLog(**fields, _materialize=hook))
    log = LoadedModelLog(unit["model_name"], layers, modules_from_json(unit["modules"], where), decode_value(unit["meta"], get, where))
    if lazy:
        log._read_output = lambda: decode_value(unit.get("output"), get, where)
    else:
        log.output = decode_value(unit.get("output"), get, where)
    log.bundle_info = {"path": str(reader.path), "unit": index, "manifest": reader.manifest,
                       "notes": list(unit.get("notes", [])), "left_out": list(reader.left_out)}
    return log


class Materializer:
    """The ``_materialize`` hook of a layer whose tensors stay on disk until asked for."""

    def __init__(self, reader: BundleReader, unit: int, deferred: dict[str, Any], where: str) -> None:
        self.reader, self.unit, self.deferred, self.where = reader, unit, deferred, where

    def defers(self, field: str) -> bool:
        """Whether ``field`` is read only when the layer is materialized."""
        return field in self.deferred

    def __call__(self, layer: LayerLog) -> Any:
        tensors = self.reader.read_tensors(self.unit, sorted({n for data in self.deferred.values() for n in tensor_names(data)}))
        values = {f: decode_value(data, tensors.__getitem__, self.where) for f, data in self.deferred.items()}
        for field in ("transformed_activation", "gradient"):
            if field in values:
                setattr(layer, field, values[field])
        return values.get("tensor_contents")


def materializers(reader: BundleReader, index: int, unit: dict[str, Any], where: str,
                  require_activation: bool = True) -> list[Materializer | None]:
    """Per layer, a hook reading its stored tensors on demand.

    None for layers without stored tensors, and with ``require_activation`` for layers
    without a raw activation (their other tensors are then read at once).
    """
    table = unit["layers"]
    columns = table["columns"]
    slots = [(columns.index(f), f) for f in TENSOR_FIELDS if f in columns]
    hooks: list[Materializer | None] = []
    for row in table["rows"]:
        deferred = {f: row[i] for i, f in slots if tensor_names(row[i])}
        wanted = "tensor_contents" in deferred if require_activation else bool(deferred)
        hooks.append(Materializer(reader, index, deferred, where) if wanted else None)
    return hooks


def tensor_names(data: Any) -> list[str]:
    """Names of the stored tensors an encoded value refers to.

    Example:
        >>> tensor_names({"$tuple": [{"$tensor": "a/1"}, 3]})
        ['a/1']
    """
    if isinstance(data, list):
        return [n for v in data for n in tensor_names(v)]
    if isinstance(data, dict):
        if len(data) == 1 and "$tensor" in data and isinstance(data["$tensor"], str):
            return [data["$tensor"]]
        return [n for v in data.values() for n in tensor_names(v)]
    return []
