"""One tap session per LightningModule: one capture per step for every tap callback.

The first tap callback to reach ``setup`` installs instance attributes on the module,
each wrapping the class's method (Lightning calls the steps through the module even
under DDP, so an instance attribute takes effect everywhere). For ``trainer.fit``:

- ``configure_optimizers``: builds the taps and the callbacks' trainable parts from one
  example input, then lets the user's optimizer see those parameters;
- ``training_step``: runs the user's step inside the taps and adds the callbacks' terms
  to the loss it returns (a tensor, or a dict's ``"loss"``);
- ``validation_step``: logs the callbacks' terms as ``val/...``, never adding them.

``trainer.validate`` wraps only ``validation_step`` and ``trainer.test`` only
``test_step`` (terms logged as ``test/...``); there the taps are built from the first
batch. The last callback to leave (``teardown``, or ``on_exception``) removes them again.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn

from ..errors import InvalidArgumentError
from ..train import Taps
from ._shared import first_batch, model_inputs, quiet_forward

if TYPE_CHECKING:  # _base imports this module; the types only annotate
    from ._base import TapCallback

_SESSIONS: weakref.WeakKeyDictionary[nn.Module, LensSession] = weakref.WeakKeyDictionary()
# The methods wrapped in each Trainer stage, and the log prefix of each evaluation step.
_WRAPPED = {"fit": ("configure_optimizers", "training_step", "validation_step"),
            "validate": ("validation_step",), "test": ("test_step",)}
_SPLITS = {"validation_step": "val", "test_step": "test"}


@dataclass
class StepContext:
    """What a tap callback sees after one step; ``stage`` is ``"train"``, ``"val"`` or ``"test"``."""

    trainer: pl.Trainer
    module: pl.LightningModule
    taps: Any
    batch: Any
    batch_idx: int
    stage: str

    @property
    def step(self) -> int:
        """The optimizer step count, which drives schedules."""
        return self.trainer.global_step


def unique_layers(groups: Iterable[Iterable[Any]]) -> list[Any]:
    """The union of several layer lists, in first-seen order (predicates kept by identity).

    Example:
        >>> unique_layers([["a", "b"], ["b", "c"]])
        ['a', 'b', 'c']
    """
    seen: list[Any] = []
    for group in groups:
        for layer in group:
            if not any(layer is s or (isinstance(layer, str) and layer == s) for s in seen):
                seen.append(layer)
    return seen


class LensSession:
    """The shared taps of every tap callback attached to one module.

    Example:
        >>> import torch
        >>> from lightning.pytorch import LightningModule
        >>> LensSession.of(LightningModule()) is None
        True
    """

    def __init__(self, module: pl.LightningModule, stage: str = "fit") -> None:
        self.module = module
        self.stage = stage
        self.members: list[TapCallback] = []
        self.taps: Any = None
        self._saved: dict[str, Any] = {}
        self._ready: list[TapCallback] | None = None

    @classmethod
    def of(cls, module: nn.Module) -> LensSession | None:
        """The session attached to ``module``, if any."""
        return _SESSIONS.get(module)

    @classmethod
    def join(cls, callback: TapCallback, trainer: pl.Trainer, module: pl.LightningModule,
             stage: str = "fit") -> LensSession:
        """Add ``callback`` to the module's session for ``stage``, creating and installing it if needed."""
        session = _SESSIONS.get(module)
        if session is None:
            session = _SESSIONS[module] = cls(module, stage)
            session._install()
        if callback not in session.members:
            session.members.append(callback)
            session.drop_taps()
        return session

    @classmethod
    def leave(cls, callback: TapCallback, module: pl.LightningModule) -> None:
        """Remove ``callback``; the last one out restores the module's methods."""
        session = _SESSIONS.get(module)
        if session is None or callback not in session.members:
            return
        session.members.remove(callback)
        if not session.members:
            session._uninstall()
            del _SESSIONS[module]

    # -- installation -------------------------------------------------------------------
    def _install(self) -> None:
        module = self.module
        wrappers = {"configure_optimizers": self._configure_optimizers, "training_step": self._training_step,
                    "validation_step": functools.partial(self._eval_step, "validation_step"),
                    "test_step": functools.partial(self._eval_step, "test_step")}
        for name in _WRAPPED[self.stage]:
            if name in _SPLITS and not is_overridden(name, module):
                continue
            original = getattr(module, name)
            self._saved[name] = (module.__dict__.get(name, _MISSING), original)
            module.__dict__[name] = _wrapper(wrappers[name], original)

    def _uninstall(self) -> None:
        for name, (previous, _) in self._saved.items():
            if previous is _MISSING:
                self.module.__dict__.pop(name, None)
            else:
                self.module.__dict__[name] = previous
        self._saved.clear()
        self.drop_taps()

    def drop_taps(self) -> None:
        """Remove the taps' hooks from the model (they are rebuilt when needed)."""
        if self.taps is not None:
            self.taps.remove()
        self.taps = None

    def _original(self, name: str) -> Any:
        return self._saved[name][1]

    # -- building -----------------------------------------------------------------------
    def ensure_built(self, batch: Any = None) -> None:
        """Build the taps and every member's trainable parts once, from one example input."""
        if self.taps is not None:
            return
        module = self.module
        example = self._example(batch)
        args, kwargs = model_inputs(module, example)
        layers = unique_layers(cb.tap_layers() for cb in self.members)
        # Evaluation runs under inference mode; heads built there must stay trainable.
        with torch.inference_mode(False), quiet_forward(module):
            self.taps = Taps(module, layers, example_input=args, example_kwargs=kwargs,
                             save_gradients=any(cb.save_gradients for cb in self.members))
            for cb in self.members:
                cb.build(module, example)

    def _example(self, batch: Any) -> Any:
        module = self.module
        if batch is None and module.example_input_array is not None:
            return move_data_to_device(module.example_input_array, module.device)
        if batch is None:
            batch = first_batch(module.trainer, "train")
        if batch is None:
            raise InvalidArgumentError(
                f"The lens callbacks need one example input to build their taps, but {type(module).__name__} has no "
                "training data yet and no example_input_array. Set self.example_input_array = torch.zeros(...) in "
                "the module's __init__."
            )
        return move_data_to_device(self.members[0].batch_input(batch), module.device)

    def extra_parameters(self) -> list[nn.Parameter]:
        """Every member's trainable parameters, each once."""
        params: dict[int, nn.Parameter] = {}
        for cb in self.members:
            params.update((id(p), p) for p in cb.trainable_parameters())
        return list(params.values())

    # -- the wrappers ---------------------------------------------------------------------
    def _configure_optimizers(self, *args: Any, **kwargs: Any) -> Any:
        self.ensure_built()
        extra = self.extra_parameters()
        if _is_sharded(self.module):
            # FSDP2: the heads are plain tensors, the model's are DTensors, and foreach optimizer
            # kernels refuse a param group that mixes both: the heads get a group of their own.
            result = self._original("configure_optimizers")(*args, **kwargs)
            _add_untrained(result, extra)
            return result
        holder = _ParameterHolder(extra)
        # While the user's configure_optimizers runs, self.parameters() includes the heads,
        # so they get the same parameter group and LR schedule as a hand-written module.
        self.module.add_module("_lens_extra", holder)
        try:
            result = self._original("configure_optimizers")(*args, **kwargs)
        finally:
            delattr(self.module, "_lens_extra")
        _add_untrained(result, extra)
        return result

    def _training_step(self, *args: Any, **kwargs: Any) -> Any:
        batch, batch_idx = _batch_args(args, kwargs)
        self.ensure_built(batch)
        with self.taps:
            out = self._original("training_step")(*args, **kwargs)
        ctx = StepContext(self.module.trainer, self.module, self.taps, batch, batch_idx, "train")
        terms: dict[str, torch.Tensor] = {}
        if out is not None:
            for cb in self.members:
                terms.update(cb.train_terms(ctx))
        for cb in self.members:
            cb.after_train_step(ctx)
            cb.trained = True
        return self._add_terms(out, terms, batch) if terms else out

    def _eval_step(self, name: str, *args: Any, **kwargs: Any) -> Any:
        trainer = self.module.trainer
        original = self._original(name)
        if trainer.sanity_checking:
            return original(*args, **kwargs)
        batch, batch_idx = _batch_args(args, kwargs)
        self.ensure_built(batch)
        with self.taps:
            out = original(*args, **kwargs)
        split = _SPLITS[name]
        ctx = StepContext(trainer, self.module, self.taps, batch, batch_idx, split)
        terms: dict[str, torch.Tensor] = {}
        for cb in self._evaluating():
            terms.update(cb.eval_step(ctx))
        if terms:
            self.log({f"{split}/{k}": v.detach() for k, v in terms.items()}, batch, on_step=False)
        return out

    def _evaluating(self) -> list[TapCallback]:
        """The members whose trained parts mean something in this stage (all of them in a fit)."""
        if self.stage == "fit":
            return self.members
        if self._ready is None:
            self._ready = [cb for cb in self.members if cb.ready_to_evaluate()]
            for cb in self.members:
                if cb not in self._ready:
                    rank_zero_warn(
                        f"{type(cb).__name__} skips trainer.{self.stage}(): its trainable parts were neither trained "
                        f"by a fit nor restored from a checkpoint. Run trainer.fit first, or pass the checkpoint: "
                        f"trainer.{self.stage}(model, dataloaders, ckpt_path='path/to/last.ckpt')."
                    )
        return self._ready

    def _add_terms(self, out: Any, terms: dict[str, torch.Tensor], batch: Any) -> Any:
        loss = out["loss"] if isinstance(out, Mapping) else out
        if not isinstance(loss, torch.Tensor):
            raise InvalidArgumentError(
                f"training_step returned {type(out).__name__}; the lens callbacks add their terms to a loss "
                "tensor or to the 'loss' entry of a dict. Return the loss (return loss or return {'loss': loss})."
            )
        total = loss + torch.stack([t.to(loss.dtype) for t in terms.values()]).sum()
        metrics = {"lens/total_loss": total.detach(), **{k: v.detach() for k, v in terms.items()}}
        self.log(metrics, batch, on_step=True)
        if isinstance(out, Mapping):
            return {**out, "loss": total}
        return total

    def log(self, metrics: dict[str, torch.Tensor], batch: Any, on_step: bool) -> None:
        """Log from inside a step: to every logger, synced across ranks."""
        trainer = self.module.trainer
        self.module.log_dict(metrics, on_step=on_step, on_epoch=not on_step, sync_dist=trainer.world_size > 1,
                             batch_size=_batch_size(self.members[0], batch))


