"""The public capture functions: ``log_forward_pass`` and friends."""

from __future__ import annotations

import gc
import inspect
import os
import random
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import CaptureError, InvalidArgumentError, UnsupportedModelError, add_note, suggestion_text
from .arguments import check_capture_arguments
from .build import build_log, failure_note
from .inputs import named_tensors, normalize_inputs
from .lookup import build_key_map, select
from .model_index import ModuleFacts, index_model, loaded_hotpath, module_facts, walk_modules
from .model_log import ModelLog
from .gradients import GradientHooks
from .outlets import open_stream
from .recorder import CapturePlan, Recorder
from .scoping import interrupt_guard


def log_forward_pass(
    model: nn.Module,
    input_args: Any,
    input_kwargs: Mapping[str, Any] | None = None,
    layers_to_save: str | list[str | int] | None = "all",
    vis_opt: str = "none",
    train_mode: bool = False,
    activation_postfunc: Callable[[torch.Tensor], Any] | None = None,
    save_raw_activation: bool = True,
    random_seed: int | None = None,
    save_gradients: bool = False,
    save_activations_to: str | os.PathLike | None = None,
    keep_activations_in_memory: bool = True,
    replayable: bool = False,
    **options: Any,
) -> ModelLog:
    """Run one forward pass of ``model`` and log every tensor operation.

    Args:
        model: any ``nn.Module``; it is left exactly as it was (hooks, flags, RNG).
        input_args: a tensor, or a tuple/list of positional arguments (see
            :mod:`lens_train.capture.inputs` for the list rule).
        input_kwargs: keyword arguments for ``forward``.
        layers_to_save: ``"all"``, ``None`` (metadata only), or a list of labels, short
            labels, module addresses, ints and label substrings.
        vis_opt: ``"none"``, ``"unrolled"`` or ``"rolled"`` to also render the graph
            (``vis_mode`` is accepted as an alias).
        train_mode: keep saved floating-point activations attached to the autograd graph.
        activation_postfunc: also store ``f(activation)`` as ``transformed_activation``.
        save_raw_activation: keep the raw activation too (metadata always describes it).
        random_seed: seed for the forward pass (random when not given; always recorded).
        save_gradients: after a ``backward()``, give every saved layer pass its
            ``layer.gradient`` (implies ``train_mode``; see :mod:`lens_train.capture.gradients`).
        save_activations_to: a new bundle directory to write each saved activation to as
            it is produced (``lt.load(path)`` reads it back; see :mod:`lens_train.bundle.streaming`).
        keep_activations_in_memory: with ``False`` (needs ``save_activations_to``) the log
            keeps no activation in memory; ``layer.materialize_activation()`` reads it from disk.
        replayable: also keep what :meth:`ModelLog.replay_with` needs to recompute the log
            under edits from the saved values (every activation, each op's call template,
            the random-number state before each op, the values Python read from tensors).
            Costs memory and time; needs ``layers_to_save="all"``.

    Returns:
        The :class:`ModelLog` of the pass.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
        >>> log = lt.log_forward_pass(model, torch.ones(2, 4))
        >>> log["relu_1_2"].activation.shape
        torch.Size([2, 3])
    """
    vis_opt = options.pop("vis_mode", vis_opt)
    vis_kwargs = {k: options.pop(k) for k in list(options) if k.startswith("vis_")}
    keep_templates = bool(options.pop("keep_call_templates", False))
    record_rng = bool(options.pop("record_rng", False))
    # set by lens_train.interventions.intervene: record index / (module, call) -> edit
    edits, module_edits = options.pop("intervention_edits", None), options.pop("intervention_module_edits", None)
    if options:
        known = [*inspect.signature(log_forward_pass).parameters, *_VIS_OPTIONS, "vis_mode"]
        name = sorted(options)[0]
        raise InvalidArgumentError(
            f"log_forward_pass got unknown arguments {sorted(options)}."
            + suggestion_text(name, known, "help(lt.log_forward_pass)")
        )
    unknown_vis = sorted(set(vis_kwargs) - set(_VIS_OPTIONS))
    if unknown_vis:
        raise InvalidArgumentError(
            f"Unknown graph option {unknown_vis[0]!r}." + suggestion_text(unknown_vis[0], _VIS_OPTIONS, "help(lt.show_model_graph)")
        )
    if vis_opt not in ("none", "unrolled", "rolled"):
        raise InvalidArgumentError(
            f"vis_opt must be 'none', 'unrolled' or 'rolled', got {vis_opt!r}."
            + suggestion_text(str(vis_opt), ["none", "unrolled", "rolled"], "help(lt.log_forward_pass)")
        )
    modules = check_supported(model)  # handed to the first capture: no second walk
    check_capture_arguments(input_kwargs, layers_to_save, train_mode, activation_postfunc, save_raw_activation,
                            random_seed, save_gradients, save_activations_to, keep_activations_in_memory)
    check_replayable(replayable, layers_to_save, save_raw_activation, keep_activations_in_memory)
    seed = random.randrange(2**31) if random_seed is None else int(random_seed)
    grads = GradientHooks() if save_gradients else None
    base = dict(train_mode=train_mode or save_gradients, postfunc=activation_postfunc, save_raw=save_raw_activation,
                keep_templates=keep_templates or replayable, record_rng=record_rng or replayable, read_values=replayable,
                sink=grads.sink if grads else None, edits=edits, module_edits=module_edits)
    if layers_to_save == "all" or layers_to_save is None:
        plan = CapturePlan(save="all" if layers_to_save == "all" else "none", **base)
    else:
        probe = run_capture(model, input_args, input_kwargs, CapturePlan(save="none"), seed, modules)
        modules = None  # the probe's forward ran user code: walk again
        chosen = select(build_key_map(probe.layers), probe.layers, layers_to_save)
        plan = CapturePlan(save=frozenset(chosen), **base)
    stream = open_stream(save_activations_to, keep_activations_in_memory)
    log = stream.run(lambda p: run_capture(model, input_args, input_kwargs, p, seed, modules), plan)
    if grads is not None:
        grads.bind(log)
    log.capture_plan = plan  # what save_new_activations re-runs
    log.meta["save_gradients"] = save_gradients
    log.meta["layers_to_save"] = layers_to_save if isinstance(layers_to_save, (str, type(None))) else list(layers_to_save)
    stream.finish(log)
    if vis_opt != "none":
        from ..viz import render_graph

        render_graph(log, vis_opt=vis_opt, **vis_kwargs)
    return log


