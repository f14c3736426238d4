"""What a torch call seen by a ``TorchFunctionMode`` is: an operation, a metadata read, a condition...

Shared by every interceptor in lens_train (the capture :class:`~lens_train.capture.recorder.Recorder`,
``lt.Taps`` op taps, ``lt.fastlog``), so all of them agree on the granularity:
an operation is a torch-level call a user could have written; a Python-implemented
``torch.nn.functional`` function that runs several ops is decomposed into them (see
:func:`undispatched_copy`), one that runs a single op is that op.
"""

from __future__ import annotations

import types
from typing import Any

import torch

_Tensor = torch.Tensor
_INPLACE_DUNDERS = frozenset({"__setitem__"})
_TYPE_RENAMES = {torch._C.TensorBase.div: "truediv", torch.Tensor.__rdiv__: "rtruediv"}
_FUNCTIONAL_GLOBALS = torch.nn.functional.__dict__
_OP, _COMPOSITE, _METADATA, _BOOL = range(4)
OP, COMPOSITE, METADATA, BOOL = _OP, _COMPOSITE, _METADATA, _BOOL
# Calls that read metadata and never produce a tensor: skipped without any work.
_METADATA_NAMES = frozenset({
    "shape", "dtype", "device", "dim", "size", "numel", "nelement", "requires_grad", "is_floating_point",
    "is_complex", "__len__", "stride", "is_contiguous", "data_ptr", "element_size", "ndim", "ndimension",
    "is_cuda", "layout", "names", "is_sparse", "storage_offset", "get_device", "_version", "grad_fn",
    "is_leaf", "is_quantized", "is_meta", "is_nested", "__format__", "__repr__", "__hash__", "__index__",
    "__int__", "__float__", "item", "tolist", "untyped_storage", "is_mkldnn",
})
# (name, layer type, kind) of each torch callable seen: classify_call's answers, shared by every
# capture (a function of the callable and of _THIN_FUNCTIONS, which drops what it changes)
CLASSIFIED: dict[Any, tuple[str, str, int]] = {}
_MAX_CLASSIFIED = 20_000


class _ThinFunctions(set):
    """A set of functions whose classification changes when one joins or leaves it."""

    def add(self, func: Any) -> None:
        super().add(func)
        CLASSIFIED.pop(func, None)

    def discard(self, func: Any) -> None:
        super().discard(func)
        CLASSIFIED.pop(func, None)

    def remove(self, func: Any) -> None:
        super().remove(func)
        CLASSIFIED.pop(func, None)


# torch.nn.functional functions seen to run exactly one op: recorded as that one op
# without re-entering them (learned on first use, shared by all captures).
_THIN_FUNCTIONS: set[Any] = _ThinFunctions()


def classify_cached(func: Any) -> tuple[str, str, int]:
    """:func:`classify_call`, remembered in :data:`CLASSIFIED` (when ``func`` is hashable)."""
    names = classify_call(func)
    if _hashable(func):
        if len(CLASSIFIED) >= _MAX_CLASSIFIED:
            CLASSIFIED.clear()
        CLASSIFIED[func] = names
    return names


_NO_GRAD_FALSE = lambda *a, **k: False  # noqa: E731 - stands in for has_torch_function*


def op_type(func: Any) -> tuple[str, str]:
    """(function name, layer type) of a torch callable: ``max_pool2d`` -> ``maxpool2d``."""
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # tensor-valued property such as .T or .real
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    renamed = _TYPE_RENAMES.get(func) if _hashable(func) else None
    return name, renamed or name.replace("_", "").lower()


