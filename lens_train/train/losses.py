"""Built-in losses on tapped activations: ``lt.losses``.

Auxiliary losses take ``(activation, targets)``; distillation losses take
``(student, teacher)``. Every built-in is an ``nn.Module``; one with parameters (the
deep-supervision head) is built from an example activation by :meth:`TapLoss.build`
before the optimizer exists, on the activation's device and dtype.

Example:
    >>> import torch, lens_train as lt
    >>> loss = lt.losses.l1_activity()
    >>> float(loss(torch.tensor([[-1.0, 3.0]]), None))
    2.0
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..arguments import check_int, check_number
from ..errors import InvalidArgumentError, suggestion_text
from .pooling import check_pool, pool_features

__all__ = [
    "attention_transfer", "cosine", "decorrelation", "deep_supervision", "kd_kl",
    "l1_activity", "l2_activation", "mse",
]


class TapLoss(nn.Module):
    """Base of the built-in losses: ``build`` creates parameters from an example activation."""

    # True for losses that compare a student with a teacher (distillation), not one layer with targets.
    pairwise = False

    def build(self, example: torch.Tensor) -> None:
        """Create parameters shaped for ``example`` (nothing for parameter-free losses)."""

    @property
    def is_built(self) -> bool:
        """Whether the loss is ready (parameters exist where it has any)."""
        return True


class DeepSupervision(TapLoss):
    """Cross-entropy of an auxiliary classifier (pooling, then linear or an MLP with ``hidden``) on a tapped layer.

    ``pool="avg"`` keeps one number per channel; on small feature maps ``pool="flatten"``
    keeps where things are, which a classifier of a conv layer usually needs.
    """

    def __init__(self, num_classes: int, pool: Any = "avg", hidden: int | None = None) -> None:
        super().__init__()
        check_int("num_classes", num_classes, "lt.losses.deep_supervision(num_classes=10)", low=2)
        check_int("hidden", hidden, "lt.losses.deep_supervision(num_classes=10, hidden=64)", low=1, optional=True)
        check_pool(pool)
        self.num_classes, self.pool, self.hidden = num_classes, pool, hidden
        self.head: nn.Module | None = None
        # The head's accuracy on the last batch it scored (class-index targets only).
        self.last_accuracy: torch.Tensor | None = None

    def build(self, example: torch.Tensor) -> None:
        """Create the head for ``example``'s pooled feature size."""
        if self.head is not None:
            return
        features = pool_features(example.detach(), self.pool).shape[1]
        dtype = param_dtype(example)
        if self.hidden:
            head: nn.Module = nn.Sequential(nn.Linear(features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.num_classes))
        else:
            head = nn.Linear(features, self.num_classes)
        self.head = head.to(device=example.device, dtype=dtype)

    @property
    def is_built(self) -> bool:
        """Whether the head exists."""
        return self.head is not None

    def forward(self, activation: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets is None:
            raise InvalidArgumentError("deep_supervision needs targets: aux(taps, targets=y).")
        feats = pool_features(activation, self.pool)
        if not torch.is_autocast_enabled(feats.device.type):
            feats = feats.to(next(self.head.parameters()).dtype)
        logits = self.head(feats).float()
        if targets.dtype == torch.long and targets.shape == logits.shape[:1]:
            self.last_accuracy = (logits.detach().argmax(-1) == targets).float().mean()
        return F.cross_entropy(logits, targets)


class L1Activity(TapLoss):
    """Mean absolute activation (activity sparsity)."""

    def forward(self, activation: torch.Tensor, targets: Any = None) -> torch.Tensor:
        return activation.float().abs().mean()


class L2Activation(TapLoss):
    """Mean squared activation."""

    def forward(self, activation: torch.Tensor, targets: Any = None) -> torch.Tensor:
        return activation.float().pow(2).mean()


class Decorrelation(TapLoss):
    """Mean squared off-diagonal correlation between pooled features (redundancy)."""

    def __init__(self, pool: Any = "avg", eps: float = 1e-5) -> None:
        super().__init__()
        check_pool(pool)
        self.pool, self.eps = pool, eps

    def forward(self, activation: torch.Tensor, targets: Any = None) -> torch.Tensor:
        x = pool_features(activation, self.pool).float()
        x = (x - x.mean(0)) / (x.std(0, unbiased=False) + self.eps)
        corr = x.T @ x / x.shape[0]
        d = corr.shape[0]
        off = corr - torch.diag_embed(torch.diagonal(corr))
        return off.pow(2).sum() / max(d * (d - 1), 1)


class KDKL(TapLoss):
    """Hinton distillation: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``."""

    pairwise = True

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        self.temperature = check_number("temperature", temperature, "lt.losses.kd_kl(temperature=4.0)", positive=True)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        log_p = F.log_softmax(student.float() / t, dim=-1)
        log_q = F.log_softmax(teacher.float() / t, dim=-1)
        return F.kl_div(log_p, log_q, log_target=True, reduction="batchmean") * t * t


class FeatureMSE(TapLoss):
    """FitNet hint: mean squared error between (adapted) student and teacher features."""

    pairwise = True

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_same_shape("mse", student, teacher)
        return F.mse_loss(student.float(), teacher.float())


class FeatureCosine(TapLoss):
    """``1 - cosine similarity`` of the flattened features, averaged over the batch."""

    pairwise = True

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_same_shape("cosine", student, teacher)
        return (1 - F.cosine_similarity(student.float().flatten(1), teacher.float().flatten(1), dim=1)).mean()


class AttentionTransfer(TapLoss):
    """Zagoruyko & Komodakis: distance between normalised ``mean_c |a|^p`` spatial maps."""

    pairwise = True

    def __init__(self, p: float = 2.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return (self._map(student) - self._map(teacher)).pow(2).mean()

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        attention = x.abs().pow(self.p).mean(1) if x.dim() > 2 else x.abs().pow(self.p)
        return F.normalize(attention.flatten(1), dim=1)


class FunctionLoss(TapLoss):
    """Any callable ``(a, b) -> scalar`` as a loss module."""

    def __init__(self, fn: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, a: Any, b: Any) -> torch.Tensor:
        return self.fn(a, b)


def deep_supervision(num_classes: int, pool: Any = "avg", hidden: int | None = None) -> DeepSupervision:
    """An auxiliary classifier head on a layer, trained with cross-entropy on the targets.

    Example:
        >>> import torch, lens_train as lt
        >>> loss = lt.losses.deep_supervision(num_classes=3)
        >>> loss.build(torch.zeros(2, 8, 4, 4))
        >>> loss(torch.zeros(2, 8, 4, 4), torch.tensor([0, 1])).item() > 0
        True
    """
    return DeepSupervision(num_classes, pool, hidden)


def l1_activity() -> L1Activity:
    """Mean ``|activation|``: pushes activations towards sparsity.

    Example:
        >>> import torch, lens_train as lt
        >>> float(lt.losses.l1_activity()(torch.tensor([-2.0, 2.0]), None))
        2.0
    """
    return L1Activity()


def l2_activation() -> L2Activation:
    """Mean ``activation ** 2``: keeps activations small.

    Example:
        >>> import torch, lens_train as lt
        >>> float(lt.losses.l2_activation()(torch.tensor([-2.0, 2.0]), None))
        4.0
    """
    return L2Activation()


def decorrelation(pool: Any = "avg") -> Decorrelation:
    """Penalises correlated features (mean squared off-diagonal correlation).

    Example:
        >>> import torch, lens_train as lt
        >>> x = torch.randn(64, 1).repeat(1, 2)
        >>> round(float(lt.losses.decorrelation()(x, None)), 3)
        1.0
    """
    return Decorrelation(pool)


def kd_kl(temperature: float = 4.0) -> KDKL:
    """Logit distillation loss (KL divergence at a temperature, scaled by ``T**2``).

    Example:
        >>> import torch, lens_train as lt
        >>> z = torch.randn(4, 10)
        >>> float(lt.losses.kd_kl(4.0)(z, z))
        0.0
    """
    return KDKL(temperature)


def mse() -> FeatureMSE:
    """Feature MSE between student and teacher (FitNet hint).

    Example:
        >>> import torch, lens_train as lt
        >>> float(lt.losses.mse()(torch.ones(2, 3), torch.zeros(2, 3)))
        1.0
    """
    return FeatureMSE()


def cosine() -> FeatureCosine:
    """``1 - cos`` between flattened student and teacher features.

    Example:
        >>> import torch, lens_train as lt
        >>> round(float(lt.losses.cosine()(torch.ones(2, 3), torch.ones(2, 3))), 6)
        0.0
    """
    return FeatureCosine()


def attention_transfer(p: float = 2.0) -> AttentionTransfer:
    """Attention transfer between feature maps (channel counts may differ).

    Example:
        >>> import torch, lens_train as lt
        >>> x = torch.randn(2, 8, 4, 4)
        >>> round(float(lt.losses.attention_transfer()(x, torch.cat([x, x], 1))), 6)
        0.0
    """
    return AttentionTransfer(p)


_FEATURE_LOSSES = {"mse": mse, "cosine": cosine, "attention_transfer": attention_transfer}
# Auxiliary losses a name can build without arguments, and those that need some.
_AUX_LOSSES = {"l1_activity": l1_activity, "l2_activation": l2_activation, "decorrelation": decorrelation}
_AUX_WITH_ARGS = {"deep_supervision": "lt.losses.deep_supervision(num_classes=10)"}


def as_aux_loss(loss: Any, what: str) -> TapLoss:
    """An auxiliary (one layer, with targets) :class:`TapLoss` from a built-in, a name or a callable.

    Distillation losses (``"mse"``, ``lt.losses.kd_kl()``...) compare a student with a
    teacher and are refused here with the place they belong.

    Example:
        >>> type(as_aux_loss("l1_activity", "loss for 'fc'")).__name__
        'L1Activity'
    """
    example = "lt.AuxiliaryLoss({'layer2': lt.losses.deep_supervision(num_classes=10)})"
    if isinstance(loss, str):
        if loss in _AUX_LOSSES:
            return _AUX_LOSSES[loss]()
        if loss in _AUX_WITH_ARGS:
            raise InvalidArgumentError(f"{what}: {loss!r} needs arguments; pass the loss itself: {_AUX_WITH_ARGS[loss]}.")
        if loss in _FEATURE_LOSSES or loss == "kd_kl":
            raise InvalidArgumentError(_pairwise_text(what, repr(loss), example))
        names = sorted([*_AUX_LOSSES, *_AUX_WITH_ARGS])
        raise InvalidArgumentError(f"{what}: unknown auxiliary loss {loss!r}; by name: {names}, or a callable "
                                   "(activation, targets) -> scalar." + suggestion_text(loss, names, "dir(lt.losses)"))
    if isinstance(loss, TapLoss) and loss.pairwise:
        raise InvalidArgumentError(_pairwise_text(what, f"lt.losses.{type(loss).__name__}", example))
    return as_loss(loss, what)


def _pairwise_text(what: str, name: str, example: str) -> str:
    return (f"{what}: {name} is a distillation loss: it compares student features with a teacher's, not one layer "
            f"with targets. Use it in lt.Distillation(teacher, student, pairs, feature_loss=...) or "
            f"DistillationCallback. For a layer of one model: {example}, or lt.losses.l1_activity() / "
            "l2_activation() / decorrelation().")


def as_loss(loss: Any, what: str) -> TapLoss:
    """A :class:`TapLoss` from a built-in, an ``nn.Module``, a callable, or a feature-loss name."""
    if isinstance(loss, TapLoss):
        return loss
    if isinstance(loss, str):
        if loss not in _FEATURE_LOSSES:
            raise InvalidArgumentError(
                f"Unknown {what} {loss!r}; use one of {sorted(_FEATURE_LOSSES)} or a callable (a, b) -> scalar."
            )
        return _FEATURE_LOSSES[loss]()
    if isinstance(loss, nn.Module):
        return FunctionLoss(loss)
    if callable(loss):
        return FunctionLoss(loss)
    raise InvalidArgumentError(f"{what} must be a loss from lt.losses or a callable, got {type(loss).__name__} {loss!r}.")


def _check_same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    # Broadcasting would silently compare the wrong values.
    if student.shape != teacher.shape:
        raise InvalidArgumentError(
            f"The {name} feature loss compares equal shapes, got student {tuple(student.shape)} and teacher "
            f"{tuple(teacher.shape)}. Let lt.Distillation(..., adapters='auto') map them, pass "
            "adapters={student_layer: module}, or use feature_loss='attention_transfer' (any channel count)."
        )


def param_dtype(example: torch.Tensor) -> torch.dtype:
    """Parameter dtype for a head on ``example``: its dtype, or float32 under autocast."""
    if not example.is_floating_point():
        return torch.float32
    if example.dtype in (torch.float16, torch.bfloat16) and torch.is_autocast_enabled(example.device.type):
        return torch.float32
    return example.dtype
