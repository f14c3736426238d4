"""``lt.Taps``: graph-connected activations of the real training forward pass, every step."""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ..arguments import check_bool
from ..capture.api import get_model_metadata, preserved_buffers
from ..capture.inputs import normalize_inputs
from ..capture.scoping import interrupt_guard, release_mode_frames
from ..errors import (
    InvalidArgumentError,
    LayerNotFoundError,
    LensTrainError,
    TapError,
    UnsupportedModelError,
    suggestion_text,
)
from .hooks import TapHooks, pause_map
from .replicas import ReplicaTracker, find_data_parallel
from .selection import LISTING, ModuleIndex, Resolver, Selection, as_selector_list, clean_name, is_compiled, split_pass
from .structures import zip_tensors
from .tap_edits import DURING, compile_plan, normalize_edits, with_edited

_PASSES = ("error", "list", "stack", "first", "last")


class Taps:
    """Taps on modules and ops of ``model``, filled by every forward pass run inside ``with taps:``.

    Args:
        model: the model being trained (DDP / DataParallel / ``torch.compile`` wrappers welcome;
            under ``nn.DataParallel`` a module tap is the replicas' outputs gathered along
            the batch dim, one value per call).
        layers: a name, a predicate ``(address, module) -> bool``, or a list of them (may be
            left out when ``edits`` names the layers). Names
            are module addresses (``"layer2"``, a unique suffix, ``"fc:2"`` for one call),
            op labels from :func:`lens_train.log_forward_pass` (``"relu_5_12"``, ``"relu_5"``,
            ``"linear_1_1:2"``) or globs (``"blocks.*.attn"``: ``taps[glob]`` is a dict).
        example_input: positional input(s) for one example forward pass that resolves op
            labels now; without it op labels are resolved on the first step.
        passes: what ``taps[name]`` gives when the layer ran several times in the step:
            ``"error"``, ``"list"``, ``"stack"``, ``"first"`` or ``"last"``.
        missing: ``"error"`` or ``"skip"`` (``taps[name]`` is None, ``items()`` leaves it
            out) for a layer that did not run in the step.
        save_gradients: keep each tap's gradient, read by :meth:`grad` after ``backward()``.
        clone: ``"auto"`` (clone at tap time only for values rewritten in place later in the
            step, learned on the first step), ``"always"`` or ``"never"``.
        example_kwargs: keyword inputs for the example pass.
        edits: ``{selector: edit}``: replace these activations inside the step (see
            :meth:`edit`); an edited layer is tapped too, and ``taps[name]`` is its edited value.
        during: when edits apply: ``"train"`` (the model is in training mode), ``"eval"``
            or ``"all"``.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> taps = lt.Taps(model, ["0", "1"])
        >>> with taps:
        ...     out = model(torch.randn(3, 4))
        >>> taps["1"].shape, taps["1"].requires_grad
        (torch.Size([3, 8]), True)
    """

    def __init__(self, model: nn.Module, layers: Any = None, example_input: Any = None, passes: str = "error",
                 missing: str = "error", save_gradients: bool = False, clone: str = "auto",
                 example_kwargs: Mapping[str, Any] | None = None, edits: Mapping[Any, Any] | None = None,
                 during: str = "train") -> None:
        _check_choice("passes", passes, _PASSES)
        _check_choice("missing", missing, ("error", "skip"))
        _check_choice("clone", clone, ("auto", "always", "never"))
        _check_choice("during", during, DURING)
        check_bool("save_gradients", save_gradients, "lt.Taps(model, ['layer2'], save_gradients=True)")
        self.model = model
        self.passes, self.missing, self.save_gradients, self.clone = passes, missing, bool(save_gradients), clone
        self.during = during
        self.step = 0
        self._index = ModuleIndex(model)
        self._edits = normalize_edits(edits, model)
        self._selectors = with_edited(None if layers is None and self._edits else layers, self._edits)
        self._log: Any = None
        self._trained_step = False
        self._hooks: TapHooks | None = None
        self._names: list[tuple[Any, int]] = []
        self._cache: dict[tuple[int, int | None, bool], Any] = {}
        self._active = False
        self._deferred: Any = None
        self._owned: list[Any] = []  # hooks and handles to remove, also when this object is collected
        self._finalizer = weakref.finalize(self, _cleanup, self._owned)
        try:
            self._setup(example_input, example_kwargs)
        except BaseException:  # an error or Ctrl-C while building leaves nothing installed
            self.remove()
            raise

    # -- resolution -----------------------------------------------------------------------
    def _setup(self, example_input: Any, example_kwargs: Any) -> None:
        needs_log = Resolver(self._index, None).needs_log(self._selectors)
        if needs_log:
            self._check_eager()
        if needs_log and example_input is None and example_kwargs is None and self._log is None:
            Resolver(self._index, None).check_deferrable(self._selectors)
            with interrupt_guard():
                self._deferred = self._index.root.register_forward_pre_hook(_weak_method(self._first_step),
                                                                            with_kwargs=True)
                self._owned.append(self._deferred)
        else:
            self._resolve(example_input, example_kwargs, needs_log)

    def _resolve(self, input_args: Any, input_kwargs: Any, needs_log: bool) -> None:
        root = self._index.root
        known = self._log
        log_fn = (lambda: known if known is not None else _example_log(root, input_args, input_kwargs)) \
            if needs_log else None
        resolver = Resolver(self._index, log_fn)
        selection = resolver.resolve(self._selectors)
        self._log = resolver._log if self._edits else None  # kept to resolve new edits without an example
        scopes = {s.address for s in selection.specs if s.kind == "op"}
        pauses = pause_map(self._index.modules, resolver._log, scopes, clean_name) if scopes else {}
        wrapper = find_data_parallel(self.model)
        replicas = ReplicaTracker(wrapper) if wrapper is not None else None
        if replicas is not None:
            self._owned.append(replicas)
        hooks = TapHooks(selection, self.clone, self.save_gradients, replicas)
        hooks.editor = compile_plan(selection, self._edits, root, self.during)
        with interrupt_guard():
            self._owned.append(hooks)
            hooks.install(self._index.modules, pauses)
        hooks.active = self._active
        self._hooks = hooks
        self._names = _display_names(selection, self._selectors)

    def _first_step(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._active or self._hooks is not None or self._deferred is None:
            return
        deferred, self._deferred = self._deferred, None  # None also stops re-entry from the example pass
        try:
            self._resolve(args, kwargs, True)
        except LensTrainError as err:
            self._deferred = deferred  # stay unresolved: every later step raises the same error
            raise type(err)(
                f"{err} (lt.Taps got no example_input, so op labels are resolved on the first forward pass "
                "inside `with taps:`; pass example_input=x to lt.Taps to check every name when it is built.)"
            ) from None
        deferred.remove()
        if self._hooks.editor is not None:
            self._hooks.editor.begin(self.step)
        self._hooks.enter_root_call("")

    def _check_eager(self) -> None:
        if isinstance(self.model, nn.DataParallel) or is_compiled(self.model):
            names = [s for s in self._selectors if isinstance(s, str) and Resolver(self._index, None).needs_log([s])]
            kind = "nn.DataParallel runs replicas in threads" if isinstance(self.model, nn.DataParallel) else \
                "torch.compile'd code runs outside op interception"
            raise UnsupportedModelError(
                f"{names} are not module addresses of this model, and op-level taps cannot work here: {kind}. "
                f"Tap module outputs instead." + suggestion_text(str(names[0]), self._index.addresses(), LISTING)
            )

    @property
    def selection(self) -> Selection | None:
        """The resolved plan (None until op labels are resolved on the first step)."""
        return self._hooks.selection if self._hooks is not None else None

    # -- the step -------------------------------------------------------------------------
    def __enter__(self) -> Taps:
        if self._active:
            raise TapError("This Taps is already active; `with taps:` blocks cannot be nested.")
        self._cache.clear()
        self._trained_step = self._index.root.training
        if self._hooks is not None:
            self._hooks.new_step()
            self._hooks.active = True
            if self._hooks.editor is not None:
                self._hooks.editor.begin(self.step)
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self._active = False
        if self._trained_step:
            self.step += 1
        hooks = self._hooks
        if hooks is None:
            return
        hooks.active = False
        with interrupt_guard():  # a Ctrl-C must not leave a scope's function mode on torch's stack
            release_mode_frames(exc[2] if len(exc) > 2 else None)
            for scope in hooks.scopes.values():
                scope.reset()
        for i, spec in enumerate(hooks.selection.specs):
            for value in hooks.values[i]:
                try:  # settle clones now so they are freed; errors surface when the tap is read
                    value.resolve(hooks.policies[i], spec.label)
                except TapError:
                    pass
        if hooks.editor is not None:
            hooks.editor.finish(check=exc[0] is None)

    # -- edits ----------------------------------------------------------------------------
    def edit(self, edits: Mapping[Any, Any], during: str | None = None) -> None:
        """Replace the edits: ``{selector: edit}`` from now on (``{}`` removes them all).

        Inside ``with taps:`` the model continues with the edited value, graph-connected:
        outputs and gradients are those of a forward hook returning the edited value
        (module selectors) or of the model's code computing it (op labels). A selector
        is anything ``lt.Taps`` accepts (``"layer2"``, ``"fc:2"`` for one pass, op labels,
        globs); an edit is anything :func:`lt.edits.as_edit <lens_train.train.edits.as_edit>`
        takes: ``"zero"``, ``"mean"``, ``"noise"``, ``"detach"``, an ``lt.edits`` object, a tensor
        (the replacement value) or a callable ``x -> x`` / ``(x, step) -> x``, where ``step`` is
        :attr:`step`. ``taps[name]`` gives the edited value, :meth:`original` the value before.

        Args:
            edits: the new edits.
            during: change when edits apply (``"train"``, ``"eval"``, ``"all"``).

        Example:
            >>> import torch, lens_train as lt
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
            >>> taps = lt.Taps(model, ["1"])
            >>> taps.edit({"0": "zero"})
            >>> with taps:
            ...     out = model(torch.ones(3, 2))
            >>> torch.equal(out, model[1](torch.zeros(3, 2))), taps["0"].abs().sum().item()
            (True, 0.0)
        """
        if self._active:
            raise TapError("Change edits between steps, not inside `with taps:`: call taps.edit({...}) before the block.")
        if during is not None:
            _check_choice("during", during, DURING)
            self.during = during
        self._edits = normalize_edits(edits, self.model)
        selectors = with_edited(self._selectors, self._edits)
        if selectors != self._selectors or self._deferred is not None:
            self._selectors = selectors
            self._reinstall()
        elif self._hooks is not None:
            self._hooks.editor = compile_plan(self._hooks.selection, self._edits, self._index.root, self.during)

    def clear_edits(self) -> None:
        """Remove every edit (the layers stay tapped)."""
        self.edit({})

    @property
    def edits(self) -> dict[Any, Any]:
        """The current edits, normalised (``{selector: Edit}``)."""
        return dict(self._edits)

    def original(self, key: Any) -> Any:
        """The value of an edited layer before its edit, in this step (the value itself if not edited).

        Example:
            >>> import torch, lens_train as lt
            >>> taps = lt.Taps(torch.nn.Linear(2, 2), edits={"": "zero"}, during="all")
            >>> with taps:
            ...     _ = taps.model(torch.ones(1, 2))
            >>> taps[""].abs().sum().item() == 0, taps.original("").abs().sum().item() > 0
            (True, True)
        """
        return self._read(key, grad=False, original=True)

    def _reinstall(self) -> None:
        with interrupt_guard():
            self._cache.clear()
            _cleanup(self._owned)
            self._hooks, self._deferred = None, None
        try:
            self._setup(None, None)
        except BaseException:
            self.remove()
            raise

    def clear(self) -> None:
        """Drop the values of the last step now (they are dropped at the next step anyway)."""
        self._cache.clear()
        if self._hooks is not None:
            self._hooks.new_step()

    def remove(self) -> None:
        """Remove every hook this ``Taps`` installed; the model is left as it was."""
        with interrupt_guard():
            self.clear()
            _cleanup(self._owned)
            self._deferred = None
            self._finalizer.detach()  # nothing left to do when collected

    # -- reading --------------------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return self._read(key, grad=False)

    def grad(self, key: Any) -> Any:
        """The gradient of a tap's value after ``backward()`` (needs ``save_gradients=True``).

        Example:
            >>> import torch, lens_train as lt
            >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())
            >>> taps = lt.Taps(model, "0", save_gradients=True)
            >>> with taps:
            ...     model(torch.ones(1, 2)).sum().backward()
            >>> taps.grad("0").shape
            torch.Size([1, 2])
        """
        if not self.save_gradients:
            raise InvalidArgumentError(f"taps.grad({key!r}) needs lt.Taps(..., save_gradients=True).")
        return self._read(key, grad=True)

    def get(self, key: Any, default: Any = None) -> Any:
        """``taps[key]``, or ``default`` when the layer did not run this step."""
        value = self._read(key, grad=False, quiet=True)
        return default if value is None else value

    def keys(self) -> list[Any]:
        """The names of the individual taps (a glob or predicate contributes each match)."""
        self._require_resolved()
        return [name for name, _ in self._names]

    def items(self) -> Iterator[tuple[Any, Any]]:
        """``(name, value)`` of every tap that ran this step."""
        self._require_resolved()
        for name, i in self._names:
            value = self._value(i, None, grad=False)
            if value is not None:
                yield name, value

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._names) if self._hooks is not None else len(self._selectors)

    def __contains__(self, key: object) -> bool:
        try:
            return self._read(key, grad=False, quiet=True) is not None
        except LayerNotFoundError:
            return False

    def num_passes(self, key: Any) -> int:
        """How many times the tapped layer ran in this step."""
        specs, _, _ = self._lookup(key)
        return len(self._hooks.values[specs[0]])

    def __repr__(self) -> str:
        names = [n for n, _ in self._names] if self._hooks is not None else self._selectors
        edits = f", edits={self._edits!r}, during={self.during!r}" if self._edits else ""
        return f"Taps({names!r}, passes={self.passes!r}, missing={self.missing!r}{edits})"

    def _read(self, key: Any, grad: bool, quiet: bool = False, original: bool = False) -> Any:
        specs, grouped, pass_num = self._lookup(key)
        if grouped:
            found = {self._hooks.selection.specs[i].label: self._value(i, pass_num, grad, quiet, original)
                     for i in specs}
            return {k: v for k, v in found.items() if v is not None}
        return self._value(specs[0], pass_num, grad, quiet, original)

    def _require_resolved(self) -> None:
        if self._hooks is None:
            raise TapError(
                "These taps name op labels and resolve them on the first forward pass inside `with taps:`; "
                "none has run yet. Run a step first, or pass example_input= to lt.Taps."
            )

    def _lookup(self, key: Any) -> tuple[tuple[int, ...], bool, int | None]:
        self._require_resolved()
        sel = self._hooks.selection
        if key in sel.keys:
            return sel.keys[key], key in sel.grouped, None
        if isinstance(key, str):
            base, pass_num = split_pass(key)
            for candidate in (base, clean_name(base)):
                if pass_num is not None and candidate in sel.keys and candidate not in sel.grouped:
                    return sel.keys[candidate], False, pass_num
        known = [k for k in sel.keys if isinstance(k, str)]
        raise LayerNotFoundError(f"{key!r} is not tapped." + suggestion_text(str(key), known, "taps.keys()"))

    def _value(self, i: int, pass_num: int | None, grad: bool, quiet: bool = False, original: bool = False) -> Any:
        cache_key = (i, pass_num, grad, original)
        if cache_key in self._cache:
            return self._cache[cache_key]
        hooks = self._hooks
        spec = hooks.selection.specs[i]
        values = hooks.values[i]
        pass_num = pass_num or spec.pass_num
        chosen = _choose(values, pass_num, self.passes, spec.key)
        if chosen is None:
            if self.missing == "error" and not quiet:
                raise TapError(_missing_text(spec.label, pass_num, len(values), self._active))
            return None
        read = (lambda v: v.gradient()) if grad else (lambda v: v.resolve(hooks.policies[i], spec.label))
        if original:
            read = (lambda v, value=read: v.original if v.original is not None else value(v))
        result = [read(v) for v in chosen] if isinstance(chosen, list) else read(chosen)
        if isinstance(chosen, list) and self.passes == "stack":
            result = zip_tensors(result, torch.stack)
        self._cache[cache_key] = result
        return result


