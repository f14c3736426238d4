"""Installing and removing interception safely, even when the user presses Ctrl-C.

Python raises ``KeyboardInterrupt`` between any two bytecodes, also inside a ``finally``
block that is removing hooks. A :class:`InterruptGuard` defers SIGINT while lens_train
installs or removes state (hooks, function modes, patched functions, swapped buffers)
and raises it as soon as that section ends, so an interrupt still stops the run but
never leaves anything installed. :func:`remove_mode` takes a function mode off torch's
global stack wherever it is, as often as it is there, so cleanup is idempotent.
"""

from __future__ import annotations

import contextlib

import _signal
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

_stack_len = torch._C._len_torch_function_stack
_stack_at = torch._C._get_function_stack_at
_pop = torch._C._pop_torch_function_stack
_push = torch._C._push_on_torch_function_stack


class InterruptGuard:
    """Defers SIGINT while ``critical`` is true; see :func:`interrupt_guard`."""

    __slots__ = ("critical", "pending", "previous")

    def __init__(self) -> None:
        self.critical = True
        self.pending = False
        self.previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.critical:
            self.pending = True
        else:
            _forward(self.previous, signum, frame)

    def open(self) -> None:
        """Let interrupts through (raising one that arrived while closed)."""
        self.critical = False
        if self.pending:
            self.pending = False
            _forward(self.previous, signal.SIGINT, None)

    def close(self) -> None:
        """Defer interrupts again."""
        self.critical = True


_SIGINT = int(signal.SIGINT)


def _forward(handler: Any, signum: int, frame: Any) -> None:
    if callable(handler):
        handler(signum, frame)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


@contextmanager
def interrupt_guard() -> Iterator[InterruptGuard]:
    """A block that starts and ends with SIGINT deferred; ``guard.open()`` lets it through.

    Outside the main thread (where Python never delivers signals) the guard does nothing.

    Example:
        >>> import signal
        >>> try:
        ...     with interrupt_guard() as guard:
        ...         signal.raise_signal(signal.SIGINT)   # deferred: installing must finish
        ...         print("still running; pending:", guard.pending)
        ... except KeyboardInterrupt:
        ...     print("raised when the section ended")
        still running; pending: True
        raised when the section ended
    """
    guard = InterruptGuard()
    if threading.current_thread() is not threading.main_thread():
        guard.critical = False
        yield guard
        return
    # (_signal: the handlers as they are, without signal's enum conversions each way)
    guard.previous = _signal.signal(_SIGINT, guard._handle)
    try:
        yield guard
    finally:
        guard.critical = True
        _signal.signal(_SIGINT, guard.previous)
        if guard.pending:
            # delivered again rather than raised here: inside a finalizer a raised
            # KeyboardInterrupt would be swallowed, a pending signal reaches the caller
            guard.pending = False
            signal.raise_signal(signal.SIGINT)


def remove_mode(mode: Any) -> None:
    """Take every occurrence of ``mode`` off torch's function-mode stack, keeping the others in order.

    Example:
        >>> from torch.overrides import TorchFunctionMode
        >>> class Mode(TorchFunctionMode):
        ...     def __torch_function__(self, func, types, args=(), kwargs=None):
        ...         return func(*args, **(kwargs or {}))
        >>> m = Mode(); _ = m.__enter__(); _ = m.__enter__()
        >>> remove_mode(m); remove_mode(m)
        >>> torch._C._len_torch_function_stack()
        0
    """
    kept = []
    while _stack_len() and any(_stack_at(i) is mode for i in range(_stack_len())):
        top = _pop()
        if top is not mode:
            kept.append(top)
    for other in reversed(kept):
        _push(other)


_OVERRIDES_FILE = torch.overrides.__file__
_CM_EXIT = contextlib._GeneratorContextManager.__exit__.__code__


def release_mode_frames(tb: Any) -> None:
    """Finish torch's pending "pop the mode for a moment" blocks in a traceback, now.

    ``handle_torch_function`` pops the active mode around its handler and pushes it
    back in a generator's ``finally``. An interrupt that lands between the handler's
    return and the generator's resumption leaves the generator suspended in the
    traceback's frames: when those frames are freed, later, it pushes the mode back,
    after the capture removed it. Clearing those (torch-internal) frames runs that push
    now, so a :func:`remove_mode` that follows removes the mode for good. User frames
    keep their locals for post-mortem debugging.
    """
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code is _CM_EXIT:  # interrupted inside the block's __exit__: finish the generator itself
            gen = getattr(frame.f_locals.get("self"), "gen", None)
            code = getattr(gen, "gi_code", None)
            if code is not None and code.co_filename == _OVERRIDES_FILE and not gen.gi_running:
                gen.close()
        elif frame.f_code.co_filename == _OVERRIDES_FILE:  # interrupted before __exit__ was called
            try:
                frame.clear()
            except RuntimeError:  # still executing: not a finished block
                pass
        tb = tb.tb_next
