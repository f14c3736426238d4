"""``lt.Extract``: an ``nn.Module`` that computes only what lies between two sets of nodes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..capture.api import check_supported, record_forward
from ..capture.build import build_log
from ..capture.calls import op_outputs
from ..capture.printing import shape_text
from ..capture.recorder import CapturePlan
from ..capture.records import TensorArg
from ..arguments import fail
from ..errors import (
    AmbiguousLayerError,
    DifferentPathError,
    IncompatibleInputError,
    InvalidArgumentError,
    LayerNotFoundError,
    suggestion_text,
)
from .plan import Check, ExtractPlan, Step, build_plan
from .sizes import SizeTracer, TracedInt, TracedShape, evaluate

Nodes = str | list[str] | tuple[str, ...] | Mapping[str, str] | None


@dataclass
class ExtractSummary:
    """What an extracted module takes, computes and returns. ``str(summary)`` prints it.

    Attributes:
        inputs: input name -> node label (``node_in``), in positional order.
        extra_inputs: node label -> example shape, for tensors from before ``node_in``
            that the subgraph still reads; pass them by name: ``sub(h, **{label: t})``.
        outputs: output name -> node label.
        ops: labels of the replayed ops, in order.
        fixed_sizes: sizes that stay at their example value whatever the input, one line
            per op that uses them (``"view_1_3: view size argument(s) 2, 4: plain ints..."``):
            plain-int arguments of size-taking ops (constants, or sizes computed outside
            integer arithmetic such as ``int(n * 0.5)``), and sizes read from a tensor the
            sub-model never sees when no input dimension matches them. A later input
            these sizes do not fit raises :class:`~lens_train.errors.IncompatibleInputError`.
        matched_sizes: sizes read from a tensor the sub-model never sees (the model's
            input, when ``node_in`` is later), taken from the input dimension that had
            the same size on the example.
        unchecked: path conditions the sub-model cannot re-check (they need more inputs).
    """

    inputs: dict[str, str]
    extra_inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, str]
    ops: list[str]
    fixed_sizes: list[str] = field(default_factory=list)
    matched_sizes: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"Extract: {len(self.ops)} ops replayed",
                 "  inputs: " + (", ".join(f"{n} <- {lab}" for n, lab in self.inputs.items()) or "none")]
        if self.extra_inputs:
            lines.append("  extra inputs (pass by name): " + ", ".join(f"{lab} ({shape_text(s)})" for lab, s in self.extra_inputs.items()))
        lines.append("  outputs: " + ", ".join(f"{n} <- {lab}" for n, lab in self.outputs.items()))
        lines.extend(f"  fixed size: {s}" for s in self.fixed_sizes)
        lines.extend(f"  matched size: {s}" for s in self.matched_sizes)
        lines.extend(f"  unchecked: {s}" for s in self.unchecked)
        return "\n".join(lines)


class Extract(nn.Module):
    """A sub-model cut from ``model``'s logged graph between ``node_in`` and ``node_out``.

    The model runs once on the example input with every op recorded; the module then
    replays only the ops needed to get from ``node_in`` to ``node_out``, with the
    model's own parameters (shared: gradients reach them) and live buffers. It works
    on models with Python control flow, for the path the example input took: a later
    input that would take another path (a tensor ``if`` or a size comparison going
    the other way, a train/eval switch for dropout or BatchNorm) raises
    :class:`~lens_train.errors.DifferentPathError`. Sizes the model's code read
    from tensors (``x.size(0)`` in a ``view``) follow the new input.

    Args:
        model: the full model.
        input_args, input_kwargs: an example input (same rules as ``log_forward_pass``).
        node_in: where the sub-model starts: a label (one positional input), a list of
            labels, or ``{label: name}``; None starts from the model's own inputs.
        node_out: what it returns: a label (a tensor), a list (a tuple) or
            ``{label: name}`` (a dict). Labels are anything ``log[...]`` accepts;
            ``lt.get_nodes(model, x)`` lists them.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> lt.get_nodes(model, torch.ones(1, 4))
        ['linear_1_1', 'relu_1_2', 'linear_2_3']
        >>> head = lt.Extract(model, torch.ones(1, 4), node_in={"relu_1_2": "h"}, node_out="linear_2_3")
        >>> h = torch.randn(5, 8)
        >>> torch.allclose(head(h), model[2](h))
        True
    """

    def __init__(self, model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None,
                 node_in: Nodes = None, node_out: Nodes = None) -> None:
        super().__init__()
        check_supported(model)
        if node_out is None:
            raise InvalidArgumentError("Extract needs node_out. Example: lt.Extract(model, x, node_in='relu_2_5', node_out='linear_3_22'); lt.get_nodes(model, x) lists the labels.")
        for name, nodes in (("node_in", node_in), ("node_out", node_out)):
            _check_nodes(name, nodes)
        self.model = model
        self.extracted_in_train_mode = model.training
        self.training = model.training  # the sub-model takes the source's mode (its own flag only)
        tracer = SizeTracer()
        capture = CapturePlan(save="none", keep_templates=True, sink=tracer.note_record)
        with tracer:
            recorder, _output, elapsed = record_forward(model, input_args, input_kwargs, capture, 0)
        self.log = build_log(recorder, model, {"random_seed": 0, "elapsed_s": elapsed, "train_mode": False})
        records = recorder.records
        ins, _ = self._resolve(node_in, "node_in", default=[r.index for r in records if r.is_input])
        outs, form = self._resolve(node_out, "node_out")
        self.plan: ExtractPlan = build_plan(records, self.log, tracer, ins, outs, form)
        self.summary = self._summary()

    def _resolve(self, nodes: Nodes, what: str, default: list[int] | None = None) -> tuple[list[tuple[int, str]], str]:
        if nodes is None:
            return [(i, self.log[i].layer_label) for i in default or []], "tuple"
        if isinstance(nodes, str):
            pairs, form = [(nodes, nodes)], "tensor"
        elif isinstance(nodes, Mapping):
            pairs, form = list(nodes.items()), "dict"
        elif isinstance(nodes, (list, tuple)) and all(isinstance(n, str) for n in nodes):
            pairs, form = [(n, n) for n in nodes], "tuple"
        else:
            raise InvalidArgumentError(f"{what} must be a label, a list of labels or a {{label: name}} dict, got {nodes!r}. Example: {what}={{'relu_2_5': 'h'}}.")
        resolved = [(self._node(key, what), str(name)) for key, name in pairs]
        if len({i for i, _ in resolved}) != len(resolved):
            raise InvalidArgumentError(f"{what} names the same node twice: {nodes!r}.")
        return resolved, form

    def _node(self, key: object, what: str) -> int:
        try:
            return self.log[key].operation_index
        except (LayerNotFoundError, AmbiguousLayerError) as exc:
            nodes = [layer.layer_label for layer in self.log if not layer.is_input and not layer.is_output]
            listing = "lt.get_nodes(model, x) (a module address such as 'layer1.0' names that module's output)"
            if isinstance(exc, AmbiguousLayerError):
                raise AmbiguousLayerError(f"{what}: {exc} List every node with {listing}.") from None
            raise LayerNotFoundError(f"{what}={key!r} is not a node of this forward pass."
                                     + suggestion_text(str(key), nodes + list(self.log.modules), listing)) from None

    def _summary(self) -> ExtractSummary:
        p = self.plan
        fixed = _by_text((label, text) for label, note in p.size_notes.items() for text in note.fixed)
        matched = _by_text((label, text) for label, note in p.size_notes.items() for text in note.matched)
        outs = p.output_names or [p.labels[i] for i in p.output_records]
        return ExtractSummary(
            inputs=dict(zip(p.input_names, (p.labels[i] for i in p.input_records))),
            extra_inputs={p.labels[i]: p.example_shapes[i] for i in p.extra_records},
            outputs=dict(zip(outs, (p.labels[i] for i in p.output_records))),
            ops=[s.label for s in p.steps if s.kind == "op"], fixed_sizes=fixed, matched_sizes=matched,
            unchecked=list(p.unchecked),
        )

    # -- running ------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor) -> Any:
        """Run the extracted ops: ``node_in`` tensors positionally (or by name), extra inputs by name."""
        plan = self.plan
        if plan.mode_dependent and self.training != self.extracted_in_train_mode:
            mode = "train" if self.extracted_in_train_mode else "eval"
            raise DifferentPathError(
                f"This sub-model was extracted in {mode} mode and its ops (dropout / batch norm) depend on the mode; "
                f"it is now in {'train' if self.training else 'eval'} mode. Re-extract after model.{'train' if self.training else 'eval'}(): "
                "lt.Extract(model, x, node_in=..., node_out=...)."
            )
        env = self._bind(inputs, named)
        for rec in plan.mutated_inputs:  # an in-place op would change the caller's tensor
            env[rec] = env[rec].clone()

        def size_of(rec: int, dim: int | None) -> int | None:
            t = env.get(rec)
            if t is None:
                target = plan.fallback_sizes.get((rec, dim))
                t = env.get(target[0]) if target else None
                if t is None:
                    return None
                dim = target[1]
            return t.numel() if dim is None else t.shape[dim]

        self._check(plan.checks.get(-1, ()), env, size_of)
        for pos, step in enumerate(plan.steps):
            self._run(step, env, size_of)
            if pos in plan.checks:
                self._check(plan.checks[pos], env, size_of)
        values = [env[i] for i in plan.output_records]
        if plan.output_form == "tensor":
            return values[0]
        if plan.output_form == "dict":
            return dict(zip(plan.output_names or [], values))
        return tuple(values)

    def _bind(self, inputs: tuple, named: dict) -> dict[int, torch.Tensor]:
        plan = self.plan
        names = plan.input_names
        call = f"sub({', '.join(names)}{''.join(f', **{{{n!r}: tensor}}' for n in plan.extra_names)})"
        if len(inputs) > len(names):
            raise InvalidArgumentError(f"This sub-model takes {len(names)} positional input(s) {names}, got {len(inputs)}. Call it as {call}.")
        values = dict(zip(names, inputs))
        for key, v in named.items():
            if key in values or (key not in names and key not in plan.extra_names):
                why = "is given twice" if key in values else "is not an input of this sub-model"
                raise InvalidArgumentError(f"Input {key!r} {why}." + suggestion_text(key, names + plan.extra_names, "sub.summary") + f" Call it as {call}.")
            values[key] = v
        missing = [n for n in names + plan.extra_names if n not in values]
        if missing:
            raise InvalidArgumentError(f"This sub-model also needs {missing} (see sub.summary: tensors from before node_in that the subgraph reads). Call it as {call}.")
        for key, v in values.items():
            if not isinstance(v, torch.Tensor):
                raise InvalidArgumentError(f"Input {key!r} must be a tensor, got {type(v).__name__}. Call it as {call}.")
        return {rec: values[n] for rec, n in zip(plan.input_records + plan.extra_records, names + plan.extra_names)}

    def _run(self, step: Step, env: dict[int, Any], size_of: Any) -> None:
        if step.kind == "copy":
            env[step.records[0][0]] = env[step.source]
            return
        if step.kind == "buffer":
            env[step.records[0][0]] = self.model.get_buffer(step.source)
            return
        if step.kind == "const":
            env[step.records[0][0]] = step.source
            return
        args = tuple(_resolve(a, env, size_of) for a in step.args)
        kwargs = {k: _resolve(v, env, size_of) for k, v in step.kwargs.items()}
        try:
            result = step.func(*args, **kwargs)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise IncompatibleInputError(self._incompatible(step, env, exc)) from exc
        outputs = op_outputs(getattr(step.func, "__name__", ""), args, kwargs, result)
        for rec, k, ndim in step.records:
            if k >= len(outputs) or outputs[k].dim() != ndim:
                got = "no such output" if k >= len(outputs) else f"{outputs[k].dim()} dims"
                raise DifferentPathError(
                    f"Replaying {step.label} on this input gave {got} where the example gave {ndim} dims: the input takes a "
                    "different path (or a size the model computed outside integer arithmetic is fixed; see sub.summary). "
                    "Re-extract with an example like this input."
                )
            env[rec] = outputs[k]

    def _incompatible(self, step: Step, env: dict[int, Any], exc: BaseException) -> str:
        plan = self.plan
        given = []
        for rec, name in zip(plan.input_records + plan.extra_records, plan.input_names + plan.extra_names):
            now, example = shape_text(tuple(env[rec].shape)), shape_text(plan.example_shapes[rec])
            given.append(f"{name} {now}" + ("" if now == example else f" (example {example})"))
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        text = f"This input does not fit the sub-model: replaying {step.label} failed with {reason!r}. Inputs: {', '.join(given)}."
        note = plan.size_notes.get(step.label)
        if note is not None:
            text += " " + step.label + " uses sizes that do not follow the input: " + "; ".join(note.fixed + note.matched) + "."
        others = sum(len(n.fixed) + len(n.matched) for label, n in plan.size_notes.items() if label != step.label)
        if others:
            text += f" {others} more such size(s) elsewhere: see sub.summary.fixed_sizes and sub.summary.matched_sizes."
        return text + (" Other sizes follow the input, except those the model's weights fix (features, channels). Re-extract "
                       "with an example shaped like this input: lt.Extract(model, example, node_in=..., node_out=...).")

    def _check(self, checks: Any, env: dict[int, Any], size_of: Any) -> None:
        for check in checks:
            now = _check_value(check, env, size_of)
            if now is not None and now != check.expected:
                raise DifferentPathError(
                    f"This input takes a different path through the model than the example did: {check.description} "
                    f"during extraction but is {now} now, so the recorded ops no longer apply. Re-extract with an example "
                    "that takes this path: lt.Extract(model, new_example, node_in=..., node_out=...)."
                )


def _by_text(notes: Any) -> list[str]:
    """``"op_a, op_b: text"``: one line per distinct note, naming every op it applies to."""
    ops: dict[str, list[str]] = {}
    for label, text in notes:
        ops.setdefault(text, []).append(label)
    return [f"{', '.join(labels)}: {text}" for text, labels in ops.items()]


def _check_value(check: Check, env: dict[int, Any], size_of: Any) -> bool | None:
    if check.kind == "condition":
        return bool(env[check.record])
    name, left, right = check.guard
    value = evaluate((name, left, right), size_of)
    return None if value is None else bool(value)


def _resolve(v: Any, env: dict[int, Any], size_of: Any) -> Any:
    t = type(v)
    if t is TensorArg:
        return v.constant if v.record_index is None else env[v.record_index]
    if t is TracedInt:
        value = evaluate(v.expr, size_of)
        return int(v) if value is None else value
    if t is tuple or t is list or t is TracedShape:
        items = [_resolve(x, env, size_of) for x in v]
        return list(items) if t is list else tuple(items)
    return v


def _check_nodes(name: str, nodes: Any) -> None:
    """A label or int, a non-empty list/tuple of them, or a {name: label} dict (None for node_in)."""
    example = "lt.Extract(model, x, node_in='relu_2_5', node_out=['linear_3_22']); lt.get_nodes(model, x) lists the labels"
    if nodes is None or isinstance(nodes, str) or type(nodes) is int:
        return
    items = list(nodes.values()) if isinstance(nodes, Mapping) else list(nodes) if isinstance(nodes, (list, tuple)) else None
    if not items or not all(isinstance(n, str) or type(n) is int for n in items):
        fail(name, nodes, "a layer label or int, a non-empty list of them, or {name: label}", example,
             wrong_type=items is None)
