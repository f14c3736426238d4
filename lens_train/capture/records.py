"""The raw record of one tensor produced during a captured forward pass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from math import prod
from typing import Any, Callable

import torch

# One frame of a call stack as captured: (code object, line number). Turned into
# readable records only when printed, so capture never reads source files.
RawFrame = tuple[Any, int]


@dataclass(slots=True, eq=False)
class OpRecord:
    """One tensor produced by one operation (an op with k tensor outputs gives k records)."""

    index: int
    func_name: str
    layer_type: str
    func: Callable[..., Any] | None
    op_id: int
    output_index: int
    parents: list[tuple[int, Any]]
    module_stack: tuple[tuple[str, int], ...]
    callsite: Any  # raw walk during the pass; then the number of its call-site key in this capture (callsites.py)
    frames: tuple[RawFrame, ...] | None  # None: callsite still raw (resolved after the pass)
    param_ids: tuple[int, ...] = ()
    shape: tuple[int, ...] = ()
    dtype: Any = None
    device: Any = "cpu"
    requires_grad: bool = False
    grad_fn_name: str | None = None
    time_s: float = 0.0
    is_input: bool = False
    is_output: bool = False
    is_buffer: bool = False
    buffer_address: str | None = None
    is_internally_generated: bool = False
    is_inplace: bool = False
    source_name: str | None = None
    buffer_write: str | None = None  # address of the buffer an in-place op wrote into
    framework: bool = False  # run inside a sharding wrapper's hooks (FSDP's all-gathers)
    activation: Any = None
    transformed_activation: Any = None
    version: int = 0
    tensor_ref: Any = None
    # Rarely filled: tuples, replaced (not appended to) so no list is allocated per record.
    output_of_modules: tuple[tuple[str, int], ...] = ()
    bool_values: tuple[bool, ...] = ()
    branch_starts: tuple[int, ...] = ()
    rng_state: Any = None
    call_template: Any = None
    replay_context: Any = None  # (grad enabled, ((device type, autocast dtype), ...)) with call templates
    value_reads: tuple[tuple[str, Any], ...] = ()  # (method, value) Python read from it (.item()...), replayable only
    edit: str | None = None  # the intervention that replaced this tensor's value (lt.intervene)
    original: Any = None  # the value before that intervention

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's elements (worked out from its shape and dtype when asked for)."""
        return prod(self.shape) * self.dtype.itemsize if isinstance(self.dtype, torch.dtype) else 0

    def live_tensor(self) -> Any:
        """The tensor this record describes, if it is still alive."""
        return self.tensor_ref() if self.tensor_ref is not None else None


@dataclass(frozen=True, slots=True)
class TensorArg:
    """Placeholder for a tensor argument inside a recorded call template."""

    record_index: int | None
    constant: Any = None


@dataclass(frozen=True, slots=True)
class ViewBaseTemplate:
    """Call template of an in-place op seen from its view's base: the op, and where the view sits."""

    template: Any
    size: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


def stored_prototype(cls: type, n_args: int) -> Any:
    """``(names, prototype)`` for making slots dataclass ``cls`` without its ``__init__`` (the C hot path).

    ``names`` are the first ``n_args`` fields (the arguments the C side passes, in order); the
    prototype is an instance holding every other field's default, copied into new instances.
    The prototype is None when ``__init__`` does more than store its arguments (a ``__post_init__``,
    a default factory past the passed arguments): the C side then calls ``cls``.

    Example:
        >>> names, proto = stored_prototype(TensorArg, 1)
        >>> names, proto.constant
        (('record_index',), None)
    """
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields[:n_args])
    stores_only = not hasattr(cls, "__post_init__") and all(
        f.init and f.default_factory is dataclasses.MISSING for f in fields[n_args:])
    return names, (cls(*[None] * n_args) if stores_only else None)
