"""``lt.edits``: what an intervention does to one activation, as small immutable recipes.

An edit spec is normalised once by :func:`as_edit` into an :class:`Edit`, then applied
to values by :func:`apply_edit`, which checks that the result can stand in for the
original (same shape, same dtype) and names the layer when it cannot. Nothing here
knows about taps or logs: ``lt.Taps(edits=...)``, the importance callback and the
inspection-time tools all go through these two functions.

Every built-in edit is graph-connected, and each is exactly the expression below, so a
forward hook returning that expression gives bit-identical outputs and gradients:

=====================================  ===================================================
spec                                   the edited value of ``x``
=====================================  ===================================================
``zero()`` / ``"zero"``                ``x * 0``
``mean()`` / ``"mean"``                ``x * 0 + x.mean(0, keepdim=True)`` (batch mean)
``mean(reference=m)``                  ``x * 0 + m`` (``m`` broadcast to ``x``)
``noise(std)`` / ``"noise"``           ``x + std * torch.randn_like(x)``
``noise(std, relative=True)``          ``x + std * x.detach().std(correction=0) * torch.randn_like(x)``
``detach()`` / ``"detach"``            ``x.detach()``
a tensor ``v``                         ``x * 0 + v`` (``v`` broadcast to ``x``)
a callable ``f``                       ``f(x)``, or ``f(x, step)`` (see :func:`as_edit`)
=====================================  ===================================================

``x * 0`` rather than ``torch.zeros_like(x)``: the value is zero and the gradient that
reaches ``x`` is exactly zero, yet every parameter upstream still takes part in the
backward pass, so optimizers and DDP see the same parameters every step (DDP raises on
parameters that get no gradient). A non-finite ``x`` gives NaN (``inf * 0``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import EditError
from .structures import map_tensors, tensor_leaves

_Tensor = torch.Tensor
_NAMES = ("zero", "mean", "noise", "detach")


class Edit:
    """A normalised edit: :meth:`apply` maps an activation (and the step) to its edited value.

    Example:
        >>> import torch
        >>> zero().apply(torch.ones(2), step=0)
        tensor([0., 0.])
    """

    name: str = "edit"

    def apply(self, x: torch.Tensor, step: int) -> Any:
        """The edited value of ``x`` (unchecked: use :func:`apply_edit`)."""
        raise NotImplementedError

    def needs_float(self) -> bool:
        """Whether the edit only makes sense on floating-point values."""
        return False


@dataclass(frozen=True)
class Zero(Edit):
    """``x * 0`` (see :func:`zero`)."""

    name = "zero"

    def apply(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return x * 0


@dataclass(frozen=True)
class Mean(Edit):
    """The batch mean over dim 0, broadcast back (see :func:`mean`)."""

    name = "mean"

    def apply(self, x: torch.Tensor, step: int) -> torch.Tensor:
        if x.dim() == 0:
            raise EditError("mean() takes the mean over the batch dim 0, and this value is a scalar. "
                            "Give the mean yourself: lt.edits.mean(reference=torch.tensor(0.5)).")
        return x * 0 + x.mean(0, keepdim=True)

    def needs_float(self) -> bool:
        return True


@dataclass(frozen=True)
class Noise(Edit):
    """Gaussian noise added to ``x`` (see :func:`noise`)."""

    std: float = 1.0
    relative: bool = False
    name = "noise"

    def apply(self, x: torch.Tensor, step: int) -> torch.Tensor:
        scale = self.std * x.detach().std(correction=0) if self.relative else self.std
        return x + scale * torch.randn_like(x)

    def needs_float(self) -> bool:
        return True


@dataclass(frozen=True)
class Detach(Edit):
    """``x.detach()``: the same value, no gradient through it (see :func:`detach`)."""

    name = "detach"

    def apply(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return x.detach()


@dataclass(frozen=True, eq=False)
class Replace(Edit):
    """``x * 0 + value``: a given value, broadcast to ``x`` (a tensor spec, or ``mean(reference=...)``)."""

    value: torch.Tensor
    name: str = "tensor"

    def apply(self, x: torch.Tensor, step: int) -> torch.Tensor:
        value = self.value
        if value.dtype != x.dtype:
            raise EditError(f"the replacement is {value.dtype} but the value is {x.dtype}. "
                            f"Convert it: value.to({x.dtype}).")
        try:
            shape = torch.broadcast_shapes(value.shape, x.shape)
        except RuntimeError:
            shape = None
        if shape != x.shape:
            raise EditError(f"a replacement of shape {tuple(value.shape)} does not broadcast to the value's shape "
                            f"{tuple(x.shape)}. Give a tensor of shape {tuple(x.shape)} (or one that broadcasts to it, "
                            f"e.g. {tuple(x.shape[1:])} for every example).")
        if value.device != x.device:
            value = value.to(x.device)
        return x * 0 + value


@dataclass(frozen=True, eq=False)
class Function(Edit):
    """A user function ``f(x)`` or ``f(x, step)``; how to call it is decided once, in :func:`as_edit`."""

    fn: Callable[..., Any]
    takes_step: bool
    step_by_name: bool = False
    name: str = "function"

    def apply(self, x: Any, step: int) -> Any:
        if not self.takes_step:
            return self.fn(x)
        return self.fn(x, step=step) if self.step_by_name else self.fn(x, step)


def zero() -> Edit:
    """Ablate: the value becomes ``x * 0`` (zero, with a zero gradient to ``x``).

    Example:
        >>> import torch
        >>> apply_edit(zero(), torch.tensor([1.0, -2.0]), "fc")
        tensor([0., -0.])
    """
    return Zero()


def mean(reference: torch.Tensor | None = None) -> Edit:
    """Mean-ablate: the batch mean over dim 0 (``x * 0 + x.mean(0, keepdim=True)``), or a given mean.

    Args:
        reference: a mean computed beforehand (e.g. over a data set), broadcast to the value:
            the edit is then ``x * 0 + reference``. Its dtype must be the value's.

    Example:
        >>> import torch
        >>> apply_edit(mean(), torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "fc")
        tensor([[2., 3.],
                [2., 3.]])
    """
    if reference is None:
        return Mean()
    if not isinstance(reference, _Tensor):
        raise EditError(f"mean(reference=...) takes a tensor, got {type(reference).__name__} {reference!r:.40}. "
                        "Example: lt.edits.mean(reference=activations.mean(0)).")
    return Replace(reference, name="mean")


def noise(std: float = 1.0, relative: bool = False) -> Edit:
    """Add Gaussian noise: ``x + std * randn_like(x)``.

    Args:
        std: the noise's standard deviation.
        relative: scale ``std`` by the value's own standard deviation, taken over every
            element of this batch's value and detached (population std, ``correction=0``):
            ``noise(0.1, relative=True)`` adds noise a tenth as large as the signal.

    The noise comes from torch's global RNG (``torch.manual_seed`` makes it repeatable).

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> apply_edit(noise(0.0), torch.ones(2), "fc")
        tensor([1., 1.])
    """
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not std >= 0:
        raise EditError(f"noise(std=...) must be a number >= 0, got {std!r}. Example: lt.edits.noise(0.1).")
    if not isinstance(relative, bool):
        raise EditError(f"noise(relative=...) must be True or False, got {relative!r}. "
                        "Example: lt.edits.noise(0.1, relative=True).")
    return Noise(float(std), relative)


def detach() -> Edit:
    """Stop the gradient: the value is unchanged, nothing flows back through it.

    Example:
        >>> import torch
        >>> apply_edit(detach(), torch.ones(2, requires_grad=True), "fc").requires_grad
        False
    """
    return Detach()


def as_edit(spec: Any) -> Edit:
    """Normalise an edit spec into an :class:`Edit` (validated once; applying it is cheap).

    A spec is an :class:`Edit` (``lt.edits.zero()``...), one of the strings ``"zero"``,
    ``"mean"``, ``"noise"``, ``"detach"`` (the defaults of those functions), a tensor (the
    replacement value, broadcast to the activation, same dtype), or a callable. A callable
    gets the step too when it takes two positional arguments or one named ``step``
    (``lambda x, step: ...``, ``def f(x, *, step)``); otherwise it gets the value alone.

    Example:
        >>> import torch
        >>> as_edit("zero"), as_edit(lambda x, step: x * step).takes_step
        (Zero(), True)
    """
    if isinstance(spec, Edit):
        return spec
    if isinstance(spec, str):
        if spec not in _NAMES:
            raise EditError(f"Unknown edit {spec!r}. Use one of {list(_NAMES)}, a tensor, or a callable "
                            f"tensor -> tensor, e.g. edits={{'fc': 'zero'}} or edits={{'fc': lambda x: 2 * x}}.")
        return {"zero": zero, "mean": mean, "noise": noise, "detach": detach}[spec]()
    if isinstance(spec, _Tensor):
        return Replace(spec)
    if callable(spec):
        takes_step, by_name = _step_argument(spec)
        return Function(spec, takes_step, by_name)
    raise EditError(f"An edit must be a callable, a tensor, or one of {list(_NAMES)}; got {type(spec).__name__} "
                    f"{spec!r:.60}. Example: edits={{'fc': lt.edits.zero()}}.")


def _step_argument(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """``(takes the step, by keyword)`` for an edit function, read from its signature once."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no signature: they take the value alone
        return False, False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    others = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty and p.name != "step"]
    if len(required) > 2 or others or (required and required[0].name == "step"):
        raise EditError(_arity_message(fn))
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise EditError(_arity_message(fn))
    named = next((p for p in params if p.name == "step"), None)
    if named is not None:
        return True, named.kind != named.POSITIONAL_ONLY
    return len(required) == 2, False


