"""What the recorder does for interventions and replayable captures (a mixin of :class:`Recorder`).

- ``CapturePlan.edits`` / ``module_edits``: an op's output (right after it is recorded,
  inside the mode's handler, so the edit's own ops are not logged) or a module call's
  output (in its forward hook, interception off) is replaced; the record then describes
  the edited tensor and keeps the value before the first edit (``original``).
- ``CapturePlan.read_values``: the values Python reads from tensors (``.item()``,
  ``int(t)``...) are noted on their records, so a replay can tell when an edit would have
  changed the path.
- The random-number states recorded before each op, CPU and CUDA.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from ..errors import InvalidArgumentError
from .calls import _flatten_output
from .module_calls import ModuleCall
from .records import OpRecord

_Tensor = torch.Tensor
_weakref = weakref.ref

# Tensor methods that hand a tensor's values to Python: the recorded path depends on them
_VALUE_READS = frozenset({"item", "tolist", "__int__", "__float__", "__index__", "__complex__"})


class InterventionHooks:
    """The recorder's intervention methods; they use the recorder's records, owners and plan."""

    def _edit_op(self, first: int, result: Any) -> Any:
        """Replace the outputs of the op just recorded (records ``first``...) that the plan edits."""
        edits = self.plan.edits
        for rec in self.records[first:]:
            fn = edits.get(rec.index)
            if fn is None:
                continue
            if rec.is_inplace:
                raise InvalidArgumentError(
                    f"{rec.func_name} (record {rec.index}) writes into its input in place, so its output cannot be "
                    "replaced: edit the layer that produced the input, or the module that runs this op."
                )
            old = rec.live_tensor()
            new = fn(old)
            self._substitute(rec, old, new, getattr(fn, "description", "an edit"))
            result = _swap_tensor(result, old, new)
        return result

    def _edit_module_output(self, call: ModuleCall, output: Any) -> Any:
        """A module call's edited output (or None), from the module's forward hook."""
        key = (call.address, call.pass_num)
        fn = self.plan.module_edits.get(key)
        if fn is None:
            return None
        for t in _flatten_output(output):
            rec = self._lookup(t)
            if rec is not None and rec.index < call.first_op:
                raise InvalidArgumentError(
                    f"Module {call.address!r} (call {call.pass_num}) returns a tensor it was given, unchanged, so its "
                    f"output is the value of an earlier layer ({rec.func_name}, used elsewhere too). Edit a module "
                    "that contains it, or the op that made the value (its label in lt.log_forward_pass(model, x))."
                )
        with torch._C.DisableTorchFunction():
            new = fn(output)
            old_leaves, new_leaves = _flatten_output(output), _flatten_output(new)
            for old, value in zip(old_leaves, new_leaves):
                rec = self._lookup(old)
                if rec is None or value is old:
                    continue
                self._substitute(rec, old, value, getattr(fn, "description", "an edit"), key)
        return new

    def _substitute(self, rec: OpRecord, old: torch.Tensor, new: torch.Tensor, what: str, module: Any = None) -> None:
        """Make ``rec`` describe the edited tensor ``new``; keep the value before the first edit as the original.

        A second edit of the same value (an outer module returning an edited inner output)
        applies to the edited value.
        """
        where = f"{what} on the output of {module[0]}:{module[1]}" if module is not None else what
        if rec.edit is None:
            rec.original = rec.activation if rec.activation is not None else old.detach()
            rec.edit = where
        else:
            rec.edit = f"{rec.edit}, then {where}"
        self._owner.pop(id(old), None)
        rec.activation = None
        rec.shape, rec.dtype, rec.requires_grad = tuple(new.shape), new.dtype, new.requires_grad
        rec.grad_fn_name = _grad_fn_name(new) if new.requires_grad else None
        rec.version = new._version
        rec.tensor_ref = _weakref(new)
        self._owner[id(new)] = rec
        if self._save_all or (self._save_some and rec.index in self.plan.save):
            self._save(rec, new)
        if self.plan.sink is not None:  # gradients: of the edited value, the one the model went on with
            self.plan.sink(rec)

    def _note_read(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """Run a Python read of a tensor's values (``.item()``...), and note the value on its record."""
        value = func(*args, **kwargs)
        t = args[0] if args else None
        rec = self._lookup(t) if isinstance(t, _Tensor) else None
        if rec is not None:
            rec.value_reads += ((name, value),)
        return value


def rng_states() -> Any:
    """The CPU random-number state, with every CUDA device's when CUDA is in use: ``(cpu, (cuda0, ...))``.

    Example:
        >>> cpu, cuda = rng_states()
        >>> cpu.dtype, cuda if not torch.cuda.is_initialized() else ()
        (torch.uint8, ())
    """
    cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() and torch.cuda.is_initialized() else ()
    return torch.get_rng_state(), cuda


def set_rng_states(state: Any) -> None:
    """Restore what :func:`rng_states` returned."""
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for device, value in enumerate(cuda):
        torch.cuda.set_rng_state(value, device)


def _swap_tensor(result: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    """``result`` with the tensor ``old`` replaced by ``new`` (a tensor, or a tuple/list/structseq of them)."""
    if result is old:
        return new
    if isinstance(result, (tuple, list)):
        items = [new if r is old else _swap_tensor(r, old, new) if isinstance(r, (tuple, list)) else r for r in result]
        if type(result) in (tuple, list):
            return type(result)(items)
        return type(result)(items)  # torch.return_types structseqs take one sequence
    return result


def _grad_fn_name(t: torch.Tensor) -> str | None:
    try:
        gf = t.grad_fn
    except RuntimeError:  # a no_grad view of a tensor changed in place: autograd refuses to describe it
        return None
    return type(gf).__name__ if gf is not None else None
