"""Errors raised by lens_train.

Every error derives from :class:`LensTrainError` and also from the built-in type
user code would naturally catch (``KeyError``, ``ValueError``, ``TypeError``).

Example:
    >>> from lens_train.errors import LayerNotFoundError, LensTrainError
    >>> issubclass(LayerNotFoundError, KeyError) and issubclass(LayerNotFoundError, LensTrainError)
    True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LensTrainError(Exception):
    """Base class of every error raised by lens_train."""

    def __str__(self) -> str:
        # KeyError quotes its message; show it plainly instead.
        return str(self.args[0]) if self.args else ""


class LayerNotFoundError(LensTrainError, KeyError):
    """A layer, module or op name that does not exist."""


class AmbiguousLayerError(LensTrainError, KeyError):
    """A name that matches several layers where one is required."""


class CaptureError(LensTrainError, RuntimeError):
    """The forward pass could not be captured as asked."""


class UnsupportedModelError(LensTrainError, TypeError):
    """A model or context the capture engine cannot log faithfully."""


class InvalidArgumentError(LensTrainError, ValueError):
    """An argument value that lens_train cannot use."""


class ArgumentTypeError(InvalidArgumentError, TypeError):
    """An argument of a type lens_train cannot use (also a ``TypeError``)."""


class OutOfRangeError(InvalidArgumentError, IndexError):
    """An index past the end of a sequence (also an ``IndexError``)."""


class TapError(LensTrainError, RuntimeError):
    """A tapped activation that this training step cannot provide as asked."""


class ConfigError(LensTrainError, ValueError):
    """An experiment config or ``lens-train`` command line that cannot run as written."""


class EditError(LensTrainError, ValueError):
    """An activation edit that cannot be applied: an unknown spec, or a result of the wrong shape or dtype."""


class DifferentPathError(LensTrainError, ValueError):
    """An input that takes a different path through the model than the logged one."""


class IncompatibleInputError(LensTrainError, ValueError):
    """An input an extracted sub-model cannot run with (its shapes do not fit the replayed ops)."""


class BundleError(LensTrainError, ValueError):
    """A bundle on disk that is missing, corrupted or of an unknown format."""


class CheckpointError(LensTrainError, ValueError):
    """A checkpoint file that cannot be read safely (missing, not a zip checkpoint, malformed)."""


class BundleWarning(UserWarning):
    """A bundle loaded without data a writer wrote but never committed (listed in the message)."""


class MissingDependencyError(LensTrainError, ImportError):
    """An optional package a feature needs is not installed (the message says how to install it)."""


class RenderError(LensTrainError, RuntimeError):
    """A graph picture could not be drawn (no Graphviz program, or it failed)."""


class InputMismatchError(LensTrainError, TypeError):
    """Model inputs that do not fit the model's ``forward`` signature (an unknown keyword...)."""


def add_note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to ``exc`` as a note (``BaseException.add_note``; stored the same way on Python 3.10).

    Example:
        >>> err = ValueError("bad")
        >>> add_note(err, "while doing x"); err.__notes__
        ['while doing x']
    """
    if hasattr(exc, "add_note"):
        exc.add_note(text)
        return
    try:
        exc.__notes__ = [*getattr(exc, "__notes__", ()), text]  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass  # an exception type that refuses attributes: keep the original error as it is


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """Return up to ``n`` candidates closest to ``name`` (substring matches first).

    Example:
        >>> closest("conv2d_3", ["conv2d_3_7", "relu_3_8", "linear_1_17"])
        ['conv2d_3_7']
    """
    pool = list(dict.fromkeys(candidates))
    lowered = name.lower()
    contains = [c for c in pool if lowered and lowered in c.lower()]
    fuzzy = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    return list(dict.fromkeys(contains[:n] + fuzzy))[:n]


def suggestion_text(name: str, candidates: Iterable[str], listing_call: str) -> str:
    """Message tail naming the closest candidates and how to list all of them."""
    near = closest(str(name), candidates)
    hint = f" Closest: {', '.join(repr(c) for c in near)}." if near else ""
    return f"{hint} List every name with {listing_call}."
