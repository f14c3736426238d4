"""Causal layer importance: how much worse a metric gets when one layer is ablated.

For each layer, one forward pass runs with that layer's output replaced by an
:mod:`lt.edits <lens_train.train.edits>` ablation (``"mean"``: the batch mean, or
``"zero"``), through a temporary :class:`~lens_train.Taps` with ``during="all"``. The
model runs in eval mode under ``no_grad`` and a forked RNG, with its buffers and
training flags restored afterwards, so measuring never disturbs training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..capture.api import preserved_buffers
from ..capture.inputs import normalize_inputs
from ..errors import InvalidArgumentError
from .edits import as_edit
from .taps import Taps

Metric = Callable[[Any, Any], Any]
METRICS = ("accuracy", "loss")


def accuracy(output: torch.Tensor, targets: torch.Tensor) -> float:
    """Top-1 accuracy of logits ``output`` (``(batch, classes)``) against class indices.

    Example:
        >>> accuracy(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
        0.5
    """
    return (output.argmax(-1) == targets).float().mean().item()


def cross_entropy(output: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy of logits ``output`` against class indices.

    Example:
        >>> round(cross_entropy(torch.zeros(2, 4), torch.tensor([0, 3])), 4)
        1.3863
    """
    return F.cross_entropy(output.float(), targets).item()


def resolve_metric(metric: str | Metric, higher_is_better: bool | None = None) -> tuple[Metric, bool]:
    """``(metric function, higher is better)`` for ``"accuracy"``, ``"loss"`` or a callable.

    A callable ``(output, targets) -> number`` is taken as higher-is-better unless
    ``higher_is_better=False`` says otherwise.

    Example:
        >>> resolve_metric("loss")[1], resolve_metric(lambda o, t: 0.0, higher_is_better=False)[1]
        (False, False)
    """
    if metric == "accuracy":
        return accuracy, True if higher_is_better is None else higher_is_better
    if metric == "loss":
        return cross_entropy, False if higher_is_better is None else higher_is_better
    if callable(metric):
        return metric, True if higher_is_better is None else higher_is_better
    raise InvalidArgumentError(f"metric must be one of {list(METRICS)} or a callable (output, targets) -> number, "
                               f"got {metric!r}. Example: metric='accuracy', or metric=my_f1, higher_is_better=True.")


def layer_importance(model: nn.Module, input_args: Any, targets: Any, layers: Sequence[Any], ablation: Any = "mean",
                     metric: str | Metric = "accuracy", higher_is_better: bool | None = None,
                     input_kwargs: Mapping[str, Any] | None = None) -> tuple[float, dict[Any, float]]:
    """``(baseline metric, {layer: importance})`` on one batch.

    The importance of a layer is how much worse the metric gets when that layer is
    ablated: ``baseline - ablated`` for a higher-is-better metric (accuracy),
    ``ablated - baseline`` otherwise (loss). A layer that did not run scores 0.

    Args:
        model: the model (left exactly as it was: mode, buffers, RNG).
        input_args: its positional input(s).
        targets: what ``metric`` compares the output with.
        layers: layer names as ``lt.Taps`` accepts them (modules, op labels, ``name:pass``).
        ablation: an edit spec (``"mean"``, ``"zero"``, or any :func:`lt.edits.as_edit
            <lens_train.train.edits.as_edit>` spec).
        metric: ``"accuracy"``, ``"loss"`` (cross-entropy) or ``(output, targets) -> number``.
        higher_is_better: the direction of a callable metric (default True).
        input_kwargs: keyword inputs.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
        >>> base, drops = layer_importance(model, torch.randn(8, 4), torch.randint(0, 3, (8,)), ["0", "2"], "zero")
        >>> sorted(drops), 0.0 <= base <= 1.0
        (['0', '2'], True)
    """
    score, higher = resolve_metric(metric, higher_is_better)
    edit = as_edit(ablation)
    if not layers:
        raise InvalidArgumentError("layers is empty: name the layers to ablate, e.g. layers=['blocks.0', 'blocks.1'].")
    flags = [(m, m.training) for m in model.modules()]
    try:
        with torch.no_grad(), preserved_buffers(model), torch.random.fork_rng(devices=_cuda_devices(model)):
            model.eval()
            args, kwargs = normalize_inputs(model, input_args, input_kwargs)
            taps = Taps(model, list(layers), example_input=args, example_kwargs=kwargs, during="all", missing="skip",
                        passes="list")
            try:
                base = float(score(model(*args, **kwargs), targets))
                drops = {}
                for layer in layers:
                    taps.edit({layer: edit})
                    with taps:
                        value = float(score(model(*args, **kwargs), targets))
                    drops[layer] = base - value if higher else value - base
            finally:
                taps.remove()
    finally:
        for m, was_training in flags:
            m.training = was_training
    return base, drops


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({t.device.index or 0 for t in [*model.parameters(), *model.buffers()] if t.is_cuda})
