"""``LensModule``: taps inside a LightningModule's own steps, written explicitly.

The callbacks add capabilities to an unmodified module; this mixin is for users who
want the taps in their own code, and it is the supported path for manual optimization
(where Lightning ignores the loss a step returns, so no callback can add to it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from torch import nn

from .arguments import check_bool, check_names
from .errors import InvalidArgumentError, TapError
from .train import Taps

_STEPS = ("training_step", "validation_step", "test_step", "predict_step")


class LensModule:
    """Mixin for a ``LightningModule``: ``self.taps`` holds this step's taps.

    Declare the layers once with :meth:`configure_lens`; every ``training_step``,
    ``validation_step``, ``test_step`` and ``predict_step`` of the class then runs inside
    the taps, so ``self.taps["layer2"]`` is the graph-connected activation of the step's
    forward pass. Put the mixin first: ``class MyModule(lt.LensModule, L.LightningModule)``.

    Heads and adapters are built the way the callbacks build theirs: before the class's
    ``configure_optimizers`` runs, every ``lt.AuxiliaryLoss`` and ``lt.Distillation``
    attribute of the module that is not built yet is built from one example input
    (``configure_lens(example_input=...)``, else ``self.example_input_array``, else the
    first training batch), so ``self.parameters()`` already holds their parameters.

    Example:
        >>> import torch, lightning.pytorch as pl, lens_train as lt
        >>> class Lit(lt.LensModule, pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        ...         self.configure_lens(["net.1"])
        ...     def training_step(self, batch, batch_idx):
        ...         out = self.net(batch)
        ...         return out.sum() + self.taps["net.1"].abs().mean()
        >>> module = Lit()
        >>> loss = module.training_step(torch.ones(3, 4), 0)
        >>> module.taps["net.1"].shape
        torch.Size([3, 8])
    """

    def configure_lens(self, layers: Any, passes: str = "error", missing: str = "error",
                       save_gradients: bool = False, example_input: Any = None) -> None:
        """Choose the tapped layers (see :class:`lens_train.Taps` for every argument).

        Call it in ``__init__`` after the submodules exist. The taps are created on first
        use. Pickling or copying the module (``ddp_spawn``, ``torch.save(module)``,
        ``copy.deepcopy``) removes their hooks first; they are rebuilt on the next step, so
        the last step's tap values are gone afterwards.
        """
        if not isinstance(self, nn.Module):
            raise InvalidArgumentError(
                f"LensModule is a mixin for LightningModules; {type(self).__name__} is not an nn.Module. "
                "Write class MyModule(lt.LensModule, L.LightningModule)."
            )
        check_names("layers", [layers] if isinstance(layers, str) else layers, "self.configure_lens(layers=['layer2', 'relu_3'])",
                    keywords=())
        check_bool("save_gradients", save_gradients, "self.configure_lens(layers=['layer2'], save_gradients=True)")
        self.__dict__["_lens_config"] = {"layers": layers, "passes": passes, "missing": missing,
                                         "save_gradients": save_gradients, "example_input": example_input}
        self._lens_drop()

    @property
    def taps(self) -> Taps:
        """The taps of the current (or last) step."""
        taps = self._lens_taps()
        if taps is None:
            raise TapError(
                f"{type(self).__name__} has no taps configured. Call self.configure_lens(layers=[...]) in __init__."
            )
        return taps

    def _lens_taps(self) -> Taps | None:
        config = self.__dict__.get("_lens_config")
        if config is None:
            return None
        taps = self.__dict__.get("_lens_taps_obj")
        if taps is None:
            example = config["example_input"]
            kwargs = example if isinstance(example, Mapping) else None
            taps = Taps(self, config["layers"], example_input=None if kwargs is not None else example,
                        example_kwargs=kwargs, passes=config["passes"], missing=config["missing"],
                        save_gradients=config["save_gradients"])
            self.__dict__["_lens_taps_obj"] = taps
        return taps

    def _lens_drop(self) -> None:
        taps = self.__dict__.pop("_lens_taps_obj", None)
        if taps is not None:
            taps.remove()

    def __getstate__(self) -> dict[str, Any]:
        # The taps' hooks sit on the submodules, where pickle and deepcopy would find them
        # (closures cannot be pickled; a deep copy's hooks would fill this module's taps).
        # Remove them first: the taps are rebuilt on the next step, in both objects.
        taps = self.__dict__.get("_lens_taps_obj")
        if taps is not None and taps._active:
            raise TapError(
                f"{type(self).__name__} cannot be pickled or copied inside a step, while its taps are recording. "
                "Save or copy it outside training_step, e.g. in on_train_epoch_end or after trainer.fit."
            )
        self._lens_drop()
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return dict(state)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in _STEPS:
            fn = cls.__dict__.get(name)
            if fn is not None and callable(fn) and not getattr(fn, "_lens_tapped", False):
                setattr(cls, name, _tapped(fn))
        fn = cls.__dict__.get("configure_optimizers")
        if fn is not None and callable(fn) and not getattr(fn, "_lens_builds", False):
            setattr(cls, "configure_optimizers", _builds_first(fn))

    def _lens_build_parts(self) -> None:
        """Build the unbuilt AuxiliaryLoss / Distillation attributes from one example input."""
        from .train import AuxiliaryLoss, Distillation

        parts = [m for m in self.modules() if isinstance(m, (AuxiliaryLoss, Distillation)) and not m.is_built]
        if not parts:
            return
        args, kwargs = self._lens_example()
        try:
            for part in parts:
                if isinstance(part, AuxiliaryLoss):
                    part.setup(self, args, kwargs)
                else:
                    part.setup(args, kwargs)
        except NotImplementedError:
            raise InvalidArgumentError(
                f"{type(self).__name__} has auxiliary heads to build from one forward pass, but no forward method. "
                "Define one (def forward(self, x): return self.net(x)), or build them yourself in __init__ on the "
                "network the steps call: self.aux.setup(self.net, torch.zeros(...))."
            ) from None

    def _lens_example(self) -> tuple[Any, Any]:
        config = self.__dict__.get("_lens_config") or {}
        example = config.get("example_input")
        if example is None:
            example = getattr(self, "example_input_array", None)
        if example is None:
            # The same first batch the callbacks use, read without touching the training RNG.
            from .callbacks._shared import default_batch_to_input, first_batch

            trainer = getattr(self, "_trainer", None)
            batch = first_batch(trainer, "train") if trainer is not None else None
            if batch is None:
                raise InvalidArgumentError(
                    f"{type(self).__name__} has auxiliary heads or adapters to build but no example input. Pass one: "
                    "self.configure_lens(layers, example_input=torch.zeros(...)) or set self.example_input_array."
                )
            example = default_batch_to_input(batch)
        from lightning.fabric.utilities.apply_func import move_data_to_device

        example = move_data_to_device(example, self.device)
        return (None, example) if isinstance(example, Mapping) else (example, None)


def _builds_first(fn: Any) -> Any:
    @functools.wraps(fn)
    def configure_optimizers(self: LensModule, *args: Any, **kwargs: Any) -> Any:
        self._lens_build_parts()
        return fn(self, *args, **kwargs)

    configure_optimizers._lens_builds = True  # type: ignore[attr-defined]
    return configure_optimizers


def _tapped(fn: Any) -> Any:
    @functools.wraps(fn)
    def step(self: LensModule, *args: Any, **kwargs: Any) -> Any:
        taps = self._lens_taps()
        if taps is None or taps._active:
            return fn(self, *args, **kwargs)
        with taps:
            return fn(self, *args, **kwargs)

    step._lens_tapped = True  # type: ignore[attr-defined]
    return step
