"""``lt.AuxiliaryLoss``: weighted losses on tapped activations (deep supervision, sparsity...)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..arguments import check_number
from ..errors import InvalidArgumentError, LayerNotFoundError
from .losses import TapLoss, as_aux_loss
from .structures import select_item
from .taps import tap_example


class AuxiliaryLoss(nn.Module):
    """Losses on tapped layers, added to the task loss: ``total, terms = aux(taps, targets=y, step=s)``.

    Args:
        losses: ``{layer: loss}`` or ``{layer: [loss, ...]}`` (several terms on one layer);
            a loss is a built-in from ``lt.losses`` (or its name, for those without
            arguments: ``"l1_activity"``) or any callable ``(activation, targets) -> scalar``.
        weights: per-layer multipliers (default 1.0), or a list per layer, one per term.
        weight: a global multiplier.
        schedule: a callable ``step -> multiplier`` (see ``lt.train.schedules``), or
            ``{layer: schedule}``; the step is then passed explicitly to each call.
        select: picks one element of a structured output (an index, key, attribute or
            callable), for all layers or as ``{layer: selector}``.
        model, example_input, example_kwargs: build the heads now (or call :meth:`setup`).

    A layer with one term is logged under its name (``"layer2"``); several terms on one
    layer under ``"layer2/<loss>"`` (``"layer2/deep_supervision"``, ``"layer2/l1_activity"``).

    With ``lt.Taps(..., passes="stack")`` (or ``"list"``), a layer that ran ``P`` times
    in the step gives ``(P, B, ...)``: each pass is scored against the targets, as if the
    passes were ``P * B`` examples. Targets of shape ``(B, ...)`` are shared by every pass
    (deep supervision of each step of a recurrent block); targets of shape ``(P, B, ...)``
    give pass ``p`` the targets ``targets[p]``. The heads are built on one pass.

    Heads exist before the optimizer does; :meth:`check_optimizer` says loudly when an
    optimizer would not train them. A layer that did not run (``Taps(missing="skip")``)
    contributes a zero that still touches its head's parameters, so DDP's reducer sees
    every parameter used.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        >>> x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
        >>> aux = lt.AuxiliaryLoss({"1": lt.losses.deep_supervision(num_classes=3)}, weights={"1": 0.3},
        ...                        model=model, example_input=x)
        >>> taps = lt.Taps(model, aux.layers)
        >>> with taps:
        ...     out = model(x)
        >>> total, terms = aux(taps, targets=y)
        >>> sorted(terms), total.requires_grad
        (['1'], True)
    """

    def __init__(self, losses: Mapping[str, Any], weights: Mapping[str, float] | None = None, weight: float = 1.0,
                 schedule: Callable[[int], float] | Mapping[str, Callable[[int], float]] | None = None,
                 select: Any = None, model: nn.Module | None = None, example_input: Any = None,
                 example_kwargs: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not isinstance(losses, Mapping) or not losses:
            raise InvalidArgumentError(
                f"losses must be a non-empty dict {{layer: loss}}, got {losses!r}. "
                "Example: lt.AuxiliaryLoss({'layer2': lt.losses.deep_supervision(num_classes=10)})."
            )
        self.layers: list[str] = list(losses)
        for layer in self.layers:
            if not isinstance(layer, str):
                raise InvalidArgumentError(
                    f"losses are keyed by layer name, got {type(layer).__name__} {layer!r:.60}. Example: "
                    "lt.AuxiliaryLoss({'layer2': lt.losses.deep_supervision(num_classes=10)}).")
        per_layer = {layer: list(v) if isinstance(v, (list, tuple)) else [v] for layer, v in losses.items()}
        self.term_layers: list[str] = [layer for layer, terms in per_layer.items() for _ in terms]
        self.terms = nn.ModuleList(as_aux_loss(loss, f"loss for {layer!r}")
                                   for layer, terms in per_layer.items() for loss in terms)
        self.term_names = _term_names(per_layer, list(self.terms))
        example = "lt.AuxiliaryLoss({'layer2': loss}, weights={'layer2': 0.5}, weight=0.3)"
        self.weights = _term_weights(weights, per_layer, example)
        self.weight = check_number("weight", weight, example)
        self.schedules = _schedules(schedule, self.layers)
        self.select = dict(select) if isinstance(select, Mapping) else {layer: select for layer in self.layers}
        if (model is None) != (example_input is None and example_kwargs is None):
            raise InvalidArgumentError("Pass both model= and example_input= to build heads now, or neither and call aux.setup(model, x).")
        if model is not None:
            self.setup(model, example_input, example_kwargs)

    def setup(self, model: nn.Module, example_input: Any, example_kwargs: Mapping[str, Any] | None = None) -> AuxiliaryLoss:
        """Build every head from one example forward pass (before creating the optimizer)."""
        values, _ = tap_example(model, self.layers, example_input, example_kwargs)
        for layer, term in zip(self.term_layers, self.terms):
            value = values.get(layer)
            if value is None:
                raise LayerNotFoundError(f"AuxiliaryLoss: layer {layer!r} did not run on the example input, so its head cannot be built.")
            term.build(_loss_input(layer, term, select_item(value, self.select.get(layer))))
        return self

    @property
    def is_built(self) -> bool:
        """Whether every head exists."""
        return all(t.is_built for t in self.terms)

    def forward(self, taps: Any, targets: Any = None, step: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, {layer: weighted term})`` for this step's taps."""
        self._check_ready(step)
        scale = self.weight * (self.schedules[None](step) if None in self.schedules else 1.0)
        terms: dict[str, torch.Tensor] = {}
        device = None
        seen: dict[str, int] = {}
        for name, layer, term in zip(self.term_names, self.term_layers, self.terms):
            index = seen[layer] = seen.get(layer, -1) + 1
            value = _tap(taps, layer)
            w = scale * self.weights[layer][index] * (self.schedules[layer](step) if layer in self.schedules else 1.0)
            if value is None:
                terms[name] = _zero_term(term, device)
                continue
            value, term_targets = fold_passes(layer, _passes(taps, layer), select_item(value, self.select.get(layer)), targets)
            value = _loss_input(layer, term, value)
            device = getattr(value, "device", device)
            terms[name] = term(value, term_targets) * w
        total = torch.stack([t.reshape(()).float().to(device or t.device) for t in terms.values()]).sum()
        return total, terms

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Raise if some head is not built yet or its parameters are in no param group of ``optimizer``."""
        self._require_built()
        check_in_optimizer("AuxiliaryLoss", zip(self.term_names, self.terms), optimizer, "aux")

    def _check_ready(self, step: int | None) -> None:
        self._require_built()
        if self.schedules and step is None:
            raise InvalidArgumentError("This AuxiliaryLoss has a schedule: pass the step, aux(taps, targets=y, step=global_step).")

    def _require_built(self) -> None:
        if not self.is_built:
            missing = sorted({layer for layer, t in zip(self.term_layers, self.terms) if not t.is_built})
            raise InvalidArgumentError(
                f"AuxiliaryLoss heads for {missing} are not built. Build them before creating the optimizer: "
                "aux.setup(model, example_input), then torch.optim.AdamW([*model.parameters(), *aux.parameters()])."
            )


def check_in_optimizer(what: str, named: Iterable[tuple[str, nn.Module]],
                       optimizer: torch.optim.Optimizer, var: str) -> None:
    """Raise, naming the layers, when parameters of ``owner`` are in no param group."""
    in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, mod in named if any(id(p) not in in_opt for p in mod.parameters())]
    if missing:
        raise InvalidArgumentError(
            f"{what} parameters for {missing} are in no param group of the optimizer, so they would never train. "
            f"Create it with both: torch.optim.AdamW([*model.parameters(), *{var}.parameters()]) "
            f"(or optimizer.add_param_group({{'params': {var}.parameters()}}))."
        )


def _term_names(per_layer: Mapping[str, list[Any]], terms: list[TapLoss]) -> list[str]:
    """``layer`` for a layer's only term; ``layer/<loss name>`` (numbered if repeated) for several."""
    names: list[str] = []
    it = iter(terms)
    for layer, losses in per_layer.items():
        built = [next(it) for _ in losses]
        if len(built) == 1:
            names.append(layer)
            continue
        kinds = [_loss_name(t) for t in built]
        names += [f"{layer}/{k}" if kinds.count(k) == 1 else f"{layer}/{k}_{i}" for i, k in enumerate(kinds)]
    return names


