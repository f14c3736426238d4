"""The module hooks behind :class:`lens_train.Taps`, installed once and switched by a flag.

Every module with a role gets one forward pre-hook and one forward hook for the
lifetime of the ``Taps`` (so a ``torch.compile``d model is not recompiled each
step). Outside ``with taps:`` a hook returns after one attribute read. Roles:

* a module tap: its output is captured when the module returns;
* an op scope: the module contains tapped ops, so its call pushes an
  :class:`~lens_train.train.optaps.OpScope` for the duration of the call;
* a pauser: the module is called inside an op scope's module, so the scope
  pauses while it runs (its ops are not the scope's).

With edits (:mod:`lens_train.train.tap_edits`), a module's forward hook returns the
edited output and an op scope returns the op's result with the edited tensor in it.

A forward recomputed by activation checkpointing runs inside the backward pass
(``torch._C._current_graph_task_id() != -1``); the hooks ignore it, so taps are
neither duplicated nor overwritten, except that module edits are applied again when the
forward being recomputed was edited (also when backward runs after the ``with taps:`` block). Under ``nn.DataParallel`` the replicas' outputs
of one call are gathered into one pass (:mod:`lens_train.train.replicas`).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from .optaps import OpScope
from .replicas import GatheredValue, ReplicaTracker
from .selection import Selection
from ..errors import TapError
from .tap_edits import EditPlan
from .tap_values import ClonePolicy, TapValue

_task_id = torch._C._current_graph_task_id
_compiling = torch.compiler.is_compiling


class TapHooks:
    """Per-step storage of tapped values plus the hooks that fill it."""

    def __init__(self, selection: Selection, clone: str, save_gradients: bool,
                 replicas: ReplicaTracker | None = None) -> None:
        self.selection = selection
        self.replicas = replicas
        self._replica_calls: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        self.active = False
        self.save_gradients = save_gradients
        self.values: list[list[TapValue]] = [[] for _ in selection.specs]
        self.policies = [ClonePolicy(clone) for _ in selection.specs]
        self.scopes: dict[str, OpScope] = {}
        self.editor: EditPlan | None = None
        self._handles: list[Any] = []

    def capture(self, tap: int, value: Any, module: nn.Module | None = None, original: Any = None) -> None:
        """Store ``value`` as the next pass of tap number ``tap`` (``module``: the one that made it;
        ``original``: the value before an edit)."""
        self.values[tap].append(TapValue(value, self.policies[tap].should_clone(), self.save_gradients, original))

    def take(self, taps: list[int], value: Any, edit: bool = True) -> Any:
        """Edit ``value`` as the plan says, store it in every tap of ``taps``; returns the value to continue with."""
        editor = self.editor
        original = value
        if edit and editor is not None:
            value = editor.apply(taps, value, len(self.values[taps[0]]) + 1)
        kept = original if value is not original else None
        for i in taps:
            self.capture(i, value, None, kept)
        return value

    def capture_from(self, tap: int, value: Any, module: nn.Module) -> None:
        """Like :meth:`capture`, filing a ``DataParallel`` replica's output as its part of a pass."""
        replica = self.replicas.replica_of(module)
        if replica is None:
            self.capture(tap, value)
            return
        part = TapValue(value, self.policies[tap].should_clone(), self.save_gradients)
        with self._lock:  # replicas run in threads
            k = self._replica_calls.get((tap, replica), 0)
            self._replica_calls[tap, replica] = k + 1
            values = self.values[tap]
            while len(values) <= k:
                values.append(GatheredValue(self.replicas))
            values[k].add(replica, part)

    def uncapture(self, tap: int) -> bool:
        """Forget the latest pass of tap number ``tap``; returns whether that value was edited."""
        if self.values[tap]:
            return self.values[tap].pop().original is not None
        return False

    def new_step(self) -> None:
        """Forget the previous step's values (nothing of it stays alive)."""
        self.values = [[] for _ in self.selection.specs]
        self._replica_calls.clear()
        for scope in self.scopes.values():
            scope.reset()

    def install(self, modules: dict[str, nn.Module], pauses: dict[str, list[str]]) -> None:
        """Register one pre-hook and one hook on every module with a role."""
        module_taps: dict[str, list[int]] = {}
        wanted: dict[str, dict] = {}
        for i, spec in enumerate(self.selection.specs):
            if spec.kind == "module":
                module_taps.setdefault(spec.address, []).append(i)
            else:
                table = wanted.setdefault(spec.address, {})
                for layer_type, index, out_index in spec.op_keys:
                    table.setdefault((layer_type, index), {}).setdefault(out_index, []).append(i)
        self.scopes = {a: OpScope(a, {k: [(o, tuple(t)) for o, t in w.items()] for k, w in table.items()},
                                  self.take, self.uncapture) for a, table in wanted.items()}
        pausers: dict[str, list[OpScope]] = {}
        for scope_address, children in pauses.items():
            for child in children:
                if child != scope_address:
                    pausers.setdefault(child, []).append(self.scopes[scope_address])
        for address in {*module_taps, *self.scopes, *pausers}:
            pre, post = self._make_hooks(module_taps.get(address, []), self.scopes.get(address), pausers.get(address, []))
            module = modules[address]
            self._handles.append(module.register_forward_pre_hook(pre))
            self._handles.append(module.register_forward_hook(post, always_call=True))

    def remove(self) -> None:
        """Remove every hook; the model is as it was before."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.values = [[] for _ in self.selection.specs]

    def enter_root_call(self, address: str) -> None:
        """Start the scope of ``address`` for a call whose pre-hooks already ran."""
        scope = self.scopes.get(address)
        if scope is not None:
            scope.enter()

    def _make_hooks(self, taps: list[int], scope: OpScope | None, pausers: list[OpScope]) -> tuple[Any, Any]:
        capture = self.capture_from if self.replicas is not None else self.capture
        resumers = pausers[::-1]

        def pre(module: nn.Module, args: Any) -> None:
            if not self.active and self.editor is None:
                return
            if not _compiling() and _task_id() != -1:
                if scope is not None and self.editor is not None:
                    self._check_recompute(scope)
                return
            if not self.active:
                return
            for s in pausers:
                s.pause()
            if scope is not None:
                scope.enter()

        def post(module: nn.Module, args: Any, output: Any) -> Any:
            if not self.active and self.editor is None:
                return None
            if not _compiling() and _task_id() != -1:
                return self._recomputed(taps, output) if taps and output is not None else None
            if not self.active:
                if taps and self.editor.has_edits(taps):
                    self.editor.replay = False  # an unedited forward: its recomputation must stay unedited
                return None
            result = None
            if output is not None:  # None: the forward raised (this hook still runs to pop scopes)
                if self.editor is not None and taps:
                    result = self.take(taps, output)
                else:
                    for i in taps:
                        capture(i, output, module)
            if scope is not None:
                scope.exit()
            for s in resumers:
                s.resume()
            return result

        return pre, post

    def _recomputed(self, taps: list[int], output: Any) -> Any:
        """Activation checkpointing recomputes the forward inside backward: edit it the same way."""
        editor = self.editor
        if editor is None or not editor.replay or not editor.has_edits(taps):
            return None
        if editor.pass_specific(taps):
            raise TapError(
                f"An edit of {self.selection.specs[taps[0]].label!r} names one pass, and activation checkpointing "
                "recomputes this module inside backward, where passes are not counted. Edit every pass (drop the "
                "':n'), or leave this module out of checkpointing."
            )
        return editor.apply(taps, output, 0, watch=False)

    def _check_recompute(self, scope: OpScope) -> None:
        if self.editor.replay and self.editor.has_edits(scope.taps()):
            raise TapError(
                f"Op-level edits inside {scope.address or 'the model'!r} cannot be applied again when activation "
                "checkpointing recomputes it inside backward. Edit a module's output instead (its forward hook "
                "runs again), or leave this module out of checkpointing."
            )


def pause_map(index_modules: dict[str, nn.Module], log: Any, scope_addresses: set[str], clean: Any) -> dict[str, list[str]]:
    """For each op scope, the modules whose calls run inside it (static children and
    every module the example pass saw called directly by it)."""
    out: dict[str, list[str]] = {}
    for address in scope_addresses:
        module = index_modules[address]
        children = {f"{address}.{name}" if address else name for name, _ in module.named_children()}
        if log is not None:
            for mod in log.modules.values():
                for call in mod.calls:
                    parent = call["parent"].rpartition(":")[0] if call["parent"] else ""
                    if clean(parent) == address:
                        children.add(clean(mod.address))
        out[address] = sorted(c for c in children if c in index_modules)
    return out