def _wrapper(method: Any, original: Any) -> Any:
    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs)

    return wrapper


class _ParameterHolder(nn.Module):
    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        for i, p in enumerate(params):
            self.register_parameter(f"p{i}", p)


class _Missing:
    pass


_MISSING = _Missing()


def _batch_args(args: tuple, kwargs: dict) -> tuple[Any, int]:
    batch = args[0] if args else kwargs.get("batch")
    batch_idx = args[1] if len(args) > 1 else kwargs.get("batch_idx", 0)
    return batch, int(batch_idx)


def _batch_size(callback: TapCallback, batch: Any) -> int | None:
    try:
        x = callback.batch_input(batch)
    except InvalidArgumentError:
        return None
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() else None


def _is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` holds FSDP2-sharded (DTensor) parameters."""
    return any(type(p).__name__ == "DTensor" or type(getattr(p, "data", None)).__name__ == "DTensor"
               for p in module.parameters())


def _optimizers(result: Any) -> list[torch.optim.Optimizer]:
    if isinstance(result, torch.optim.Optimizer):
        return [result]
    if isinstance(result, Mapping):
        return _optimizers(result.get("optimizer"))
    if isinstance(result, (list, tuple)):
        return [opt for item in result for opt in _optimizers(item)]
    return []


def _add_untrained(result: Any, extra: list[nn.Parameter]) -> None:
    optimizers = _optimizers(result)
    seen = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    missing = [p for p in extra if id(p) not in seen]
    if not missing:
        return
    if not optimizers:
        raise InvalidArgumentError(
            "configure_optimizers returned no optimizer, so the lens callbacks' auxiliary heads/adapters "
            "would never be trained. Return an optimizer over self.parameters()."
        )
    # The user's optimizer was built from a parameter subset: give the heads a group of
    # their own with the first group's hyperparameters, rather than leaving them untrained.
    defaults = {k: v for k, v in optimizers[0].param_groups[0].items() if k != "params"}
    optimizers[0].add_param_group({**defaults, "params": missing})
    rank_zero_info(
        f"lens_train: added {len(missing)} auxiliary head/adapter parameters to {type(optimizers[0]).__name__} "
        "as a parameter group of their own (configure_optimizers did not use self.parameters(), or the model "
        "is sharded)."
    )