def _choose(values: list, pass_num: int | None, policy: str, key: str) -> Any:
    """The captured value(s) to return: one pass, all passes, or None when none ran."""
    if pass_num is not None:
        return values[pass_num - 1] if pass_num <= len(values) else None
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    if policy == "first":
        return values[0]
    if policy == "last":
        return values[-1]
    if policy in ("list", "stack"):
        return list(values)
    listed = ", ".join(f"{key}:{k}" for k in range(1, len(values) + 1))
    raise TapError(
        f"{key!r} ran {len(values)} times in this step ({listed}). Pick one pass, e.g. taps[{key + ':1'!r}], "
        "or choose for all taps with lt.Taps(..., passes='list' | 'stack' | 'first' | 'last')."
    )


def _missing_text(label: str, pass_num: int | None, ran: int, active: bool) -> str:
    if pass_num is not None and ran:
        return f"{label!r} ran {ran} time(s) in this step; there is no pass {pass_num}."
    when = "yet in this `with taps:` block" if active else "in the last `with taps:` step"
    return (f"{label!r} did not run {when} (a data-dependent branch, or no forward pass inside the block). "
            "Use lt.Taps(..., missing='skip') to get None for layers that did not run.")


def _display_names(selection: Selection, selectors: list[Any]) -> list[tuple[Any, int]]:
    """One name per tap: the user's own name where it names exactly that tap."""
    names: list[tuple[Any, int]] = []
    seen: set[int] = set()
    for key in selectors:
        idx = selection.keys[key]
        if key in selection.grouped or idx[0] in seen:
            continue
        names.append((key, idx[0]))
        seen.add(idx[0])
    names += [(s.label, i) for i, s in enumerate(selection.specs) if i not in seen]
    return sorted(names, key=lambda item: item[1])


