"""One pass of one layer, as users see it: ``log["conv2d_3_7"]``."""

from __future__ import annotations

import copy
import linecache
import threading
from dataclasses import dataclass
from typing import Any

import torch

from .printing import format_layer


@dataclass(frozen=True, slots=True)
class FrameInfo:
    """One frame of the Python call stack that led to an operation."""

    file: str
    line: int
    function: str

    @property
    def code_context(self) -> str:
        """The source line, read only when asked for."""
        return linecache.getline(self.file, self.line).strip()

    def __str__(self) -> str:
        return f"{self.file}:{self.line} in {self.function}: {self.code_context}"


@dataclass(eq=False, slots=True)
class LayerLog:
    """Everything logged about one pass of one layer.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()), torch.ones(1, 3))
        >>> log["relu_1_2"].parent_layers, log["relu_1_2"].tensor_shape
        (['linear_1_1'], (1, 2))
    """

    layer_label: str
    layer_label_no_pass: str
    layer_label_short: str
    layer_type: str
    layer_type_num: int
    layer_index: int
    operation_index: int
    pass_num: int
    num_passes: int
    func_name: str
    grad_fn_name: str | None
    tensor_shape: tuple[int, ...]
    tensor_dtype: torch.dtype | None
    tensor_fsize: int
    device: str
    requires_grad: bool
    tensor_contents: torch.Tensor | None
    transformed_activation: Any
    parent_layers: list[str]
    parent_layer_arg_locs: dict[str, list[Any]]
    child_layers: list[str]
    containing_modules: list[str]
    module_outputs: list[str]
    parent_params: list[tuple[int, ...]]
    num_params: int
    param_bytes: int
    param_addresses: list[str]
    time_s: float
    is_input: bool
    is_output: bool
    is_buffer: bool
    buffer_address: str | None
    is_internally_generated: bool
    is_inplace: bool
    output_index: int
    bool_values: list[bool]
    branch_start_layers: list[str]
    pass_labels: list[str]
    raw_frames: tuple[Any, ...] = ()
    # index among the ops of this type run directly by this module call, bookkeeping
    # included: what lt.Taps counts at run time (-1: not an op)
    op_index_in_call: int = -1
    gradient: torch.Tensor | None = None
    # set by an intervention (lt.intervene, log.replay_with): what changed this value, and the value before
    edit: str | None = None
    original_activation: torch.Tensor | None = None
    _materialize: Any = None
    # lookup keys: given, or read from the log's LayerKeys at this position on first use
    _lookup_keys: list[str | int] | None = None
    _key_index: Any = None
    _key_pos: int = -1

    def __getattr__(self, name: str) -> Any:
        # only reached for a field not set: another thread may be filling this layer right now
        # (PendingLayerLog.fill switches the class first); wait for it, then read again
        if name.startswith("__") or name not in _FIELDS:
            raise AttributeError(f"'LayerLog' object has no attribute {name!r}")
        with FILL_LOCK:
            pass
        return object.__getattribute__(self, name)

    @property
    def lookup_keys(self) -> list[str | int]:
        """Every key ``log[...]`` resolves to this pass (labels, module addresses, ints)."""
        if self._lookup_keys is None:
            self._lookup_keys = self._key_index.of(self._key_pos) if self._key_index is not None else []
        return self._lookup_keys

    @lookup_keys.setter
    def lookup_keys(self, keys: list[str | int]) -> None:
        self._lookup_keys = list(keys)

    @property
    def activation(self) -> torch.Tensor | None:
        """Alias of ``tensor_contents``: the saved output of this pass (None if not saved)."""
        return self.tensor_contents

    @property
    def is_saved(self) -> bool:
        """Whether this pass's activation was saved."""
        return self.tensor_contents is not None or self._materialize is not None

    @property
    def is_conditional(self) -> bool:
        """Whether this tensor decided a Python ``if``/``while`` (was converted to bool)."""
        return bool(self.bool_values)

    @property
    def bottom_level_module_output(self) -> str | None:
        """The innermost module call whose output this tensor is (``"fc:2"``), if any."""
        return self.module_outputs[0] if self.module_outputs else None

    @property
    def computed_inside_module(self) -> str | None:
        """The innermost module call that ran this op, if any."""
        return self.containing_modules[-1] if self.containing_modules else None

    @property
    def func_call_stack(self) -> list[FrameInfo]:
        """The user-code frames (innermost first) that led to this op."""
        # captured frames are (code, line); frames read back from a bundle are FrameInfo already
        return [f if isinstance(f, FrameInfo) else FrameInfo(f[0].co_filename, f[1], f[0].co_name) for f in self.raw_frames]

    def materialize_activation(self) -> torch.Tensor | None:
        """The saved activation, read from disk first when the log was loaded lazily."""
        if self.tensor_contents is None and self._materialize is not None:
            self.tensor_contents = self._materialize(self)
        return self.tensor_contents

    def __str__(self) -> str:
        return format_layer(self)

    def __repr__(self) -> str:
        return format_layer(self)


_FIELDS = frozenset(LayerLog.__dataclass_fields__)
# Held while a pending layer is filled (lens_train.capture.build.LayerSource.fill).
FILL_LOCK = threading.RLock()
# The fields a capture sets when it creates a layer; the others wait in its log's LayerSource.
PENDING_FIELDS = ("layer_label", "tensor_contents", "transformed_activation", "gradient", "original_activation",
                  "_materialize", "_lookup_keys", "_key_index", "_key_pos")


class PendingLayerLog(LayerLog):
    """A :class:`LayerLog` fresh from a capture: only :data:`PENDING_FIELDS` are set.

    Reading or writing any other field fills every field from the log's source
    (``layer._key_index.source``, see :class:`lens_train.capture.build.LayerSource`) and
    turns the object into a plain ``LayerLog``: a capture does not pay to build the lists
    of layers nobody reads.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:  # only reached for a field not set yet
        if name.startswith("__") or name in PENDING_FIELDS:
            raise AttributeError(f"'LayerLog' object has no attribute {name!r}")
        self._key_index.source.fill(self)
        return getattr(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in PENDING_FIELDS:  # filled first, so this write is the one that stays
            self._key_index.source.fill(self)
        object.__setattr__(self, name, value)

    def __copy__(self) -> LayerLog:
        self._key_index.source.fill(self)
        return copy.copy(self)

    def __deepcopy__(self, memo: dict) -> LayerLog:
        self._key_index.source.fill(self)
        return copy.deepcopy(self, memo)

    def __reduce_ex__(self, protocol: Any) -> Any:
        self._key_index.source.fill(self)
        return self.__reduce_ex__(protocol)
