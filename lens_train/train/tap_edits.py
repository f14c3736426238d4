"""The edits of a :class:`lens_train.Taps`: which tapped values are replaced, when, and checks.

The hooks of :mod:`lens_train.train.hooks` hand each tapped value to
:meth:`EditPlan.apply` before the taps keep it; the value returned is the one the model
continues with (a module's forward hook returns it, an op's function mode returns it).
The plan is compiled once per resolution: tap number -> ``(pass, edit, label)``.

Aliasing check: an edit replaces one tensor with a new one. When the original shares
memory with a tensor the model writes in place later in the step (it is a view of a
tensor written later, or such a view is written), that write would have changed the
original but cannot reach the replacement, so the run would no longer be "the model
with this activation edited". The plan keeps the original's version counter at edit
time and :meth:`EditPlan.finish` raises when it moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InvalidArgumentError, TapError, UnsupportedModelError
from .edits import Edit, apply_edit, as_edit
from .replicas import find_data_parallel
from .selection import Selection, as_selector_list
from .structures import tensor_leaves
from .tap_values import _version

DURING = ("train", "eval", "all")
Entry = tuple[int | None, Edit, str]  # (pass number or None for every pass, edit, label for messages)


class EditPlan:
    """Edits compiled against a resolved :class:`Selection` (internal to ``lt.Taps``).

    Example:
        >>> import torch
        >>> from lens_train.train.edits import zero
        >>> plan = EditPlan({0: [(None, zero(), "fc")]}, torch.nn.Linear(1, 1), "all")
        >>> plan.apply([0], torch.ones(2), passes=1)
        tensor([0., 0.])
    """

    def __init__(self, entries: Mapping[int, Sequence[Entry]], root: nn.Module, during: str) -> None:
        self.entries = {i: tuple(e) for i, e in entries.items() if e}
        self.root = root
        self.during = during
        self.step = 0
        self.in_step = False
        self.replay = False
        self._written: list[tuple[str, list[torch.Tensor], list[int]]] = []

    def on(self) -> bool:
        """Whether edits apply now (``during`` against the model's training flag)."""
        if self.during == "all":
            return True
        return self.root.training == (self.during == "train")

    def has_edits(self, taps: Sequence[int]) -> bool:
        """Whether any of ``taps`` is edited (in some pass)."""
        return any(i in self.entries for i in taps)

    def pass_specific(self, taps: Sequence[int]) -> bool:
        """Whether an edit of ``taps`` names one pass."""
        return any(p is not None for i in taps for p, _, _ in self.entries.get(i, ()))

    def apply(self, taps: Sequence[int], value: Any, passes: int, watch: bool = True) -> Any:
        """The value the model continues with: ``value`` after every edit of ``taps`` for pass ``passes``
        (``watch``: check at the end of the step that the original is not written in place)."""
        if not self.on():
            if watch:
                self.replay = False
            return value
        if watch:
            self.replay = True  # activation checkpointing recomputes this forward with the edits
        original = value
        for i in taps:
            for pass_num, edit, label in self.entries.get(i, ()):
                if pass_num is None or pass_num == passes:
                    value = apply_edit(edit, value, label, self.step)
                    where = label
        if value is not original and self.in_step and watch:
            self._watch(where, original, value)
        return value

    def _watch(self, label: str, original: Any, edited: Any) -> None:
        kept = {_storage(t) for t in tensor_leaves(edited)}
        leaves = [t for t in tensor_leaves(original) if _storage(t) not in kept]
        if leaves:
            self._written.append((label, leaves, [_version(t) for t in leaves]))

    def begin(self, step: int) -> None:
        """A ``with taps:`` step starts."""
        self.step = step
        self.in_step = True
        self._written.clear()

    def finish(self, check: bool) -> None:
        """The step ended: raise if the model wrote in place into memory an edit had replaced."""
        written, self._written = self._written, []
        self.in_step = False
        if not check:
            return
        for label, leaves, versions in written:
            if any(_version(t) != v for t, v in zip(leaves, versions)):
                raise TapError(
                    f"The model wrote in place into the original value of the edited layer {label!r} after the edit "
                    "(it is a view of a tensor changed later, or shares its memory), so that write did not reach the "
                    "edited value and this step is not the model with the edit applied. Edit a layer that is not a "
                    "view (the op or module that computes the tensor, or one after the in-place write), or make the "
                    "model's in-place op out of place (e.g. nn.ReLU(inplace=False))."
                )


def compile_plan(selection: Selection, edits: Mapping[Any, Edit], root: nn.Module, during: str) -> EditPlan | None:
    """The :class:`EditPlan` of ``edits`` (keys are selectors the selection resolved), or None if empty.

    Example:
        >>> import torch, lens_train as lt
        >>> taps = lt.Taps(torch.nn.Sequential(torch.nn.Linear(2, 2)), ["0"])
        >>> compile_plan(taps.selection, {"0": lt.edits.zero()}, taps.model, "train").entries
        {0: ((None, Zero(), '0'),)}
    """
    if not edits:
        return None
    entries: dict[int, list[Entry]] = {}
    for key, edit in edits.items():
        for i in selection.keys[key]:
            spec = selection.specs[i]
            entries.setdefault(i, []).append((spec.pass_num, edit, spec.label))
    return EditPlan(entries, root, during)


def normalize_edits(edits: Mapping[Any, Any] | None, model: nn.Module) -> dict[Any, Edit]:
    """``{selector: Edit}`` from the user's mapping (each spec through :func:`as_edit`).

    Example:
        >>> import torch
        >>> normalize_edits({"fc": "zero"}, torch.nn.Linear(1, 1))
        {'fc': Zero()}
    """
    if edits is None:
        return {}
    if not isinstance(edits, Mapping):
        raise InvalidArgumentError(f"edits must be a dict {{selector: edit}}, got {type(edits).__name__} {edits!r:.60}. "
                                   "Example: lt.Taps(model, edits={'blocks.1': 'zero'}) or taps.edit({'fc': lt.edits.mean()}).")
    if edits and find_data_parallel(model) is not None:
        raise UnsupportedModelError(
            "Edits are not supported under nn.DataParallel: each replica would edit its own chunk of the batch "
            "(a batch mean would be a chunk mean). Use DistributedDataParallel, or edit the model unwrapped."
        )
    out = {}
    for key, spec in edits.items():
        if not (isinstance(key, str) or callable(key)):
            raise InvalidArgumentError(f"An edit's selector must be a layer name or a predicate, got {key!r}. "
                                       "Example: edits={'blocks.1.mlp': 'zero', 'relu_5:2': lt.edits.noise(0.1)}.")
        out[key] = as_edit(spec)
    return out


def with_edited(selectors: Any, edits: Mapping[Any, Edit]) -> list[Any]:
    """The tap selectors plus every edited selector not among them (an edited layer is tapped).

    Example:
        >>> with_edited(["fc"], {"conv": None, "fc": None})
        ['fc', 'conv']
    """
    base = as_selector_list(selectors) if selectors is not None else []
    return base + [k for k in edits if k not in base]


def _storage(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, some subclasses)
        return id(t)
