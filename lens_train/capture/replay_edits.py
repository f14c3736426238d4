"""Recompute a replayable capture downstream of edited values, from the saved activations.

A capture made with ``log_forward_pass(..., replayable=True)`` keeps its op records: the
call template of every op (its arguments, with each tensor that came from another op
replaced by that op's record), every activation, the random-number state before every
op, and the values Python read from tensors (``if t:``, ``.item()``, ``int(t)``...).
:func:`replay_records` re-runs only the ops that an edit reaches, in the order they ran,
on the saved values of everything else (the op runner is the replay validator's).

The recorded path stays valid as long as every value Python read is the same and every
recomputed tensor has its recorded shape and dtype; otherwise the model might have taken
another branch, read another scalar or routed to other experts, and
:class:`~lens_train.errors.DifferentPathError` says which op saw the change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DifferentPathError, InvalidArgumentError
from .records import OpRecord
from .recorder import HIDDEN_BUFFER_WRITERS
from .validation import REPLAY_EXEMPTIONS, _cuda_devices, _replay


@dataclass
class ReplayState:
    """What ``replayable=True`` keeps on a log (``log.replay_state``) to recompute it."""

    records: list[OpRecord]
    positions: dict[int, int]  # record index -> position in log.layers (data-path records)
    params: list[tuple[str, torch.Tensor, int]]  # (address, parameter, version at capture)
    model: nn.Module  # for fallback="rerun"; held strongly (the model does not refer to its logs: no cycle)
    input_args: Any
    input_kwargs: Any
    seed: int

    @classmethod
    def of(cls, records: list[OpRecord], log: Any, model: nn.Module, input_args: Any, input_kwargs: Any,
           seed: int, params: list[tuple[str, nn.Parameter]]) -> ReplayState:
        """The state of a capture just built (``log`` is its ModelLog, fresh from the capture)."""
        positions = {rec.index: i for i, rec in enumerate(log._key_index.source.data)}
        return cls(records, positions, [(a, p, p._version) for a, p in params], model, input_args,
                   input_kwargs, seed)

    def check_parameters(self) -> None:
        """Raise when a parameter was changed in place since the capture (an optimizer step...)."""
        changed = [a for a, p, v in self.params if p._version != v]
        if changed:
            raise InvalidArgumentError(
                f"Parameters changed since this log was captured ({', '.join(changed[:3])}"
                f"{'...' if len(changed) > 3 else ''}), so its saved values are not what the model computes now. "
                "Capture again: lt.log_forward_pass(model, x, replayable=True), then replay_with."
            )


def replay_records(state: ReplayState, edits: Mapping[int, Callable[[torch.Tensor], torch.Tensor]]
                   ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """(new value of every record the edits reach, value before the edit of every edited record).

    ``edits`` maps record indices to ``fn(value) -> value``; an edited record downstream of
    another edit gets its recomputed value edited.
    """
    state.check_parameters()
    records = state.records
    new: dict[int, torch.Tensor] = {}
    before: dict[int, torch.Tensor] = {}
    if not edits:
        return new, before
    buffers: dict[str, torch.Tensor] = {}  # buffer address -> its value after a recomputed in-kernel update
    # ops replay with their recorded random states: the caller's random streams are put back after
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
        for rec in records[min(edits):]:
            reached = any(p in new for p, _ in rec.parents)
            fn = edits.get(rec.index)
            if rec.is_buffer and rec.buffer_address in buffers:  # a read after a recomputed update
                new[rec.index] = buffers[rec.buffer_address].clone()
                continue
            if fn is None and not reached:
                continue
            value = _recompute(rec, records, new, buffers) if reached else rec.activation
            if fn is not None:
                if value is None:
                    raise InvalidArgumentError(f"Record {rec.index} ({rec.func_name}) has no saved value to edit.")
                before[rec.index] = value
                value = fn(value)
            new[rec.index] = value.detach()
    return new, before


# Ops whose output values do not depend on their inputs' values (only on shapes, which a replay
# checks): a reached one gives a copy of its recorded value (MoE layers fill an empty_like in place).
_SHAPE_ONLY = frozenset({"empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided"})


def _recompute(rec: OpRecord, records: list[OpRecord], new: dict[int, torch.Tensor],
               buffers: dict[str, torch.Tensor]) -> torch.Tensor:
    if rec.is_output:
        return new[rec.parents[0][0]]
    if rec.func_name in _SHAPE_ONLY and rec.activation is not None:
        return rec.activation.clone()
    if rec.func is None or rec.call_template is None or rec.func_name in REPLAY_EXEMPTIONS:
        raise DifferentPathError(
            f"An edited value reaches {rec.func_name} (record {rec.index}), which cannot be re-run from saved values "
            f"({REPLAY_EXEMPTIONS.get(rec.func_name, 'made outside torch')}). Use fallback='rerun' to run the model again."
        )
    copies: dict[int, torch.Tensor] = {}
    value = _replay(rec, records, new, copies)
    _check_path(rec, value)
    if rec.layer_type in HIDDEN_BUFFER_WRITERS:  # its kernel updated running statistics from the new values
        for index, tensor in copies.items():
            if records[index].is_buffer and records[index].buffer_address is not None:
                buffers[records[index].buffer_address] = tensor
    return value


def _check_path(rec: OpRecord, value: torch.Tensor) -> None:
    """Raise when the recomputed value would have sent the model down another path."""
    if tuple(value.shape) != rec.shape or value.dtype != rec.dtype:
        _different(rec, f"its shape/dtype becomes {tuple(value.shape)} {value.dtype} (recorded {rec.shape} {rec.dtype})")
    if rec.bool_values and bool(value) != rec.bool_values[0]:
        _different(rec, f"a Python condition on it becomes {bool(value)} (recorded {rec.bool_values[0]})")
    for name, recorded in rec.value_reads:
        now = getattr(value, name)()
        if now != recorded:
            _different(rec, f"Python read {name}() = {now!r} from it (recorded {recorded!r})")


def _different(rec: OpRecord, what: str) -> None:
    raise DifferentPathError(
        f"The edit changes the path the model takes: at {rec.func_name} (record {rec.index}) {what}. The saved graph "
        "no longer describes the edited run; pass fallback='rerun' to run the model again with the edits."
    )