def tap_example(model: nn.Module, layers: Any, input_args: Any, input_kwargs: Mapping[str, Any] | None = None,
                passes: str = "first") -> tuple[dict[Any, Any], Any]:
    """``({layer: value}, output)`` of one example forward pass, for building heads and adapters.

    The model's buffers (BatchNorm statistics) and the RNG are left as they were; layers
    that did not run are None.

    Example:
        >>> import torch
        >>> values, out = tap_example(torch.nn.Sequential(torch.nn.Linear(2, 3)), ["0"], torch.ones(1, 2))
        >>> values["0"].shape
        torch.Size([1, 3])
    """
    taps = Taps(model, layers, example_input=input_args, example_kwargs=input_kwargs, passes=passes, missing="skip")
    try:
        args, kwargs = normalize_inputs(taps._index.root, input_args, input_kwargs)
        with preserved_buffers(taps._index.root), torch.random.fork_rng(devices=[]), taps:
            out = model(*args, **kwargs)
        return {name: taps.get(name) for name in as_selector_list(layers)}, out
    finally:
        taps.remove()


def _example_log(root: nn.Module, input_args: Any, input_kwargs: Any) -> Any:
    """Metadata of one example pass (a capture puts buffers back itself)."""
    args, kwargs = normalize_inputs(root, input_args, input_kwargs)
    return get_model_metadata(root, args, kwargs, random_seed=0)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidArgumentError(f"lt.Taps {name} must be one of {list(choices)}, got {value!r}. "
                                   f"Example: lt.Taps(model, ['layer2'], {name}={choices[0]!r}).")


def _cleanup(owned: list[Any]) -> None:
    with interrupt_guard():
        _remove_all(owned)


def _remove_all(owned: list[Any]) -> None:
    while owned:  # idempotent: each item is dropped only once it is removed
        owned[-1].remove()
        owned.pop()


def _weak_method(method: Any) -> Any:
    # The model must not keep a dropped Taps (and the activations it holds) alive.
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        bound = ref()
        return None if bound is None else bound(*args)

    return call