def classify_call(func: Any) -> tuple[str, str, int]:
    """(function name, layer type, kind) of a torch callable seen by a function mode.

    ``kind`` is ``OP`` (an operation), ``COMPOSITE`` (a Python ``torch.nn.functional``
    function to run with interception on inside), ``METADATA`` (a read such as ``.shape``:
    not an operation) or ``BOOL`` (``Tensor.__bool__``: a Python condition).

    Example:
        >>> import torch
        >>> classify_call(torch.relu)[0], classify_call(torch.Tensor.dim)[2] == METADATA
        ('relu', True)
    """
    name, layer_type = op_type(func)
    if type(func) is types.FunctionType and func.__globals__ is _FUNCTIONAL_GLOBALS and func not in _THIN_FUNCTIONS:
        kind = _COMPOSITE
    elif name == "__bool__":
        kind = _BOOL
    elif name in _METADATA_NAMES:
        kind = _METADATA
    else:
        kind = _OP
    return name, layer_type, kind


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _is_inplace(name: str, kwargs: dict) -> bool:
    if name.endswith("_") and not name.endswith("__"):
        return True
    return name in _INPLACE_DUNDERS or kwargs.get("inplace") is True or "out" in kwargs


def is_thin_wrapper(num_ops: int, num_outputs: int, result: Any) -> bool:
    """Whether a Python functional that ran ``num_ops`` ops (the last with ``num_outputs`` tensors) is one op.

    It is when it ran exactly one op whose tensors are exactly what it returns
    (``F.relu``); a function that drops some outputs of its op (``F.embedding_bag``
    returns one of four) stays decomposed, so its first call and later ones log alike.

    Example:
        >>> import torch
        >>> is_thin_wrapper(1, 1, torch.ones(1)), is_thin_wrapper(1, 4, torch.ones(1))
        (True, False)
    """
    return num_ops == 1 and num_outputs == len(_flatten_output(result))


def inplace_target(args: tuple, kwargs: dict) -> Any:
    """The tensor an in-place op writes: ``out=``, else its first argument (passed by keyword by ``torch.nn.init``).

    Example:
        >>> import torch
        >>> t = torch.zeros(2)
        >>> inplace_target((), {"tensor": t, "a": 0}) is t
        True
    """
    if "out" in kwargs:
        return kwargs["out"]
    if args:
        return args[0]
    return next((v for v in kwargs.values() if isinstance(v, _Tensor)), None)


def _tensors_in(value: Any) -> list[torch.Tensor]:
    if isinstance(value, _Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        out = []
        for v in value:
            if isinstance(v, _Tensor):
                out.append(v)
            elif isinstance(v, (tuple, list)):
                out.extend(t for t in v if isinstance(t, _Tensor))
        return out
    return []


def op_outputs(name: str, args: tuple, kwargs: dict, result: Any) -> list[torch.Tensor]:
    """The tensors an op produced: its target for ``__setitem__`` and ``out=``, else the tensors it returned.

    Example:
        >>> import torch
        >>> x = torch.zeros(2)
        >>> op_outputs("__setitem__", (x, 0, 1.0), {}, None)[0] is x
        True
    """
    if name == "__setitem__":
        return [args[0]]
    out = kwargs.get("out") if kwargs else None
    if isinstance(out, _Tensor):
        return [out]
    if isinstance(result, _Tensor):
        return [result]
    return _tensors_in(result)


def _flatten_output(value: Any) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    _flatten_into(value, out, 0)
    return out


def _flatten_into(value: Any, out: list, depth: int) -> None:
    if isinstance(value, _Tensor):
        out.append(value)
    elif depth > 8:
        return
    elif isinstance(value, dict):
        for v in value.values():
            _flatten_into(v, out, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _flatten_into(v, out, depth + 1)
    elif hasattr(value, "__dataclass_fields__"):
        for name in value.__dataclass_fields__:
            _flatten_into(getattr(value, name, None), out, depth + 1)


def _undispatched_copy(func: types.FunctionType) -> types.FunctionType:
    """A copy of ``func`` whose own ``has_torch_function`` checks are off.

    Calling it with the mode active records the ops inside ``func`` without
    re-dispatching ``func`` itself to the mode (which would recurse forever).
    """
    glb = dict(func.__globals__)
    for name in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
        if name in glb:
            glb[name] = _NO_GRAD_FALSE
    copy = types.FunctionType(func.__code__, glb, func.__name__, func.__defaults__, func.__closure__)
    copy.__kwdefaults__ = func.__kwdefaults__
    return copy
