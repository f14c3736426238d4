"""Streaming capture: ``log_forward_pass(..., save_activations_to=path)`` writes as the model runs.

Each saved activation is appended to the bundle the moment its op finishes; with
``keep_activations_in_memory=False`` the log lets go of it right after, so memory stays
near a plain forward pass plus one activation. The capture is committed as one unit
once the log is built; a capture that fails leaves nothing behind. Streaming to an
existing bundle writes beside it and swaps the new one in once it is committed.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch

from .api import Materializer, check_replaceable, materializers, move_into_place
from .files import as_path, bundle_dir, new_temp_dir, remove_debris
from .format import MANIFEST_NAME
from .metadata import TENSOR_FIELDS, LogEncoder
from .reader import BundleReader
from .schema import referenced_tensors
from .writer import BundleWriter
from ..capture.api import gc_paused
from ..capture.layer_log import LayerLog
from ..capture.model_log import ModelLog
from ..capture.recorder import CapturePlan
from ..capture.records import OpRecord


def open_capture_stream(path: str | os.PathLike, keep_in_memory: bool = True) -> CaptureStream:
    """A stream writing one capture to the bundle directory ``path`` (what ``save_activations_to`` opens).

    Example:
        >>> import tempfile
        >>> stream = open_capture_stream(tempfile.mkdtemp() + "/s")
        >>> type(stream).__name__, stream.abort()
        ('CaptureStream', None)
    """
    return CaptureStream(path, keep_in_memory)


class _StreamEncoder(LogEncoder):
    """A LogEncoder that refers to the values the stream already wrote instead of writing them again."""

    def __init__(self, put: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(put)
        self.written: dict[tuple[int, str], Any] = {}

    def field(self, layer: LayerLog, column: str, value: Any) -> Any:
        done = self.written.get((layer.operation_index, column))
        return done if done is not None else super().field(layer, column, value)


class CaptureStream:
    """Writes one capture's activations into a new bundle as they are produced.

    Example:
        >>> import tempfile, torch, lens_train as lt
        >>> path = tempfile.mkdtemp() + "/stream"
        >>> log = lt.log_forward_pass(torch.nn.ReLU(), -torch.ones(2), save_activations_to=path,
        ...                           keep_activations_in_memory=False)
        >>> log["relu_1_1"].activation is None, log["relu_1_1"].materialize_activation()
        (True, tensor([0., 0.]))
    """

    def __init__(self, path: str | os.PathLike, keep_in_memory: bool) -> None:
        self.keep = keep_in_memory
        self.target = bundle_dir(as_path(path, "save_activations_to", "lt.log_forward_pass(model, x, save_activations_to='runs/bundle')"))
        write_to = self.target
        if self.target.exists() and not (self.target.is_dir() and not any(self.target.iterdir())):
            # replacing a bundle: write beside it, swap once committed; a crash leaves the old one
            check_replaceable(self.target, "lt.log_forward_pass(model, x, save_activations_to='runs/new_bundle')")
            write_to = new_temp_dir(self.target)
        self.writer = BundleWriter(write_to, kind="capture")
        self.encoder = _StreamEncoder(self.writer.append)
        self.active = True

    def run(self, capture: Callable[[CapturePlan], ModelLog], plan: CapturePlan) -> ModelLog:
        """``capture(plan + this stream's sink)``; on failure the bundle directory is removed."""
        downstream = plan.sink

        def sink(rec: OpRecord) -> None:
            if downstream is not None:
                downstream(rec)
            self.sink(rec)

        try:
            return capture(dataclasses.replace(plan, sink=sink))
        except BaseException:
            self.abort()
            raise

    def sink(self, rec: OpRecord) -> None:
        """Write ``rec``'s saved tensors now (called by the recorder for each finished record)."""
        if not self.active:  # a re-run of the plan (save_new_activations) after the stream ended
            return
        for field, value in (("tensor_contents", rec.activation), ("transformed_activation", rec.transformed_activation)):
            if value is None or (field != "tensor_contents" and not _has_tensor(value)):
                continue
            what = f"{field} of operation {rec.index}"
            self.encoder.written[(rec.index, field)] = self.encoder.value(value, f"{TENSOR_FIELDS[field]}/{rec.index}", what)
            if not self.keep:
                setattr(rec, "activation" if field == "tensor_contents" else field, None)
        if not rec.is_output:
            # memory of a dropped tensor may be reused: only the model's outputs, which stay
            # alive, may be recognised again (as parts of log.output)
            self.encoder.seen.clear()

    def finish(self, log: ModelLog) -> None:
        """Commit the capture as the bundle's one unit; layers then read dropped activations from disk."""
        if not self.active:
            return
        try:
            with gc_paused():
                unit = self.encoder.encode_log(log)
            for name in set(self.writer.uncommitted) - set(referenced_tensors(unit)):
                self.writer.discard(name)  # written for a record the log did not keep
            self.writer.commit(unit)
            self.writer.close()
            if self.writer.path != self.target:
                move_into_place(self.writer.path, self.target)
        except BaseException:
            self.abort()
            raise
        remove_debris(self.target)
        self.active = False
        if not self.keep:
            reader = BundleReader(self.target)
            hooks = materializers(reader, 0, unit, f"{self.target / MANIFEST_NAME}, unit 0", require_activation=False)
            for layer, hook in zip(log.layers, hooks):
                _attach(layer, hook)
        log.bundle_info = {"path": str(self.target), "unit": 0, "notes": list(unit["notes"]), "left_out": []}

    def abort(self) -> None:
        """Stop writing and remove what was written (an old bundle at the path stays as it was)."""
        self.active = False
        self.writer.abort(remove_if_empty=True)
        if self.writer.path != self.target:
            shutil.rmtree(self.writer.path, ignore_errors=True)


def _attach(layer: LayerLog, hook: Materializer | None) -> None:
    if hook is None:
        return
    layer._materialize = hook
    if hook.defers("transformed_activation") and layer.transformed_activation is not None:
        hook.deferred.pop("transformed_activation")  # still in memory


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    return False