def _arity_message(fn: Callable[..., Any]) -> str:
    return (f"The edit function {getattr(fn, '__name__', fn)!r} must take the value, and optionally the step: "
            "def edit(x): ... or def edit(x, step): ... (e.g. lambda x, step: x * min(1.0, step / 100)).")


def apply_edit(edit: Edit, value: Any, layer: str, step: int = 0) -> Any:
    """Apply ``edit`` to ``value`` (the activation of ``layer``) and check the result.

    A tensor gets the edit; a structured value (a module's tuple output) gets a callable
    as a whole, and a built-in edit on each floating-point tensor in it. The result must
    have the original's structure, shapes and dtypes, else :class:`EditError` names the
    layer, what was expected and how to fix it.

    Example:
        >>> import torch
        >>> apply_edit(as_edit(lambda x: x[:, :1]), torch.ones(2, 3), "fc")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_train.errors.EditError: The edit of 'fc' returned shape (2, 1), but the activation has shape (2, 3)...
    """
    try:
        if isinstance(value, _Tensor):
            _check_input(edit, value)
            result = edit.apply(value, step)
        elif isinstance(edit, Function):
            result = edit.apply(value, step)
        elif isinstance(edit, Replace):
            raise EditError(f"a tensor replaces one tensor, but the value is a {type(value).__name__} of "
                            f"{len(tensor_leaves(value))} tensors. Pass a callable that returns the same structure.")
        else:
            result = map_tensors(value, lambda t: edit.apply(t, step) if t.is_floating_point() else t)
    except EditError as err:
        raise EditError(f"Cannot apply the edit {_describe(edit)} to {layer!r}: {err}") from None
    _check_result(value, result, layer, edit)
    return result


