"""``lt.Distillation``: feature (FitNet, cosine, attention transfer) and logit distillation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..capture.inputs import normalize_inputs
from ..arguments import check_number, fail
from ..errors import InvalidArgumentError, LayerNotFoundError, closest
from .adapters import Adapter
from .auxiliary import _per_layer, check_in_optimizer
from .losses import TapLoss, as_loss, param_dtype
from .structures import main_tensor
from .taps import Taps, tap_example

LOGITS = "logits"


class Distillation(nn.Module):
    """Distil a teacher into a student through tapped layers and/or logits.

    Args:
        teacher: the trained model; run in eval mode under ``no_grad``, once per call.
        student: the model being trained.
        pairs: ``{student_layer: teacher_layer}`` (any names :class:`lt.Taps` accepts).
        feature_loss: ``"mse"`` (FitNet hint), ``"cosine"``, ``"attention_transfer"``, a
            callable ``(student, teacher) -> scalar``, or ``{student_layer: loss}``.
        logits_loss: a loss on the two models' outputs, e.g. ``lt.losses.kd_kl(4.0)``.
        adapters: ``"auto"`` (where shapes differ: a trainable 1x1 conv / linear plus
            resizing, also between spatial maps and tokens; see :mod:`lens_train.train.adapters`),
            None, or ``{student_layer: nn.Module}`` (pairs left out get ``"auto"``).
        weights: per-term multipliers, keyed by student layer or ``"logits"``.
        weight: a global multiplier.
        example_input, example_kwargs: build the adapters now (or call :meth:`setup`).

    ``kd.parameters()`` are the adapters' (the teacher and student are not submodules).

    Example:
        >>> import torch, lens_train as lt
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        >>> student = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> x = torch.randn(6, 4)
        >>> kd = lt.Distillation(teacher, student, pairs={"1": "1"}, logits_loss=lt.losses.kd_kl(4.0), example_input=x)
        >>> total, terms = kd(x)
        >>> sorted(terms), [tuple(p.shape) for p in kd.parameters()]
        (['1', 'logits'], [(16, 8), (16,)])
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, pairs: Mapping[str, str] | None = None,
                 feature_loss: Any = "mse", logits_loss: Any = None, adapters: Any = "auto",
                 weights: Mapping[str, float] | None = None, weight: float = 1.0, example_input: Any = None,
                 example_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        for name, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, nn.Module):
                fail(name, model, "an nn.Module", "lt.Distillation(teacher, student, pairs={'layer3': 'layer4'})", wrong_type=True)
        if pairs is not None and not isinstance(pairs, Mapping):
            raise InvalidArgumentError(
                f"pairs must be a dict {{student_layer: teacher_layer}}, got {type(pairs).__name__} {pairs!r:.60}. "
                "Example: lt.Distillation(teacher, student, pairs={'layer3': 'layer4'})."
            )
        pairs = dict(pairs or {})
        if not pairs and logits_loss is None:
            raise InvalidArgumentError("Distillation needs pairs={student_layer: teacher_layer}, a logits_loss, or both.")
        if adapters not in ("auto", None) and not isinstance(adapters, Mapping):
            raise InvalidArgumentError(f"adapters must be 'auto', None or {{student_layer: module}}, got {adapters!r}.")
        self._models = (teacher, student)  # a tuple: not submodules, so kd.parameters() is the adapters only
        self.pairs = pairs
        self.student_layers = list(pairs)
        losses = feature_loss if isinstance(feature_loss, Mapping) else {k: feature_loss for k in pairs}
        self.feature_losses = nn.ModuleList(as_loss(losses[k], f"feature_loss for {k!r}") for k in pairs)
        self.logits_loss: TapLoss | None = as_loss(logits_loss, "logits_loss") if logits_loss is not None else None
        example = "lt.Distillation(teacher, student, pairs={'layer2': 'layer3'}, weight=1.0)"
        self.weights = _per_layer(weights, [*pairs, LOGITS], "weights", lambda w: check_number("weights", w, example), 1.0)
        self.weight = check_number("weight", weight, example)
        self.adapter_mode = adapters
        self.adapters = nn.ModuleList(nn.Identity() for _ in pairs)
        self._explicit: set[str] = set()
        if isinstance(adapters, Mapping):
            self._set_adapters(adapters)
        self.is_built = not pairs or adapters is None or self._explicit == set(pairs)
        self._teacher_taps = self._side_taps("teacher", list(pairs.values())) if pairs else None
        self._student_taps = self._side_taps("student", self.student_layers) if pairs else None
        self.student_output: Any = None
        if example_input is not None or example_kwargs is not None:
            self.setup(example_input, example_kwargs)

    @property
    def teacher(self) -> nn.Module:
        """The teacher model."""
        return self._models[0]

    @property
    def student(self) -> nn.Module:
        """The student model."""
        return self._models[1]

    def setup(self, example_input: Any, example_kwargs: Mapping[str, Any] | None = None) -> Distillation:
        """Build the adapters from one example pass of both models (before creating the optimizer).

        Also resolves op-label pairs now, so the first step runs each model once. Does
        nothing once the adapters are built, so trained adapters are never replaced.
        """
        if self._teacher_taps is not None and self._teacher_taps.selection is None:
            self._teacher_taps.remove()
            self._teacher_taps = self._side_taps("teacher", list(self.pairs.values()), example_input=example_input,
                                                 example_kwargs=example_kwargs)
        if self._student_taps is not None and self._student_taps.selection is None:
            self._student_taps.remove()
            self._student_taps = self._side_taps("student", self.student_layers, example_input=example_input,
                                                 example_kwargs=example_kwargs)
        if self.is_built:
            return self
        s_vals, _ = tap_example(self.student, self.student_layers, example_input, example_kwargs)
        with torch.no_grad():
            t_vals, _ = tap_example(self.teacher, list(self.pairs.values()), example_input, example_kwargs)
        for i, (s_layer, t_layer) in enumerate(self.pairs.items()):
            s, t = main_tensor(s_vals[s_layer]), main_tensor(t_vals[t_layer])
            if s_layer not in self._explicit and s.shape != t.shape:
                self.adapters[i] = Adapter(tuple(s.shape), tuple(t.shape)).to(device=s.device, dtype=param_dtype(s))
        self.is_built = True
        return self

    def forward(self, input_args: Any, input_kwargs: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the student (its output is kept in ``kd.student_output``) and the teacher; return the loss."""
        args, kwargs = normalize_inputs(self.student, input_args, input_kwargs)
        self.student_output = None
        if self._student_taps is not None:
            with self._student_taps:
                out = self.student(*args, **kwargs)
        else:
            out = self.student(*args, **kwargs)
        self.student_output = out
        return self.loss(self._student_taps, input_args, student_output=out, input_kwargs=input_kwargs)

    def loss(self, student_taps: Any, input_args: Any, student_output: Any = None,
             input_kwargs: Mapping[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss when the student's forward already ran inside ``student_taps``; runs the teacher once."""
        self._check_ready(student_taps, student_output)
        t_feats, t_out = self._run_teacher(input_args, input_kwargs)
        terms: dict[str, torch.Tensor] = {}
        for i, (s_layer, t_layer) in enumerate(self.pairs.items()):
            adapter = self.adapters[i]
            s, t = adapter(main_tensor(student_taps[s_layer])), main_tensor(t_feats[t_layer])
            t = adapter.target(t) if isinstance(adapter, Adapter) else t
            terms[s_layer] = self.feature_losses[i](s, t) * (self.weight * self.weights[s_layer])
        if self.logits_loss is not None:
            w = self.weight * self.weights[LOGITS]
            terms[LOGITS] = self.logits_loss(main_tensor(student_output), main_tensor(t_out)) * w
        total = torch.stack([t.reshape(()).float() for t in terms.values()]).sum()
        return total, terms

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise if the adapters are not built yet or some are in no param group of ``optimizer``."""
        self._require_built()
        check_in_optimizer("Distillation adapter", zip(self.student_layers, self.adapters), optimizer, "kd")

    def _run_teacher(self, input_args: Any, input_kwargs: Mapping[str, Any] | None) -> tuple[dict[str, Any], Any]:
        teacher = self.teacher
        if teacher.training:
            teacher.eval()
        args, kwargs = normalize_inputs(teacher, input_args, input_kwargs)
        with torch.no_grad():
            if self._teacher_taps is None:
                return {}, teacher(*args, **kwargs)
            with self._teacher_taps:
                out = teacher(*args, **kwargs)
            return {t: self._teacher_taps[t] for t in self.pairs.values()}, out

    def _check_ready(self, student_taps: Any, student_output: Any) -> None:
        self._require_built()
        if self.pairs and student_taps is None:
            raise InvalidArgumentError(f"kd.loss needs the student's taps: lt.Taps(student, {self.student_layers!r}).")
        if self.logits_loss is not None and student_output is None:
            raise InvalidArgumentError("logits_loss needs the student's output: kd.loss(taps, x, student_output=out).")

    def _require_built(self) -> None:
        if not self.is_built:
            raise InvalidArgumentError(
                "Distillation adapters are not built. Build them before creating the optimizer: kd.setup(example_input) "
                "or lt.Distillation(..., example_input=x), then torch.optim.AdamW([*student.parameters(), *kd.parameters()])."
            )

    def _side_taps(self, side: str, names: list[str], **kwargs: Any) -> Taps:
        """``lt.Taps`` on the teacher or student; an unknown name raises saying which side it is missing from."""
        model = self.teacher if side == "teacher" else self.student
        try:
            return Taps(model, names, **kwargs)
        except LayerNotFoundError as err:
            msg = str(err)
            name = next((n for n in names if isinstance(n, str) and repr(n) in msg), None)
            if name is None:
                raise
            near = closest(name, [a for a, _ in model.named_modules() if a])
            hint = f" Closest {side} layers: {', '.join(repr(c) for c in near)}." if near else ""
            where = "key" if side == "student" else "value"
            raise LayerNotFoundError(
                f"lt.Distillation: the {side} model has no layer named {name!r} (a {where} of pairs).{hint} "
                f"pairs are {{student_layer: teacher_layer}}: check the name and the order, and list the {side}'s "
                f"layers with lt.get_layers({side})."
            ) from err

    def _set_adapters(self, adapters: Mapping[str, nn.Module]) -> None:
        unknown = [k for k in adapters if k not in self.pairs]
        if unknown:
            raise InvalidArgumentError(f"adapters names layers that are not student layers of pairs: {unknown}.")
        for i, layer in enumerate(self.pairs):
            if layer in adapters:
                self.adapters[i] = adapters[layer]
                self._explicit.add(layer)