def _loss_name(term: TapLoss) -> str:
    fn = getattr(term, "fn", None)
    if fn is not None:
        return getattr(fn, "__name__", type(fn).__name__).strip("<>")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in type(term).__name__).lstrip("_")


def _passes(taps: Any, layer: str) -> int:
    """How many passes ``taps[layer]`` holds stacked or listed (1 when it holds one)."""
    if getattr(taps, "passes", None) not in ("stack", "list"):
        return 1
    return max(1, taps.num_passes(layer))


def fold_passes(layer: str, passes: int, value: Any, targets: Any) -> tuple[Any, Any]:
    """``(P, B, ...)`` (or a list of ``P`` passes) as ``P * B`` examples, with matching targets.

    Example:
        >>> import torch
        >>> v, t = fold_passes("rnn", 3, torch.zeros(3, 2, 5), torch.tensor([1, 0]))
        >>> tuple(v.shape), t.tolist()
        ((6, 5), [1, 0, 1, 0, 1, 0])
    """
    if passes == 1:
        return value, targets
    value = torch.cat(list(value)) if isinstance(value, list) else value.flatten(0, 1)
    if not torch.is_tensor(targets):
        return value, targets
    batch = value.shape[0] // passes
    if targets.dim() >= 2 and tuple(targets.shape[:2]) == (passes, batch):
        return value, targets.flatten(0, 1)
    if targets.shape[:1] == (batch,):
        return value, targets.repeat(passes, *([1] * (targets.dim() - 1)))
    raise InvalidArgumentError(
        f"AuxiliaryLoss: layer {layer!r} ran {passes} times (batch {batch}), stacked as ({passes}, {batch}, ...), but "
        f"the targets have shape {tuple(targets.shape)}. Pass targets of shape ({batch}, ...) shared by every pass, or "
        f"({passes}, {batch}, ...) with one set per pass; or tap one pass: lt.Taps(..., passes='last')."
    )


