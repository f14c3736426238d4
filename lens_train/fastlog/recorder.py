"""``lt.fastlog.Recorder``, ``record`` and ``dry_run``: keep only the events a predicate picks."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ..capture.api import check_supported, preserved_buffers
from ..capture.inputs import normalize_inputs
from ..capture.recorder import _storage_key
from ..arguments import check_int, check_path
from ..errors import ArgumentTypeError, InvalidArgumentError
from .context import CaptureSpec, RecordContext
from .events import EventStream
from .recording import Entry, Recording, Rollout
from .storage import RolloutWriter, recover

KeepOp = Callable[[RecordContext], "bool | CaptureSpec | None"]
_DEFAULT_SPEC = CaptureSpec()
_STORAGES = ("ram", "disk", "both")


class Recorder:
    """Keep the tensors a predicate picks, over every model call inside ``with recorder:``.

    Each call of ``model`` is one rollout (or group calls with :meth:`rollout`). Only the
    model's own forward is intercepted; the code around it runs untouched.

    Args:
        model: the module to watch; call it as ``model(...)`` inside the block.
        keep_op: ``keep_op(ctx) -> bool | CaptureSpec``, called for every event
            (see :class:`RecordContext`); true keeps a detached copy-free view,
            a :class:`CaptureSpec` says how to keep it.
        storage: ``"ram"`` (kept in :attr:`recording`), ``"disk"`` (streamed to ``path``
            one committed rollout at a time; memory stays constant) or ``"both"``.
        path: directory for ``"disk"``/``"both"``; an existing recording is appended to.
        history_size: how many recent events ``ctx.history`` holds.

    Example:
        >>> import torch, lens_train as lt
        >>> policy = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> with lt.fastlog.Recorder(policy, keep_op=lambda c: c.layer_type == "tanh") as recorder:
        ...     for step in range(3):
        ...         action = policy(torch.randn(1, 4))
        >>> len(recorder.recording.rollouts), recorder.recording.values("tanh_1")[2].shape
        (3, torch.Size([1, 8]))
    """

    def __init__(self, model: nn.Module, keep_op: KeepOp, storage: str = "ram", path: str | os.PathLike | None = None,
                 history_size: int = 8) -> None:
        check_supported(model)
        if not callable(keep_op):
            raise InvalidArgumentError(f"keep_op must be a function of the event context, got {keep_op!r:.60} ({type(keep_op).__name__}). Example: keep_op=lambda ctx: ctx.layer_type == 'relu'.")
        if storage not in _STORAGES:
            raise InvalidArgumentError(f"storage must be one of {_STORAGES}, got {storage!r}. Example: Recorder(model, keep_op, storage='disk', path='run/fastlog').")
        if storage != "ram" and path is None:
            raise InvalidArgumentError(f"storage={storage!r} needs a directory. Example: Recorder(model, keep_op, storage={storage!r}, path='run/fastlog').")
        check_int("history_size", history_size, "lt.fastlog.Recorder(model, keep_op, history_size=8)", low=0)
        if path is not None:
            check_path("path", path, "lt.fastlog.Recorder(model, keep_op, storage='disk', path='run/fastlog')")
        self.model = model
        self.keep_op = keep_op
        self.storage = storage
        self.path = None if path is None else str(path)
        self.dry = False
        self.output: Any = None
        self.lost_calls = 0
        self._rollouts: list[Rollout] = []
        self._stream = EventStream(model, self._on_event, self._on_call_start, self._on_call_end, history_size)
        self._writer: RolloutWriter | None = None
        self._group: list[bool] | None = None  # per-call success inside an explicit rollout()
        self._reset_rollout()

    # -- context management -----------------------------------------------------------
    def __enter__(self) -> Recorder:
        if self.storage != "ram":
            self._writer = RolloutWriter(self.path)
        self._stream.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stream.uninstall()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @contextmanager
    def rollout(self) -> Iterator[None]:
        """Group every model call inside the block into one rollout (an episode).

        Labels and module passes count on across the calls (``relu_1`` of step 2 is
        ``relu_{n+1}``); the rollout is committed when the block ends without error.

        Example:
            >>> import torch, lens_train as lt
            >>> net = torch.nn.Sequential(torch.nn.ReLU())
            >>> with lt.fastlog.Recorder(net, keep_op=lambda c: c.kind == "op") as r:
            ...     with r.rollout():
            ...         for _ in range(3):
            ...             _ = net(torch.ones(1))
            >>> list(r.recording[0])
            ['relu_1', 'relu_2', 'relu_3']
        """
        if self._group is not None:
            raise InvalidArgumentError("recorder.rollout() blocks cannot be nested; end the current rollout first.")
        self._group = []
        self._start_rollout()
        ok = False
        try:
            yield
            ok = all(self._group)
        finally:
            calls = self._group
            self._group = None
            self._finish_rollout(ok and bool(calls), len(calls))

    @property
    def recording(self) -> Recording:
        """What was kept so far (read back from disk for ``storage="disk"``)."""
        if self.storage == "disk":
            return recover(self.path)
        return Recording(list(self._rollouts), output=self.output, path=self.path)

    # -- rollouts -----------------------------------------------------------------------
    def _reset_rollout(self) -> None:
        self._entries: list[Entry] = []
        self._shared: dict[int, list[Entry]] = {}
        self._stream.before_inplace = None

    def _start_rollout(self) -> None:
        self._reset_rollout()
        self._stream.reset()
        self._stream.rollout = self._next_index()

    def _next_index(self) -> int:
        return self._writer.next_index if self._writer is not None else len(self._rollouts) + self.lost_calls

    def _on_call_start(self) -> None:
        if self._group is None:
            self._start_rollout()

    def _on_call_end(self, ok: bool) -> None:
        if self._group is not None:
            self._group.append(ok)
        else:
            self._finish_rollout(ok, 1)

    def _finish_rollout(self, ok: bool, num_calls: int) -> None:
        entries = self._entries
        self._reset_rollout()
        if not ok:
            self.lost_calls += 1
            return
        if self._writer is not None:
            tensors = {e.label: e._value for e in entries}
            index = self._writer.commit([e.context for e in entries], tensors, num_calls)
            if self.storage == "disk":
                return
        else:
            index = self._next_index()
        self._rollouts.append(Rollout(index, entries, num_calls))

    # -- events -------------------------------------------------------------------------
    def _on_event(self, ctx: RecordContext, t: torch.Tensor) -> None:
        try:
            answer = self.keep_op(ctx)
        except Exception as exc:
            exc.add_note(f"lens_train: raised by the fastlog keep_op predicate on event {ctx}")
            raise
        if answer is not True and answer is not False and not isinstance(answer, CaptureSpec):
            raise ArgumentTypeError(
                f"keep_op must return True, False or a CaptureSpec, got {answer!r:.60} ({type(answer).__name__}) for event "
                f"{ctx.label!r}. Example: keep_op=lambda ctx: ctx.layer_type == 'relu' (or bool(...) around the test)."
            )
        if not answer:
            return
        if self.dry:
            self._entries.append(Entry(ctx))
            return
        spec = answer if isinstance(answer, CaptureSpec) else _DEFAULT_SPEC
        value, shared = _kept_value(t, spec, copy=self.storage != "ram")
        entry = Entry(ctx, value)
        self._entries.append(entry)
        if shared:
            # a later in-place op on this memory must not change what was kept
            self._shared.setdefault(_storage_key(value), []).append(entry)
            self._stream.before_inplace = self._copy_on_write

    def _copy_on_write(self, target: torch.Tensor) -> None:
        for entry in self._shared.pop(_storage_key(target), ()):
            entry._value = entry._value.clone()


def _kept_value(t: torch.Tensor, spec: CaptureSpec, copy: bool) -> tuple[torch.Tensor, bool]:
    """(value to keep, whether it still shares memory with the model's tensor)."""
    if spec.keep_grad:
        return t, True
    value = t.detach()
    if spec.dtype is not None or spec.device is not None:
        converted = value.to(device=spec.device, dtype=spec.dtype)
        if converted is not value:
            return converted, False
    if copy:
        return value.to("cpu", copy=True), False
    return value, True


def record(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None, keep_op: KeepOp | None = None,
           history_size: int = 8) -> Recording:
    """Run ``model`` once and keep the tensors ``keep_op`` picks (no full log is built).

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> rec = lt.fastlog.record(model, torch.ones(2, 3), keep_op=lambda c: c.kind == "module" and c.module_class == "Linear")
        >>> rec.labels, rec["2:1"].shape
        (['0:1', '2:1'], torch.Size([2, 1]))
    """
    if keep_op is None:
        raise InvalidArgumentError("record needs keep_op, got None. Example: lt.fastlog.record(model, x, keep_op=lambda ctx: ctx.layer_type == 'relu'); list events with lt.fastlog.dry_run(model, x).")
    args, kwargs = normalize_inputs(model, input_args, input_kwargs)
    with preserved_buffers(model), Recorder(model, keep_op, history_size=history_size) as recorder:
        recorder.output = model(*args, **kwargs)  # an inspection: running statistics stay as they were
    return recorder.recording


def dry_run(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None,
            keep_op: KeepOp | None = None, history_size: int = 8) -> list[RecordContext]:
    """The events ``keep_op`` would keep (every event when ``keep_op`` is None), no values stored.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Conv1d(1, 2, 3), torch.nn.ReLU())
        >>> events = lt.fastlog.dry_run(model, torch.ones(1, 1, 5),
        ...     keep_op=lambda c: c.layer_type == "relu" and c.history[-1].layer_type == "conv1d")
        >>> [str(e) for e in events]
        ['[2] op relu_1 in 1 (ReLU) call 1: 1x2x3 float32']
    """
    args, kwargs = normalize_inputs(model, input_args, input_kwargs)
    recorder = Recorder(model, keep_op if keep_op is not None else (lambda ctx: True), history_size=history_size)
    recorder.dry = True
    with preserved_buffers(model), recorder:
        recorder.output = model(*args, **kwargs)
    return [e.context for ro in recorder._rollouts for e in ro.entries]
