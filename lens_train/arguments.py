"""Checks of public arguments where they enter: the library's own error, naming the argument, the value and a fix.

Each check raises :class:`~lens_train.errors.ArgumentTypeError` (also a ``TypeError``) for
a value of the wrong type and :class:`~lens_train.errors.InvalidArgumentError` (a
``ValueError``) for a value out of range, with a working call as the example.

Example:
    >>> check_number("weight", float("nan"), "AuxiliaryLoss(losses, weight=0.3)")
    Traceback (most recent call last):
    lens_train.errors.InvalidArgumentError: weight must be a finite number, got nan. Example: AuxiliaryLoss(losses, weight=0.3).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from .errors import ArgumentTypeError, InvalidArgumentError

SEED_LIMIT = 2**63  # torch seeds are 64-bit


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(name: str, value: Any, what: str, example: str, wrong_type: bool = False) -> None:
    """Raise the error for ``name=value``, which should be ``what``."""
    cls = ArgumentTypeError if wrong_type else InvalidArgumentError
    raise cls(f"{name} must be {what}, got {_shown(value)}. Example: {example}.")


def check_bool(name: str, value: Any, example: str) -> bool:
    """``value`` if it is True or False (not 1, 'no' or None).

    Example:
        >>> check_bool("train_mode", "no", "lt.log_forward_pass(model, x, train_mode=True)")
        Traceback (most recent call last):
        lens_train.errors.ArgumentTypeError: train_mode must be True or False, got 'no'. Example: lt.log_forward_pass(model, x, train_mode=True).
    """
    if type(value) is not bool:
        fail(name, value, "True or False", example, wrong_type=True)
    return value


def check_int(name: str, value: Any, example: str, low: int | None = None, high: int | None = None,
              optional: bool = False) -> int | None:
    """``value`` if it is an int (not a bool) in ``[low, high)``; None too when ``optional``.

    Example:
        >>> check_int("every_n_steps", 0, "every_n_steps=100", low=1)
        Traceback (most recent call last):
        lens_train.errors.InvalidArgumentError: every_n_steps must be an int >= 1, got 0. Example: every_n_steps=100.
    """
    if value is None and optional:
        return None
    what = "an int" + (f" >= {low}" if low is not None else "") + (f" below {high}" if high is not None else "")
    what += " or None" if optional else ""
    if type(value) is not int:
        fail(name, value, what, example, wrong_type=True)
    if (low is not None and value < low) or (high is not None and value >= high):
        fail(name, value, what, example)
    return value


def check_number(name: str, value: Any, example: str, low: float | None = None, positive: bool = False,
                 optional: bool = False) -> float | None:
    """``value`` as a float if it is a finite real number (>= ``low``, or > 0 when ``positive``).

    Example:
        >>> check_number("lr", -1, "Probes(['layer2'], num_classes=10, lr=1e-3)", positive=True)
        Traceback (most recent call last):
        lens_train.errors.InvalidArgumentError: lr must be a finite number > 0, got -1. Example: Probes(['layer2'], num_classes=10, lr=1e-3).
    """
    if value is None and optional:
        return None
    what = "a finite number" + (" > 0" if positive else f" >= {low}" if low is not None else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, complex):
        try:
            import torch

            is_scalar = isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()
        except ImportError:  # pragma: no cover - torch is a dependency
            is_scalar = False
        if not is_scalar:
            fail(name, value, what, example, wrong_type=True)
    number = float(value)
    if not math.isfinite(number) or (positive and number <= 0) or (low is not None and number < low):
        fail(name, value, what, example)
    return number


def check_callable(name: str, value: Any, example: str, optional: bool = True) -> Callable[..., Any] | None:
    """``value`` if it can be called (or is None when ``optional``).

    Example:
        >>> check_callable("activation_postfunc", 5, "activation_postfunc=torch.mean")
        Traceback (most recent call last):
        lens_train.errors.ArgumentTypeError: activation_postfunc must be a function or None, got 5. Example: activation_postfunc=torch.mean.
    """
    if (value is None and optional) or callable(value):
        return value
    fail(name, value, "a function" + (" or None" if optional else ""), example, wrong_type=True)
    return None


def check_choice(name: str, value: Any, choices: Iterable[Any], example: str) -> Any:
    """``value`` if it is one of ``choices``.

    Example:
        >>> check_choice("task", "rank", ["classification", "regression"], "task='regression'")
        Traceback (most recent call last):
        lens_train.errors.InvalidArgumentError: task must be one of ['classification', 'regression'], got 'rank'. Example: task='regression'.
    """
    options = list(choices)
    if not any(value == c and type(value) is type(c) for c in options):
        fail(name, value, f"one of {options}", example, wrong_type=not any(isinstance(value, type(c)) for c in options))
    return value


def check_names(name: str, value: Any, example: str, keywords: tuple[str, ...] = ("all",)) -> Any:
    """``value`` if it is one of ``keywords`` or a non-empty list/tuple of strings.

    Example:
        >>> check_names("layers", 5, "layers=['layer1', 'relu_3']")
        Traceback (most recent call last):
        lens_train.errors.ArgumentTypeError: layers must be 'all' or a non-empty list of layer names, got 5. Example: layers=['layer1', 'relu_3'].
    """
    head = " or ".join(repr(k) for k in keywords)
    what = (f"{head} or " if head else "") + "a non-empty list of layer names"
    if isinstance(value, str):
        if value in keywords:
            return value
        fail(name, value, what, example)
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        fail(name, value, what, example, wrong_type=not isinstance(value, (list, tuple)))
    return value


def check_path(name: str, value: Any, example: str, optional: bool = False) -> str | os.PathLike | None:
    """``value`` if it is a non-empty ``str`` or ``os.PathLike`` (or None when ``optional``).

    Example:
        >>> check_path("path", 123, "lt.load('runs/bundle')")
        Traceback (most recent call last):
        lens_train.errors.ArgumentTypeError: path must be a path (str or os.PathLike), got 123. Example: lt.load('runs/bundle').
    """
    if value is None and optional:
        return None
    if isinstance(value, (str, os.PathLike)) and str(value):
        return value
    fail(name, value, "a path (str or os.PathLike)" + (" or None" if optional else ""), example, wrong_type=True)
    return None
