"""Where a capture's records and tables go beyond memory, without capture importing who takes them.

Capture is the bottom layer: it hands each finished record to the ``sink`` of its
:class:`~lens_train.capture.recorder.CapturePlan` and never imports the bundle package.
Two things need a layer above it: ``log_forward_pass(..., save_activations_to=path)``
(a stream that writes each record to disk) and the table methods of a ``ModelLog``
(``to_csv``, ``to_json``, ``to_pandas``). :mod:`lens_train.bundle` plugs them in when it
is imported (``import lens_train`` always imports it), through :data:`OUTLETS`.

Example:
    >>> import lens_train
    >>> OUTLETS.open_stream is not None and OUTLETS.export_table is not None
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import CaptureError, InvalidArgumentError

if TYPE_CHECKING:
    from .model_log import ModelLog
    from .recorder import CapturePlan


class CaptureStream(Protocol):
    """What a stream does with one capture: wrap its run, then finish with the built log."""

    def run(self, capture: Callable[[CapturePlan], ModelLog], plan: CapturePlan) -> ModelLog: ...

    def finish(self, log: ModelLog) -> None: ...


class MemoryOnly:
    """The stream of a capture whose activations stay in memory only.

    Example:
        >>> from lens_train.capture.recorder import CapturePlan
        >>> MemoryOnly().run(lambda plan: plan.save, CapturePlan())
        'all'
    """

    def run(self, capture: Callable[[CapturePlan], ModelLog], plan: CapturePlan) -> ModelLog:
        """``capture(plan)``, unchanged."""
        return capture(plan)

    def finish(self, log: ModelLog) -> None:
        """Nothing to finish."""


@dataclass
class Outlets:
    """The two functions a layer above capture provides (``None`` until it is imported)."""

    open_stream: Callable[[str | os.PathLike, bool], CaptureStream] | None = None
    export_table: Callable[[ModelLog, str, Any], Any] | None = None


OUTLETS = Outlets()


def open_stream(path: str | os.PathLike | None, keep_in_memory: bool = True) -> CaptureStream:
    """The stream a capture writes through: :class:`MemoryOnly` when ``path`` is None.

    Example:
        >>> type(open_stream(None)).__name__
        'MemoryOnly'
    """
    if path is None:
        if not keep_in_memory:
            raise InvalidArgumentError(
                "keep_activations_in_memory=False would discard every activation: also pass save_activations_to, "
                "e.g. lt.log_forward_pass(model, x, save_activations_to='run/bundle', keep_activations_in_memory=False)."
            )
        return MemoryOnly()
    return _provided("open_stream")(path, keep_in_memory)


def export_table(log: ModelLog, how: str, path: Any) -> Any:
    """``log``'s layer table as ``how`` (``"csv"``, ``"json"``, ``"pandas"``), by the bundle package."""
    return _provided("export_table")(log, how, path)


def _provided(name: str) -> Callable[..., Any]:
    fn = getattr(OUTLETS, name)
    if fn is None:
        raise CaptureError(f"Nothing provides {name}: import lens_train (or lens_train.bundle) before using it.")
    return fn
