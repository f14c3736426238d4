"""``DistillationCallback``: distil a teacher into the module being trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from ..arguments import check_number
from ..errors import InvalidArgumentError, TapError
from ..train.distillation import Distillation
from ._base import StepContext, TapCallback
from ._shared import BatchGetter, model_inputs


class DistillationCallback(TapCallback):
    """Add ``lt.Distillation`` terms (feature pairs and/or logits) to the step's loss.

    The same arguments as :class:`lens_train.Distillation`, with the Lightning module as
    the student. The teacher is moved to the module's device, frozen and kept in eval
    mode; it runs once per step on the step's input (``batch_to_input``). When the fit (or
    ``validate``/``test``) ends or fails, the teacher gets back the training flags and
    ``requires_grad`` it had when it was given (it stays on the module's device). Adapters are
    built before ``configure_optimizers``, trained by the user's optimizer, and saved in
    this callback's state. Terms are logged as ``distill/<student layer>`` and
    ``distill/logits`` (validation and test: ``val/distill/...``, ``test/distill/...``, never
    added to a loss).

    Args:
        teacher: the trained model.
        pairs: ``{student_layer: teacher_layer}``.
        feature_loss: ``"mse"``, ``"cosine"``, ``"attention_transfer"``, a callable, or per layer.
        logits_loss: a loss on the outputs, e.g. ``lt.losses.kd_kl(temperature=4.0)``.
        adapters: ``"auto"``, None, or ``{student_layer: nn.Module}``.
        weights: per-term multipliers (keys: student layers and ``"logits"``).
        weight: global multiplier.
        student_output: the student module whose output are the logits: ``""`` (the
            LightningModule's own forward) or an address such as ``"net"`` when
            ``training_step`` calls a submodule directly.
        batch_to_input: how to find the model input in a batch.

    Example:
        >>> import torch
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
        >>> cb = DistillationCallback(teacher, pairs={"layer1": "1"})
        >>> cb.tap_layers()
        ['layer1']
    """

    changes_loss = True

    def __init__(self, teacher: nn.Module, pairs: Mapping[str, str] | None = None, feature_loss: Any = "mse",
                 logits_loss: Any = None, adapters: Any = "auto", weights: Mapping[str, float] | None = None,
                 weight: float = 1.0, student_output: str = "", batch_to_input: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input)
        if not isinstance(teacher, nn.Module):
            raise InvalidArgumentError(
                f"teacher must be an nn.Module, got {teacher!r:.60} ({type(teacher).__name__}). Load it first, e.g. "
                "DistillationCallback(MyTeacher.load_from_checkpoint(path), pairs={'layer3': 'layer4'})."
            )
        if pairs is not None and not (isinstance(pairs, Mapping) and all(isinstance(k, str) and isinstance(v, str)
                                                                          for k, v in pairs.items())):
            raise InvalidArgumentError(f"pairs must be a dict {{student_layer: teacher_layer}}, got {pairs!r}. "
                                       "Example: DistillationCallback(teacher, pairs={'layer3': 'layer4'}).")
        if not pairs and logits_loss is None:
            raise InvalidArgumentError("DistillationCallback needs pairs={student_layer: teacher_layer}, a logits_loss, or both.")
        if adapters not in ("auto", None) and not isinstance(adapters, Mapping):
            raise InvalidArgumentError(f"adapters must be 'auto', None or {{student_layer: module}}, got {adapters!r}.")
        check_number("weight", weight, "DistillationCallback(teacher, pairs={'layer3': 'layer4'}, weight=1.0)")
        self.teacher = teacher
        self.pairs = dict(pairs or {})
        self.options = {"feature_loss": feature_loss, "logits_loss": logits_loss, "adapters": adapters,
                        "weights": weights, "weight": weight}
        self.student_output = student_output
        self.kd: Distillation | None = None
        self._pending: dict[str, Any] | None = None
        self._teacher_found: tuple[list[tuple[nn.Module, bool]], list[tuple[nn.Parameter, bool]]] | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(pairs=self.pairs)

    @override
    def tap_layers(self) -> list[Any]:
        extra = [self.student_output] if self.options["logits_loss"] is not None else []
        return list(self.pairs) + extra

    @override
    def build(self, module: pl.LightningModule, example: Any) -> None:
        if self._teacher_found is None:  # as the user gave it; put back when the stage ends
            self._teacher_found = ([(m, m.training) for m in self.teacher.modules()],
                                   [(p, p.requires_grad) for p in self.teacher.parameters()])
        self.teacher.to(module.device).eval().requires_grad_(False)
        if self.kd is None:
            args, kwargs = model_inputs(module, example)
            self.kd = Distillation(self.teacher, module, self.pairs, **self.options)
            self.kd.setup(args, kwargs)
            if self.kd._student_taps is not None:
                self.kd._student_taps.remove()  # the session's shared taps serve the student
        self.kd.to(module.device)
        if self._pending is not None:
            self.kd.load_state_dict(self._pending)
            self._pending = None

    @override
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.kd.parameters()) if self.kd is not None else []

    @override
    def train_terms(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        args, kwargs = model_inputs(ctx.module, self.batch_input(ctx.batch))
        _, terms = self.kd.loss(ctx.taps, args, student_output=self._student_output(ctx.taps), input_kwargs=kwargs)
        return {f"distill/{name}": term for name, term in terms.items()}

    @override
    def eval_step(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        return self.train_terms(ctx)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._run_give_back_teacher()

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._run_give_back_teacher()

    def _run_give_back_teacher(self) -> None:
        found, self._teacher_found = self._teacher_found, None
        if found is None:
            return
        flags, grads = found
        for m, training in flags:
            m.training = training
        for p, requires_grad in grads:
            p.requires_grad_(requires_grad)

    def _student_output(self, taps: Any) -> Any:
        if self.options["logits_loss"] is None:
            return None
        try:
            return taps[self.student_output]
        except TapError:
            raise InvalidArgumentError(
                f"logits_loss needs the student's output, but the module {self.student_output or '(the LightningModule)'!r} "
                "did not run in training_step. If the step calls a submodule directly (self.net(x)), name it: "
                "DistillationCallback(..., student_output='net')."
            ) from None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"kd": self.kd.state_dict() if self.kd is not None else self._pending}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning restores callbacks before configure_optimizers builds the adapters.
        state = state_dict.get("kd")
        self.trained = self.trained or state is not None
        if state is not None and self.kd is not None:
            self.kd.load_state_dict(state)
        else:
            self._pending = state