_VIS_OPTIONS = ("vis_nesting_depth", "vis_outpath", "vis_fileformat", "vis_save_only", "vis_module", "vis_gradients")


def get_model_activations(*args: Any, **kwargs: Any) -> ModelLog:
    """Alias of :func:`log_forward_pass`.

    Example:
        >>> import torch, lens_train as lt
        >>> len(lt.get_model_activations(torch.nn.ReLU(), torch.ones(2)))
        3
    """
    return log_forward_pass(*args, **kwargs)


def get_model_metadata(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> ModelLog:
    """``log_forward_pass(..., layers_to_save=None)``: full metadata, no activations.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.get_model_metadata(torch.nn.ReLU(), torch.ones(2))
        >>> log["relu_1_1"].activation is None, log["relu_1_1"].tensor_shape
        (True, (2,))
    """
    return log_forward_pass(model, input_args, input_kwargs, layers_to_save=None, **kwargs)


def check_supported(model: Any) -> tuple[tuple[str, nn.Module], ...]:
    """Raise a clear error for models the engine cannot log faithfully; else the model's module walk.

    Example:
        >>> [address for address, _ in check_supported(torch.nn.Sequential(torch.nn.ReLU()))]
        ['', '0']
    """
    if not isinstance(model, nn.Module):
        hint = (" Wrap a function in a module, e.g. class M(nn.Module): def forward(self, x): return f(x)."
                if callable(model) else " Pass the nn.Module itself as the first argument, e.g. lt.log_forward_pass(model, x).")
        shown = "" if "\n" in repr(model) or len(repr(model)) > 60 else f" {model!r}"
        raise UnsupportedModelError(f"model must be a torch.nn.Module, got {type(model).__name__}{shown}.{hint}")
    modules = walk_modules(model)
    script = torch.jit.ScriptModule
    if loaded_hotpath is not None and not loaded_hotpath.any_of(modules, script, "OptimizedModule"):
        return modules  # (the loop below, in C: none of them is either)
    for address, m in modules:
        if isinstance(m, script):
            raise UnsupportedModelError(
                f"TorchScript modules cannot be logged{_at(address)}: their ops run outside Python. "
                "Log the original nn.Module instead of the torch.jit.script/trace result."
            )
        if type(m).__name__ == "OptimizedModule" and hasattr(m, "_orig_mod"):
            raise UnsupportedModelError(
                f"torch.compile'd modules cannot be logged{_at(address)}: compiled graphs bypass op interception. "
                "Log the original module instead: lt.log_forward_pass(model._orig_mod, x)."
            )
    return modules


def _at(address: str) -> str:
    return f" (at {address!r})" if address else ""


def _call_model(model: nn.Module, args: tuple, kwargs: dict) -> Any:
    # The recorder stops its call-stack walks at this frame.
    return model(*args, **kwargs)


_STOP_CODE = _call_model.__code__


def run_capture(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None,
                plan: CapturePlan, seed: int, modules: Any = None) -> ModelLog:
    """One seeded, intercepted forward pass turned into a :class:`ModelLog`.

    ``modules``: :func:`~lens_train.capture.model_index.walk_modules` of ``model``, made
    just before (no user code ran since), or None.
    """
    with gc_paused(promote=True):
        recorder, output, elapsed = record_forward(model, input_args, input_kwargs, plan, seed, modules)
        meta = {"random_seed": seed, "elapsed_s": elapsed, "train_mode": plan.train_mode}
        log = build_log(recorder, model, meta)
        if plan.read_values:
            from .replay_edits import ReplayState  # replay builds on validation, which builds on this module

            log.replay_state = ReplayState.of(recorder.records, log, model, input_args, input_kwargs, seed,
                                              recorder.index.unique_params())
        else:
            # the log's layers hold the values now; its LayerSource keeps the records for their metadata only
            for rec in recorder.records:
                rec.activation = rec.transformed_activation = rec.original = None
        del recorder  # what the log does not hold is freed here, never walked by the collector
    log.output = output
    return log


def check_replayable(replayable: Any, layers_to_save: Any, save_raw_activation: Any, keep_in_memory: Any) -> None:
    """Raise when ``replayable=True`` comes with options that drop values a replay needs."""
    if replayable is not True and replayable is not False:
        raise InvalidArgumentError(f"replayable must be True or False, got {replayable!r}. "
                                   "Example: lt.log_forward_pass(model, x, replayable=True).")
    if replayable and (layers_to_save != "all" or not save_raw_activation or not keep_in_memory):
        raise InvalidArgumentError(
            "replayable=True keeps every activation in memory: use it with layers_to_save='all', "
            "save_raw_activation=True and keep_activations_in_memory=True (the defaults), e.g. "
            "lt.log_forward_pass(model, x, replayable=True)."
        )


def record_forward(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None,
                   plan: CapturePlan, seed: int, modules: Any = None) -> tuple[Recorder, Any, float]:
    """One seeded, intercepted forward pass: (recorder with raw records, output, seconds).

    Everything it installs (RNG state, swapped-in buffers, hooks, the function mode) is
    installed and removed with SIGINT deferred; the forward pass itself can be interrupted.
    ``modules``: the model's module walk, made just before (as :func:`run_capture`), or None.
    """
    args, kwargs = normalize_inputs(model, input_args, input_kwargs)
    modules = walk_modules(model) if modules is None else modules
    # the buffers are swapped and put back inside this guard's deferred sections (one guard, not two)
    facts = module_facts(modules)
    with interrupt_guard() as guard, forked_rng(seed, _devices(args, kwargs, model)), gc_paused(), \
            BufferSwap(model, modules, facts):
        recorder = Recorder(model, plan, _STOP_CODE, index_model(model, modules, facts))  # the buffers swapped in
        start = time.perf_counter()
        try:
            with recorder:
                guard.open()
                try:
                    for name, t in named_tensors(args, kwargs):
                        recorder.add_input(t, name)
                    output = _call_model(model, args, kwargs)
                    recorder.add_outputs(output)
                finally:
                    guard.close()
        except BaseException as exc:
            if not any(str(n).startswith("lens_train:") for n in getattr(exc, "__notes__", ())):
                add_note(exc, failure_note(recorder, model, exc))
            raise
        elapsed = time.perf_counter() - start
    if not recorder.records:
        raise CaptureError("The forward pass produced no tensors to log. Check that the model's forward uses its inputs.")
    return recorder, output, elapsed


@contextmanager
def preserved_buffers(model: nn.Module, modules: Any = None) -> Iterator[BufferSwap]:
    """Run a block on clones of the model's buffers, then put the original tensors back.

    A capture observes a forward pass; it must not train running statistics, and it must
    not write into a buffer a pending ``backward()`` saved (even writing the old value
    back bumps the buffer's version and breaks that backward).

    Example:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> mean, version = bn.running_mean, bn.running_mean._version
        >>> with preserved_buffers(bn):
        ...     _ = bn(torch.randn(4, 2))
        >>> bn.running_mean is mean, mean.tolist(), int(bn.num_batches_tracked), mean._version == version
        (True, [0.0, 0.0], 0, True)
    """
    with interrupt_guard() as guard, BufferSwap(model, modules) as swap:
        guard.open()
        try:
            yield swap
        finally:
            guard.close()


class BufferSwap:
    """The model's buffer tensors, to swap clones in for a side pass and to put back.

    The original tensors are never written (their values and autograd versions stay as
    they are); one clone per distinct tensor, so a buffer shared by two modules stays shared.
    As a ``with`` block it swaps in on entry and puts back on exit.

    Example:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> swap, version = BufferSwap(bn), bn.running_mean._version
        >>> swap.swap_in()
        >>> _ = bn(torch.randn(4, 2))
        >>> swap.restore()
        >>> bn.running_mean.tolist(), bn.running_mean._version == version
        ([0.0, 0.0], True)
    """

    def __init__(self, model: nn.Module, modules: Any = None, facts: ModuleFacts | None = None) -> None:
        """``modules``: ``(address, module)`` pairs of ``model`` when the caller walked it already, and
        ``facts`` their :func:`~lens_train.capture.model_index.module_facts`."""
        if facts is None:
            facts = module_facts(modules if modules is not None else walk_modules(model))
        self._saved = [(m, dict(m._buffers)) for m in facts.with_buffers]
        # modules without buffers (most): any a pass gives them is dropped, as a new buffer of the others
        self._bare = facts.bare

    def __enter__(self) -> BufferSwap:
        try:
            self.swap_in()
        except BaseException:  # (a swap that stopped half-way: the modules it reached are put back too)
            self.restore()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()

    def swap_in(self) -> None:
        """Give every module fresh clones of its original buffers (callable again between passes)."""
        self._drop_bare()
        clones: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for module, buffers in self._saved:
                self._drop_new(module, buffers)
                for name, b in buffers.items():
                    if b is not None:
                        clone = clones.get(id(b))
                        if clone is None:
                            clone = clones[id(b)] = b.clone().requires_grad_(b.requires_grad)
                        module._buffers[name] = clone

    def restore(self) -> None:
        """Put the original buffer objects back (undoing reassignment and new buffers too)."""
        self._drop_bare()
        for module, buffers in self._saved:
            self._drop_new(module, buffers)
            module._buffers.update(buffers)

    def _drop_bare(self) -> None:
        for module in self._bare:
            if module._buffers:
                module._buffers.clear()

    @staticmethod
    def _drop_new(module: nn.Module, buffers: dict) -> None:
        now = module._buffers
        if now.keys() != buffers.keys():  # most modules: nothing new
            for name in [n for n in now if n not in buffers]:
                del now[name]


@contextmanager
def gc_paused(promote: bool = False) -> Iterator[None]:
    """Pause the cyclic garbage collector for a block.

    A capture (or a bundle's JSON) allocates many small, acyclic objects; a full
    collection of torch's large heap in the middle would cost more than the work itself.

    With ``promote=True`` the objects made in the block (a log: long-lived by nature) go
    straight to the collector's oldest generation when it ends, as two young collections
    would have moved them, without the two passes over them (about 2.5 us per op of a
    capture). Skipped when the program froze objects itself (``gc.freeze``), whose count
    this must not change.

    Example:
        >>> import gc
        >>> with gc_paused():
        ...     gc.isenabled()
        False
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if promote and gc.get_freeze_count() == 0:
            gc.freeze()  # every tracked object to the permanent generation (a list splice) ...
            gc.unfreeze()  # ... and from there to the oldest one
        if was_enabled:
            gc.enable()


def _devices(args: tuple, kwargs: dict, model: nn.Module) -> list[int]:
    if not torch.cuda.is_available():
        return []
    devs = {t.device.index or 0 for _, t in named_tensors(args, kwargs) if t.is_cuda}
    devs.update(p.device.index or 0 for p in model.parameters() if p.is_cuda)
    return sorted(devs)


@contextmanager
def forked_rng(seed: int | None, cuda_devices: list[int] | None = None) -> Iterator[None]:
    """Seed torch's RNG for a block and restore the previous RNG state afterwards.

    Example:
        >>> import torch
        >>> with forked_rng(0):
        ...     a = torch.rand(1)
        >>> with forked_rng(0):
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    with torch.random.fork_rng(devices=cuda_devices or [], enabled=True):
        if seed is not None:
            # torch.manual_seed also seeds every lazily-initialised backend (~100 us);
            # only the generators this pass can use need it.
            torch.default_generator.manual_seed(seed)
            for d in cuda_devices or []:
                torch.cuda.default_generators[d].manual_seed(seed)
        yield
