"""Turn the ``lens`` configs into callbacks.

Layer names contain dots (``blocks.1``), which Hydra's command line reads as nesting,
so configs list auxiliary terms and distillation pairs as records::

    terms: [{layer: blocks.1, loss: deep_supervision, weight: 0.3, num_classes: 10}]
    pairs: [{student: blocks.1, teacher: blocks.2, weight: 1.0}]

and the builders here convert them into the callbacks' dict arguments. A record's
``loss`` is a factory name from ``lt.losses`` (its other keys are that
factory's arguments) or a ``{_target_: ...}`` node instantiated as is.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from ..errors import AmbiguousLayerError, InvalidArgumentError, LayerNotFoundError, suggestion_text

_TERM_KEYS = ("layer", "loss", "weight")
_PAIR_KEYS = ("student", "teacher", "weight")


def _plain(records: Any) -> Any:
    return OmegaConf.to_container(records, resolve=True) if OmegaConf.is_config(records) else records


def _records(records: Any, what: str, required: Sequence[str], example: str) -> list[dict[str, Any]]:
    records = _plain(records)
    if isinstance(records, Mapping) or not isinstance(records, Sequence) or isinstance(records, str) or not records:
        raise InvalidArgumentError(f"{what} must be a non-empty list of records, got {records!r}. Example: {example}")
    for i, record in enumerate(records):
        missing = [k for k in required if not isinstance(record, Mapping) or k not in record]
        if missing:
            raise InvalidArgumentError(f"{what}[{i}] = {record!r} lacks {missing}. Example: {example}")
    return [dict(r) for r in records]


def loss_factories() -> dict[str, Any]:
    """The loss factories a record's ``loss`` may name: every ``lt.losses`` function that builds a loss.

    Example:
        >>> {"deep_supervision", "l1_activity", "mse"} <= set(loss_factories())
        True
    """
    from ..train import losses

    found = {}
    for name, obj in vars(losses).items():
        returns = getattr(losses, str(getattr(obj, "__annotations__", {}).get("return", "")), None)
        is_factory = isinstance(returns, type) and issubclass(returns, losses.TapLoss) and name != "as_loss"
        if inspect.isfunction(obj) and not name.startswith("_") and is_factory:
            found[name] = obj
    return found


def resolve_loss(loss: Any, kwargs: Mapping[str, Any], where: str) -> Any:
    """A loss callable from a record: an ``lt.losses`` factory name, a ``_target_`` node, or a callable.

    Example:
        >>> resolve_loss(abs, {}, "terms[0]") is abs
        True
    """
    if callable(loss):
        return loss
    if isinstance(loss, Mapping) and "_target_" in loss:
        return instantiate(loss, **kwargs)
    if not isinstance(loss, str):
        raise InvalidArgumentError(
            f"{where}: loss must be a name from lt.losses or a {{_target_: ...}} node, got {loss!r}. "
            "Example: {layer: blocks.1, loss: l1_activity, weight: 1e-4}."
        )
    factories = loss_factories()
    if loss not in factories:
        raise InvalidArgumentError(
            f"{where}: unknown loss {loss!r}." + suggestion_text(loss, factories, "lens_train.experiments.builders.loss_factories()")
        )
    factory = factories[loss]
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise InvalidArgumentError(
            f"{where}: lt.losses.{loss}(**{kwargs!r}) failed: {exc}. Record keys other than "
            f"{list(_TERM_KEYS)} are passed to the loss factory; see help(lt.losses.{loss})."
        ) from None


def auxiliary_terms(terms: Any) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """``(losses, weights)`` for ``AuxiliaryLossCallback`` from a list of term records.

    A layer named by several records gets a list of terms, with one weight each.

    Example:
        >>> losses, weights = auxiliary_terms([{"layer": "blocks.1", "loss": abs, "weight": 0.5},
        ...                                    {"layer": "blocks.1", "loss": "l1_activity", "weight": 1e-4}])
        >>> len(losses["blocks.1"]), weights
        (2, {'blocks.1': [0.5, 0.0001]})
    """
    example = "[{layer: blocks.1, loss: deep_supervision, weight: 0.3, num_classes: 10}]"
    losses: dict[str, list[Any]] = {}
    weights: dict[str, list[float]] = {}
    for i, record in enumerate(_records(terms, "terms", ("layer", "loss"), example)):
        layer = str(record.pop("layer"))
        weight = record.pop("weight", None)
        losses.setdefault(layer, []).append(resolve_loss(record.pop("loss"), record, f"terms[{i}]"))
        weights.setdefault(layer, []).append(1.0 if weight is None else float(weight))
    return losses, weights


def distillation_pairs(pairs: Any) -> tuple[dict[str, str], dict[str, float]]:
    """``(pairs, weights)`` dicts (``{student_layer: teacher_layer}``) from a list of pair records.

    Example:
        >>> distillation_pairs([{"student": "blocks.1", "teacher": "blocks.2", "weight": 2.0}])
        ({'blocks.1': 'blocks.2'}, {'blocks.1': 2.0})
    """
    example = "[{student: blocks.1, teacher: blocks.2, weight: 1.0}]"
    mapping: dict[str, str] = {}
    weights: dict[str, float] = {}
    for i, record in enumerate(_records(pairs, "pairs", ("student", "teacher"), example)):
        extra = sorted(set(record) - set(_PAIR_KEYS))
        if extra:
            raise InvalidArgumentError(f"pairs[{i}] has unknown keys {extra}; a pair has {list(_PAIR_KEYS)}. Example: {example}")
        student = str(record["student"])
        mapping[student] = str(record["teacher"])
        if record.get("weight") is not None:
            weights[student] = float(record["weight"])
    return mapping, weights


def auxiliary_loss_callback(terms: Any, weight: float = 1.0, schedule: Any = None, **kwargs: Any) -> Callback:
    """``AuxiliaryLossCallback`` from term records (the ``lens/aux_loss.yaml`` target).

    Example:
        >>> cb = auxiliary_loss_callback([{"layer": "blocks.1", "loss": "l1_activity", "weight": 1e-4}])
        >>> type(cb).__name__
        'AuxiliaryLossCallback'
    """
    from ..callbacks import AuxiliaryLossCallback

    losses, weights = auxiliary_terms(terms)
    return AuxiliaryLossCallback(losses, weights=weights, weight=weight, schedule=schedule, **kwargs)


def distillation_callback(teacher: Any, pairs: Any = None, weight: float = 1.0, **kwargs: Any) -> Callback:
    """``DistillationCallback`` from pair records (the ``lens/distill.yaml`` target); ``pairs: null`` distils logits only.

    Example:
        >>> import torch
        >>> cb = distillation_callback(torch.nn.Sequential(torch.nn.Linear(2, 2)), [{"student": "0", "teacher": "0"}])
        >>> type(cb).__name__
        'DistillationCallback'
    """
    from ..callbacks import DistillationCallback

    mapping, weights = distillation_pairs(pairs) if pairs else ({}, {})
    weights = {**(kwargs.pop("weights", None) or {}), **weights}  # e.g. {logits: 0.5} from the config
    return DistillationCallback(teacher, mapping, weights=weights or None, weight=weight, **kwargs)


def build_lens_callbacks(lens: DictConfig | Mapping[str, Any] | None, teacher: Any = None) -> list[Callback]:
    """Instantiate every non-null entry of the ``lens`` config, in config order.

    An entry with a ``teacher`` key (``lens.distill``) receives ``teacher``; without a
    teacher it is skipped, which is how the distillation flow trains its baseline student.

    Example:
        >>> build_lens_callbacks({"probes": None})
        []
    """
    callbacks: list[Callback] = []
    for name, entry in (lens or {}).items():
        if entry is None:
            continue
        if "teacher" in entry:
            if teacher is None:
                continue
            callbacks.append(instantiate(entry, teacher=teacher, _convert_="all"))
        else:
            # Plain lists and dicts, as the callbacks' signatures say (not ListConfig).
            callbacks.append(instantiate(entry, _convert_="all"))
    return callbacks


def short_layer_names(module: Any) -> dict[str, str]:
    """Each module address of ``module`` -> the name users write for it.

    The LightningModule's attribute prefix (``net.``) is dropped where the rest is a
    unique suffix, so ``net.blocks.2`` reads ``blocks.2``.

    Example:
        >>> import torch
        >>> m = torch.nn.Module(); m.net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> short_layer_names(m)
        {'net': 'net', 'net.0': '0'}
    """
    from ..train.selection import ModuleIndex

    index = ModuleIndex(module)
    names = {}
    for address in index.addresses():
        rest = address.partition(".")[2]
        try:
            names[address] = rest if rest and index.find(rest) == address else address
        except AmbiguousLayerError:
            names[address] = address
    return names


def check_lens_layers(module: Any, callbacks: Sequence[Callback]) -> None:
    """Raise :class:`LayerNotFoundError` for a lens callback's layer name ``module`` lacks, before any training.

    Globs, op labels (``relu_5``, resolved on an example pass) and predicates are left
    for the callbacks; module names are checked here, with suggestions in the short form.

    Example:
        >>> import torch
        >>> from lens_train.callbacks import ProbeCallback
        >>> m = torch.nn.Module(); m.net = torch.nn.Sequential(torch.nn.Linear(2, 2))
        >>> check_lens_layers(m, [ProbeCallback(layers=["0"], num_classes=2)])
        >>> check_lens_layers(m, [ProbeCallback(layers=["1"], num_classes=2)])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_train.errors.LayerNotFoundError: ProbeCallback: the model has no layer named '1'...
    """
    from ..callbacks._base import TapCallback
    from ..train.selection import _OP_LABEL, ModuleIndex, split_pass

    index = None
    for callback in callbacks:
        if isinstance(callback, TapCallback):
            layers = callback.tap_layers()
        else:
            layers = getattr(callback, "layers", None)
            if not isinstance(layers, (list, tuple)):
                continue
        for name in layers:
            if not isinstance(name, str):
                continue
            base, _ = split_pass(name)
            if any(c in base for c in "*?[") or _OP_LABEL.match(base):
                continue
            index = index or ModuleIndex(module)
            if index.find(base) is None:
                raise LayerNotFoundError(
                    f"{type(callback).__name__}: the model has no layer named {name!r}."
                    + suggestion_text(base, short_layer_names(module).values(), "lt.get_layers(model)")
                )