def _tap(taps: Any, layer: str) -> Any:
    try:
        return taps[layer]
    except LayerNotFoundError as err:
        raise LayerNotFoundError(f"{err} Tap every loss layer: lt.Taps(model, aux.layers).") from None


def _loss_input(layer: str, term: Any, value: Any) -> Any:
    # Built-in losses need one tensor; a custom callable may take any structure.
    if isinstance(term, TapLoss) and not torch.is_tensor(value):
        raise InvalidArgumentError(
            f"AuxiliaryLoss: layer {layer!r} outputs a {type(value).__name__}, not a tensor, so "
            f"{type(term).__name__} cannot use it. Pick one element with select=, e.g. "
            f"lt.AuxiliaryLoss({{{layer!r}: ...}}, select={{{layer!r}: 0}})."
        )
    return value


def _zero_term(term: TapLoss, device: Any) -> torch.Tensor:
    # Touch every parameter with weight 0, so DDP sees them used in this step.
    params = list(term.parameters())
    if not params:
        return torch.zeros((), device=device)
    return torch.stack([p.reshape(-1)[0].float() for p in params]).sum() * 0.0


def _term_weights(weights: Mapping[str, Any] | None, per_layer: Mapping[str, list[Any]], example: str) -> dict[str, list[float]]:
    """``{layer: [weight per term]}`` from a float or a list per layer."""
    chosen = _per_layer(weights, list(per_layer), "weights", lambda w: w, 1.0)
    out = {}
    for layer, w in chosen.items():
        n = len(per_layer[layer])
        ws = list(w) if isinstance(w, (list, tuple)) else [w] * n
        if len(ws) != n:
            raise InvalidArgumentError(
                f"weights[{layer!r}] lists {len(ws)} weights for {n} terms. Give one number for all of the layer's "
                f"terms, or one per term: weights={{{layer!r}: {[1.0] * n}}}.")
        out[layer] = [float(check_number("weights", x, example)) for x in ws]
    return out


def _per_layer(values: Mapping[str, Any] | None, layers: list[str], name: str, cast: Any, default: Any) -> dict[str, Any]:
    values = dict(values or {})
    unknown = [k for k in values if k not in layers]
    if unknown:
        raise InvalidArgumentError(f"{name} names layers without a loss: {unknown}. Layers with losses: {layers}. "
                                   f"Example: {name}={{{layers[0]!r}: ...}}.")
    return {layer: cast(values.get(layer, default)) for layer in layers}


def _schedules(schedule: Any, layers: list[str]) -> dict[str | None, Callable[[int], float]]:
    if schedule is None:
        return {}
    if isinstance(schedule, Mapping):
        for v in schedule.values():
            if not callable(v):
                raise InvalidArgumentError(f"Each schedule must be a callable step -> multiplier, got {v!r}.")
        chosen = _per_layer(schedule, layers, "schedule", lambda s: s, None)
        return {k: v for k, v in chosen.items() if v is not None}
    if not callable(schedule):
        raise InvalidArgumentError(f"schedule must be a callable step -> multiplier, got {schedule!r}. Example: lt.train.schedules.linear_warmup(1000).")
    return {None: schedule}
