"""``lt.Probes``: linear probes on tapped layers, trained alongside the model in the same step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, MeanSquaredError, MetricCollection, R2Score
from torchmetrics.classification import MulticlassAccuracy

from ..arguments import check_callable, check_choice, check_int, check_names, check_number
from ..errors import InvalidArgumentError, LayerNotFoundError
from .pooling import check_pool, pool_features
from .structures import main_tensor
from .taps import tap_example

_SPLITS = ("train", "val", "test")


class ProbeHead(nn.Module):
    """A probe: features standardized without learned affine, then a linear map (or an MLP).

    The standardization is ``BatchNorm1d(affine=False)``, as linear-probe protocols use:
    batch statistics while training, running statistics in eval mode. It puts every
    layer's features on one scale, so one learning rate suits every layer; being
    affine-free, it adds no capacity, so the probe stays linear in the features.

    Example:
        >>> head = ProbeHead(8, 3, hidden=16)
        >>> head(torch.randn(4, 8)).shape, head.in_features
        (torch.Size([4, 3]), 8)
    """

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None, standardize: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.norm: nn.Module = nn.BatchNorm1d(in_features, affine=False) if standardize else nn.Identity()
        self.body: nn.Module = (nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, out_features))
                                if hidden else nn.Linear(in_features, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if not (self.training and isinstance(norm, nn.BatchNorm1d)):
            return self.body(norm(x))
        if x.shape[0] < 2:
            # One example has no batch statistics: standardize it with the running ones.
            return self.body(F.batch_norm(x, norm.running_mean, norm.running_var, training=False, eps=norm.eps))
        # Running statistics: the plain average of the first 10 batches, then a moving
        # average (momentum 0.1), so evaluation is right from the first updates.
        norm.momentum = max(0.1, 1.0 / (int(norm.num_batches_tracked) + 1))
        return self.body(norm(x))


class Probes:
    """One probe per layer on *detached* float32 features, with its own optimizer.

    ``probes.update(taps, targets)`` measures the probes on this step's features (before
    updating them: a fair training score) and takes one optimizer step; no second forward
    pass of the model. ``probes.evaluate(taps, targets)`` only measures (validation); it
    raises before the first update (or loaded state), when there is nothing to measure.

    Each probe standardizes its features (``BatchNorm1d`` without affine: batch statistics
    in ``update``, running statistics in ``evaluate``) before a linear map, or before a
    one-hidden-layer MLP with ``hidden=``. Classification probes report ``accuracy``
    (top-1), ``top{k}_accuracy`` (when ``1 < top_k < num_classes``) and ``loss`` (the
    mean cross-entropy); regression probes ``mse`` and ``r2``.

    Args:
        layers: the tapped layer names (as given to :class:`lt.Taps`).
        num_classes: classes of the targets (classification), or ``None`` with
            ``task="regression"``.
        pool: ``"avg"``, ``"flatten"``, a token index, or a callable (see ``pool_features``).
        lr: learning rate of the probes' Adam optimizer.
        task: ``"classification"`` (accuracy) or ``"regression"`` (MSE and R²).
        num_outputs: regression target size (default 1).
        optimizer: a factory ``params -> torch.optim.Optimizer`` replacing Adam.
        hidden: width of an MLP probe's hidden layer (None: a linear probe).
        standardize: standardize the features before the probe (see :class:`ProbeHead`).
        top_k: also report top-k accuracy for this k (classification).

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        >>> probes = lt.Probes(["1"], num_classes=2, lr=0.05)
        >>> taps = lt.Taps(model, probes.layers)
        >>> x = torch.randn(64, 2); y = (x[:, 0] > 0).long()
        >>> for _ in range(30):
        ...     with taps:
        ...         _ = model(x)
        ...     _ = probes.update(taps, y)
        >>> probes.compute()["1"] > 0.8
        True
        >>> sorted(probes.compute_all()["1"])
        ['accuracy', 'loss']
    """

    def __init__(self, layers: list[str] | str, num_classes: int | None = None, pool: Any = "avg", lr: float = 1e-3,
                 task: str = "classification", num_outputs: int = 1,
                 optimizer: Callable[[Any], torch.optim.Optimizer] | None = None, hidden: int | None = None,
                 standardize: bool = True, top_k: int = 5) -> None:
        example = "lt.Probes(['layer2'], num_classes=10, lr=1e-3)"
        check_names("layers", [layers] if isinstance(layers, str) else layers, example, keywords=())
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        check_choice("task", task, ("classification", "regression"), "lt.Probes(['layer2'], task='regression', num_outputs=1)")
        check_int("num_classes", num_classes, example, low=2, optional=task != "classification")
        check_int("num_outputs", num_outputs, "lt.Probes(['layer2'], task='regression', num_outputs=1)", low=1)
        check_number("lr", lr, example, positive=True)
        check_callable("optimizer", optimizer, "optimizer=lambda params: torch.optim.SGD(params, lr=0.1)")
        check_pool(pool)
        for name, value in (("hidden", hidden), ("top_k", top_k)):
            if (value is not None or name == "top_k") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}. Example: lt.Probes(..., {name}=5).")
        self.hidden, self.standardize, self.top_k = hidden, bool(standardize), top_k
        self.num_updates = 0
        self.num_classes, self.pool, self.lr, self.task, self.num_outputs = num_classes, pool, lr, task, num_outputs
        self._make_optimizer = optimizer or (lambda params: torch.optim.Adam(params, lr=lr))
        self.heads = nn.ModuleDict()
        self.optimizer: torch.optim.Optimizer | None = None
        self.metrics: dict[str, dict[str, MetricCollection]] = {split: {} for split in _SPLITS}
        self.losses: dict[str, dict[str, MeanMetric]] = {split: {} for split in _SPLITS}

    # -- building -----------------------------------------------------------------------
    def setup(self, model: nn.Module, example_input: Any, example_kwargs: Mapping[str, Any] | None = None) -> Probes:
        """Build every probe now from one example pass (otherwise the first update builds them)."""
        values, _ = tap_example(model, self.layers, example_input, example_kwargs)
        self._build({layer: v for layer, v in values.items() if v is not None})
        return self

    def _build(self, features: Mapping[str, Any]) -> None:
        new: list[nn.Parameter] = []
        for layer, value in features.items():
            key = _key(layer)
            if key not in self.heads:
                feats = self._features(value)
                self.heads[key] = self._head(feats.shape[1]).to(feats.device)
                self._add_metrics(layer, feats.device)
                new += list(self.heads[key].parameters())
        if new and self.optimizer is None:
            self.optimizer = self._make_optimizer(new)
        elif new:
            self.optimizer.add_param_group({"params": new})

    def _head(self, in_features: int) -> ProbeHead:
        out = self.num_classes if self.task == "classification" else self.num_outputs
        return ProbeHead(in_features, out, self.hidden, self.standardize)

    def _add_metrics(self, layer: str, device: Any = None) -> None:
        for split in _SPLITS:
            self.metrics[split][layer] = self._metric().to(device)
            self.losses[split][layer] = MeanMetric().to(device)

    def _metric(self) -> MetricCollection:
        if self.task == "regression":
            return MetricCollection({"mse": MeanSquaredError(), "r2": R2Score()})
        metrics = {"accuracy": MulticlassAccuracy(self.num_classes, average="micro")}
        if 1 < self.top_k < self.num_classes:
            metrics[f"top{self.top_k}_accuracy"] = MulticlassAccuracy(self.num_classes, top_k=self.top_k, average="micro")
        return MetricCollection(metrics)

    def _features(self, value: Any) -> torch.Tensor:
        return pool_features(main_tensor(value).detach(), self.pool).float()

    # -- every step -----------------------------------------------------------------------
    def update(self, taps: Any, targets: torch.Tensor) -> dict[str, float]:
        """Score the probes on this step's taps, then train them one step; returns ``{layer: loss}``."""
        feats = self._gather(taps)
        self._check_targets(feats, targets, "update")
        self._build(feats)
        losses: dict[str, torch.Tensor] = {}
        self.heads.train()
        with torch.enable_grad():
            for layer, x in feats.items():
                pred = self.heads[_key(layer)](self._features(x))
                self._check_width(layer, pred, targets, "update")
                losses[layer] = self._loss(pred, targets)
                self._score("train", layer, pred, targets, losses[layer])
            self.optimizer.zero_grad(set_to_none=True)
            torch.stack(list(losses.values())).sum().backward()
        self.optimizer.step()
        self.num_updates += 1
        return {layer: float(v.detach()) for layer, v in losses.items()}

    def evaluate(self, taps: Any, targets: torch.Tensor, split: str = "val") -> dict[str, float]:
        """Score the probes without training them on ``split`` (``"val"`` or ``"test"``); returns ``{layer: loss}``."""
        _check_split(split)
        feats = self._gather(taps)
        self._check_targets(feats, targets, "evaluate")
        if not self.num_updates:
            raise InvalidArgumentError(
                "probes.evaluate: the probes were never trained, so their scores would mean nothing. Train them "
                "first with probes.update(taps, targets) in the training steps, or restore trained ones with "
                "probes.load_state_dict(state)."
            )
        self._build(feats)
        out: dict[str, float] = {}
        self.heads.eval()
        with torch.no_grad():
            for layer, x in feats.items():
                pred = self.heads[_key(layer)](self._features(x))
                self._check_width(layer, pred, targets, "evaluate")
                loss = self._loss(pred, targets)
                self._score(split, layer, pred, targets, loss)
                out[layer] = float(loss)
        return out

    def compute(self, split: str = "train") -> dict[str, float]:
        """``{layer: accuracy}`` (classification) or ``{layer: r2}`` (regression) since the last reset."""
        detail = self.compute_all(split)
        name = "accuracy" if self.task == "classification" else "r2"
        return {layer: values[name] for layer, values in detail.items()}

    def compute_all(self, split: str = "train") -> dict[str, dict[str, float]]:
        """Every metric per layer: ``{layer: {"accuracy", "top5_accuracy", "loss"}}`` or ``{layer: {"mse", "r2"}}``."""
        _check_split(split)
        out = {}
        for layer, m in self.metrics[split].items():
            if any(x.update_count for x in m.values()):
                out[layer] = {k: float(v) for k, v in m.compute().items()}
                if self.task == "classification":
                    out[layer]["loss"] = float(self.losses[split][layer].compute())
        return out

    def reset(self, split: str | None = None) -> None:
        """Reset the metrics of one split (``"train"``/``"val"``/``"test"``) or of all."""
        for s in _SPLITS if split is None else (split,):
            _check_split(s)
            # Fresh states must not be inference tensors (a reset inside trainer.validate), or
            # a later in-place update outside inference mode fails.
            with torch.inference_mode(False):
                for m in [*self.metrics[s].values(), *self.losses[s].values()]:
                    m.reset()

    def _gather(self, taps: Any) -> dict[str, Any]:
        feats = {}
        for layer in self.layers:
            try:
                value = taps[layer]
            except LayerNotFoundError as err:
                raise LayerNotFoundError(f"{err} Tap every probed layer: lt.Taps(model, probes.layers).") from None
            if value is not None:
                feats[layer] = value
        return feats

    def _check_targets(self, feats: Mapping[str, Any], targets: Any, call: str) -> None:
        """Cheap checks of ``targets`` (dtype; class range via min/max) before any probe runs."""
        where = f"probes.{call}: probe on layer {next(iter(feats), self.layers[0])!r}"
        if not isinstance(targets, torch.Tensor):
            raise InvalidArgumentError(f"{where} needs targets as a torch.Tensor, got {type(targets).__name__}. "
                                       f"Pass torch.as_tensor(targets).")
        if self.task == "regression":
            if not targets.is_floating_point():
                raise InvalidArgumentError(
                    f"{where} (task='regression', num_outputs={self.num_outputs}) needs float targets, got dtype "
                    f"{targets.dtype}. Pass targets.float(), or use task='classification' with num_classes for labels."
                )
            return
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise InvalidArgumentError(
                f"{where} (num_classes={self.num_classes}) needs integer class labels, got dtype {targets.dtype}. "
                f"Pass targets.long(), or use lt.Probes(..., task='regression') for real-valued targets."
            )
        if targets.numel():
            lo, hi = int(targets.min()), int(targets.max())
            if lo < 0 or hi >= self.num_classes:
                bad = lo if lo < 0 else hi
                fix = (f"lt.Probes(..., num_classes={hi + 1})" if lo >= 0
                       else "labels in [0, num_classes) (e.g. drop or remap ignore labels such as -1)")
                raise InvalidArgumentError(
                    f"{where} got class label {bad}, outside [0, num_classes={self.num_classes}). Use {fix}."
                )

    def _check_width(self, layer: str, pred: torch.Tensor, targets: torch.Tensor, call: str) -> None:
        if self.task == "regression" and targets.numel() != pred.numel():
            raise InvalidArgumentError(
                f"probes.{call}: probe on layer {layer!r} (num_outputs={self.num_outputs}) predicts shape "
                f"{tuple(pred.shape)} but targets have shape {tuple(targets.shape)}. Pass targets of shape "
                f"({pred.shape[0]}, {self.num_outputs}) or ({pred.shape[0]},), or lt.Probes(..., num_outputs=N) "
                f"for N outputs per example."
            )

    def _loss(self, pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "classification":
            return F.cross_entropy(pred, targets)
        return F.mse_loss(pred, targets.float().reshape(pred.shape))

    def _score(self, split: str, layer: str, pred: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> None:
        pred = pred.detach()
        if self.task == "classification":
            self.metrics[split][layer].update(pred, targets)
            self.losses[split][layer].update(loss.detach(), weight=targets.shape[0])
        else:
            t = targets.float().reshape(pred.shape)
            self.metrics[split][layer].update(pred.squeeze(-1) if self.num_outputs == 1 else pred,
                                              t.squeeze(-1) if self.num_outputs == 1 else t)

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Probe weights, optimizer state and feature sizes (metrics are per-epoch and not saved)."""
        return {
            "heads": self.heads.state_dict(),
            "in_features": {k: h.in_features for k, h in self.heads.items()},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "num_updates": self.num_updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`; probes not built yet are built from the saved sizes."""
        if not self.heads and state.get("in_features"):
            for key, n in state["in_features"].items():
                self.heads[key] = self._head(n)
            for layer in self.layers:
                self._add_metrics(layer)
            self.optimizer = self._make_optimizer(self.heads.parameters())
        self._apply_state(state)
        # States written before the count was saved hold trained probes.
        self.num_updates = int(state.get("num_updates", 1))

    def _apply_state(self, state: Mapping[str, Any]) -> None:
        heads = state["heads"]
        if heads and not any(".body." in k for k in heads):  # plain nn.Linear probes of older versions
            heads = {k.replace(".", ".body.", 1) if k.count(".") == 1 else k: v for k, v in heads.items()}
            self.heads.load_state_dict(heads, strict=False)
        else:
            self.heads.load_state_dict(heads)
        if state.get("optimizer") is not None and self.optimizer is not None:
            self.optimizer.load_state_dict(state["optimizer"])


def _key(layer: str) -> str:
    # ModuleDict keys cannot contain "."; layer names often do.
    return layer.replace(".", "\u00b7")


def _check_split(split: str) -> None:
    if split not in _SPLITS:
        raise InvalidArgumentError(f"split must be one of {list(_SPLITS)}, got {split!r}.")