def _check_input(edit: Edit, x: torch.Tensor) -> None:
    if edit.needs_float() and not (x.is_floating_point() or x.is_complex()):
        raise EditError(f"{edit.name} needs floating-point values, and this one is {x.dtype}. Edit a "
                        "floating-point layer, or pass a callable or a tensor of the same dtype.")


def _check_result(value: Any, result: Any, layer: str, edit: Edit) -> None:
    if isinstance(value, _Tensor):
        pairs = [(value, result)]
    else:
        before, after = tensor_leaves(value), tensor_leaves(result)
        if type(result) is not type(value) or len(before) != len(after):
            raise EditError(f"The edit of {layer!r} returned {_kind(result)}, but the activation is {_kind(value)}. "
                            "Return a value of the same structure (the edited tensors in the same places).")
        pairs = list(zip(before, after))
    for old, new in pairs:
        if not isinstance(new, _Tensor):
            raise EditError(f"The edit of {layer!r} returned {_kind(new)}, not a tensor. Return a tensor of shape "
                            f"{tuple(old.shape)} and dtype {old.dtype}, e.g. lambda x: x * 0.5.")
        if new.shape != old.shape:
            raise EditError(f"The edit of {layer!r} returned shape {tuple(new.shape)}, but the activation has shape "
                            f"{tuple(old.shape)}. Return a tensor of shape {tuple(old.shape)} (expand or pad it).")
        if new.dtype != old.dtype:
            raise EditError(f"The edit of {layer!r} returned dtype {new.dtype}, but the activation is {old.dtype}. "
                            f"Convert the result: .to({old.dtype}).")


def _kind(value: Any) -> str:
    if isinstance(value, _Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__} of {len(tensor_leaves(value))} tensor(s)"


def _describe(edit: Edit) -> str:
    if isinstance(edit, Function):
        return repr(getattr(edit.fn, "__name__", edit.fn))
    return edit.name
