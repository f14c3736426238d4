"""Replay validation: are the saved activations the values the model really computed?

:func:`validate_model_activations` runs three checks on one seeded forward pass:

1. **Output.** The captured pass returns what a plain forward pass with the same seed
   returns (capture changed nothing).
2. **Replay.** Working back from the outputs, every operation is re-run from its
   parents' *saved* values, with that op's random-number state restored, and must
   reproduce its own saved value. A wrong saved value, a wrong parent link or a missed
   in-place change shows up as a mismatch here.
3. **Links.** A replay that reproduces the saved output proves the recorded parents'
   values are the ones the op used, wherever the output depends on them. Each parent
   is perturbed (values chosen for its dtype: shifted floats, flipped bools, moved
   integers; more draws only when the first changes nothing) to tell the two cases
   apart, and the report counts *proven* links and *flat* ones, whose values the
   output does not depend on (a shape-only op, a zero-initialized branch, a mask built
   from constants, a detached target, an empty tensor). A flat link is not a failure:
   no value there can be wrong. There is no table of exempt ops or models.

Each op is replayed in the grad mode and autocast state it ran in (an op inside an
``autocast`` region is replayed inside one).

Memory: the replay walks the records from last to first and drops each saved value as
soon as nothing later needs it; only one op's inputs are copied at a time, so the
check never holds two copies of the activations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .api import check_supported, forked_rng, preserved_buffers, record_forward
from .arguments import check_validation_arguments
from .build import module_param_counts
from .model_index import index_model
from .inputs import normalize_inputs
from .passes import group_passes, pass_labels
from .records import OpRecord, TensorArg, ViewBaseTemplate
from .recorder import CapturePlan
from .recorder_edits import set_rng_states


#: Ops whose output is not a function of their inputs, so a replay cannot reproduce it.
REPLAY_EXEMPTIONS: dict[str, str] = {
    **{name: "returns uninitialized memory"
       for name in ("empty", "empty_like", "new_empty", "empty_strided", "new_empty_strided")},
    "grad": "differentiates the live autograd graph, which saved values do not carry",
}
# Frequent ops known never to write into their arguments: replayed on the saved values
# themselves. Every other op gets copies, so a hidden in-place write (batch_norm's running
# statistics) cannot corrupt a saved value.
_PURE = frozenset({
    "linear", "matmul", "mm", "bmm", "addmm", "conv1d", "conv2d", "conv3d", "add", "sub", "mul", "div",
    "truediv", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__",
    "__matmul__", "relu", "gelu", "silu", "tanh", "sigmoid", "softmax", "log_softmax", "layer_norm",
    "dropout", "scaled_dot_product_attention", "view", "reshape", "transpose", "permute", "contiguous",
    "__getitem__", "cat", "stack", "mean", "sum", "exp", "log", "sqrt", "pow", "__pow__", "unsqueeze",
    "squeeze", "flatten", "chunk", "split", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "embedding",
})


@dataclass
class _Report:
    labels: list[str] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)
    replayed: int = 0
    proven: int = 0
    flat: dict[str, int] = field(default_factory=dict)  # op name -> links whose values did not matter
    skipped: dict[str, int] = field(default_factory=dict)
    noise: _Noise = field(default_factory=lambda: _Noise(), repr=False)  # shared by the perturbations of one validation

    @property
    def ok(self) -> bool:
        return not self.failures

    def text(self) -> str:
        lines = [f"validate_model_activations: {'PASSED' if self.ok else 'FAILED'}",
                 f"\treplayed {self.replayed} ops; {self.proven} parent links proven by perturbation, "
                 f"{sum(self.flat.values())} flat"]
        if self.flat:
            lines.append("\tflat links (the output does not depend on that parent's values): "
                         + ", ".join(f"{k} x{v}" for k, v in sorted(self.flat.items())))
        if self.skipped:
            lines.append("\tnot replayed: " + ", ".join(f"{k} x{v}" for k, v in sorted(self.skipped.items())))
        if self.failures:
            index, reason = min(self.failures)
            where = self.labels[index] if 0 <= index < len(self.labels) else "the output"
            lines.append(f"\tfirst failing op: {where}: {reason}")
            if len(self.failures) > 1:
                lines.append(f"\t({len(self.failures) - 1} more failures)")
        return "\n".join(lines)


def validate_model_activations(
    model: nn.Module,
    input_args: Any,
    input_kwargs: Mapping[str, Any] | None = None,
    verbose: bool = False,
    random_seed: int | None = None,
) -> bool:
    """Check that a captured forward pass saves exactly the values the model computes.

    Runs the output, replay and perturbation checks described in
    :mod:`lens_train.capture.validation`. The model is left as it was: buffers changed
    by the forward passes (BatchNorm running statistics...) are restored.

    Args:
        model: the model to check.
        input_args: positional inputs (see :func:`lens_train.log_forward_pass`).
        input_kwargs: keyword inputs.
        verbose: print a summary naming the first failing op and why.
        random_seed: seed shared by every pass (random when not given).

    Returns:
        True when every check passes; False (never an exception) when a saved
        activation is wrong. Errors raised by the model's own forward pass propagate.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Dropout(0.5))
        >>> lt.validate_model_activations(model, torch.randn(2, 4))
        True
    """
    check_supported(model)
    check_validation_arguments(model, input_args, input_kwargs, verbose, random_seed)
    seed = random.randrange(2**31) if random_seed is None else int(random_seed)
    args, kwargs = normalize_inputs(model, input_args, input_kwargs)
    with preserved_buffers(model) as swap:
        report = _validate(model, args, kwargs, seed, swap.swap_in)
    if verbose:
        print(report.text())
    return report.ok


def _validate(model: nn.Module, args: tuple, kwargs: dict, seed: int, restore: Any) -> _Report:
    report = _Report()
    versions = _param_versions(model)
    with forked_rng(seed):
        copied = _cloned((args, kwargs))
        expected = model(*copied[0], **copied[1])
    if _param_versions(model) != versions:
        report.failures.append((-1, "the forward pass changes parameters in place, so no two passes compute the same "
                                    "values; validate a model whose forward leaves its parameters unchanged"))
        return report
    restore()
    plan = CapturePlan(save="all", keep_templates=True, record_rng=True)
    copied = _cloned((args, kwargs))
    recorder, output, _ = record_forward(model, copied[0], copied[1], plan, seed)
    recorder.resolve_callsites()
    records = recorder.records
    groups = group_passes(records, frozenset(module_param_counts(model, recorder.index.unique_params())))
    report.labels = pass_labels(groups, len(records))[0]
    reason = _compare_outputs(expected, output)
    del expected, output
    if reason:
        report.failures.append((-1, reason))
    with torch.no_grad(), torch.random.fork_rng(devices=_cuda_devices()):
        for rec in reversed(records):
            _check_record(rec, records, report)
            rec.activation = None  # every later op (the ones that read it) is checked already
    return report


# -- the checks -----------------------------------------------------------------------
def _compare_outputs(expected: Any, got: Any) -> str | None:
    want, have = _leaves(expected), _leaves(got)
    if len(want) != len(have):
        return f"the captured pass returned {len(have)} tensors, a plain forward pass {len(want)}"
    for i, (a, b) in enumerate(zip(want, have)):
        if not _same(a.detach(), b.detach()):
            return f"output tensor {i} differs from a plain forward pass with the same seed ({_diff(a, b)})"
    return None


def _check_record(rec: OpRecord, records: list[OpRecord], report: _Report) -> None:
    if rec.is_output:
        parent = records[rec.parents[0][0]].activation
        if parent is not None and rec.activation is not None and not _same(parent, rec.activation):
            report.failures.append((rec.index, "the output differs from the tensor it returns"))
        return
    if rec.func is None or rec.activation is None:
        return
    if rec.func_name in REPLAY_EXEMPTIONS or rec.call_template is None:
        key = REPLAY_EXEMPTIONS.get(rec.func_name, "created outside torch (from_numpy)")
        report.skipped[key] = report.skipped.get(key, 0) + 1
        return
    report.replayed += 1
    try:
        value = _replay(rec, records)
    except Exception as exc:  # noqa: BLE001 - a failed replay is a finding, never a crash
        report.failures.append((rec.index, f"re-running {rec.func_name} from its parents' saved values raised "
                                           f"{type(exc).__name__}: {exc}"))
        return
    if not _same(value, rec.activation):
        report.failures.append((rec.index, f"re-running {rec.func_name} from its parents' saved values gives "
                                           f"different values ({_diff(value, rec.activation)})"))
        return
    for parent, positions in _tensor_parents(rec).items():
        _perturb_parent(rec, records, parent, positions, report)


def _perturb_parent(rec: OpRecord, records: list[OpRecord], parent: int, positions: set[Any], report: _Report) -> None:
    """Tell a proven link (the output depends on the parent's values) from a flat one."""
    value = records[parent].activation
    if value is None:
        return
    if value.numel() > 0:
        for other in _perturbations(value, report.noise, parent):
            try:
                out = _replay(rec, records, {parent: other})
            except Exception:  # noqa: BLE001 - the op rejects other values: its output depends on them
                report.proven += 1
                return
            if not _equal(out, rec.activation):
                report.proven += 1
                return
    report.flat[rec.func_name] = report.flat.get(rec.func_name, 0) + 1


# -- replay ---------------------------------------------------------------------------
def _replay(rec: OpRecord, records: list[OpRecord], swap: dict[int, torch.Tensor] | None = None,
            copies: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Re-run ``rec``'s op on copies of its parents' saved values; return its output.

    ``copies`` (filled here: parent record index -> the tensor the op got) shows the caller
    what an op wrote into its arguments (BatchNorm's running statistics).
    """
    template = rec.call_template
    copies = {} if copies is None else copies
    pure = rec.func_name in _PURE and not rec.is_inplace and not isinstance(template, ViewBaseTemplate)

    def value_of(arg: TensorArg) -> Any:
        if arg.record_index is None:
            return arg.constant
        if arg.record_index not in copies:
            saved = (swap or {}).get(arg.record_index, records[arg.record_index].activation)
            if saved is None:
                raise ValueError(f"the saved value of parent #{arg.record_index} was dropped")
            copies[arg.record_index] = saved if pure else saved.clone()
        return copies[arg.record_index]

    if isinstance(template, ViewBaseTemplate):
        base = value_of(TensorArg(rec.parents[0][0]))
        view = base.as_strided(template.size, template.stride, base.storage_offset() + template.offset)
        args, kwargs = _fill(template.template[0], value_of), _fill(template.template[1], value_of)
        if "out" in kwargs:
            kwargs["out"] = view
        else:
            args = (view, *args[1:])
        _run(rec, args, kwargs)
        return base
    args, kwargs = _fill(template[0], value_of), _fill(template[1], value_of)
    result = _run(rec, args, kwargs)
    if rec.func_name == "__setitem__":
        return args[0]
    if isinstance(kwargs.get("out"), torch.Tensor):
        return kwargs["out"]
    return _tensors_of(result)[rec.output_index]


def _run(rec: OpRecord, args: tuple, kwargs: dict) -> Any:
    if rec.rng_state is not None:
        set_rng_states(rec.rng_state)
    grad, autocast = rec.replay_context if rec.replay_context is not None else (False, ())
    if grad == torch.is_grad_enabled() and not autocast:  # the common case, without entering contexts
        return rec.func(*args, **kwargs)
    with torch.set_grad_enabled(grad), ExitStack() as stack:
        for device_type, dtype in autocast:
            stack.enter_context(torch.autocast(device_type, dtype=dtype))
        return rec.func(*args, **kwargs)


def _fill(value: Any, value_of: Any) -> Any:
    if isinstance(value, TensorArg):
        return value_of(value)
    if isinstance(value, tuple):
        return tuple(_fill(v, value_of) for v in value)
    if isinstance(value, list):
        return [_fill(v, value_of) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, value_of) for k, v in value.items()}
    return value


def _tensor_parents(rec: OpRecord) -> dict[int, set[Any]]:
    """Parent record index -> the argument positions (int or keyword) it fills."""
    template = rec.call_template
    found: dict[int, set[Any]] = {}
    if isinstance(template, ViewBaseTemplate):
        found[rec.parents[0][0]] = {"base"}
        template = template.template
    for pos, arg in [*enumerate(template[0]), *template[1].items()]:
        for ta in _tensor_args(arg):
            if ta.record_index is not None and not (isinstance(rec.call_template, ViewBaseTemplate) and pos in (0, "out")):
                found.setdefault(ta.record_index, set()).add(pos)
    return found


def _tensor_args(value: Any) -> Iterator[TensorArg]:
    if isinstance(value, TensorArg):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensor_args(v)


def _perturbations(v: torch.Tensor, noise: _Noise | None = None, key: Any = None) -> Iterator[torch.Tensor]:
    """Up to three different stand-ins for ``v``, made only as needed: far above it, far below it, random.

    The shifts vary per element: a uniform shift would leave softmax or layer_norm unchanged.
    ``noise`` shares the random patterns, and the scale of the value saved under ``key``,
    across one validation; the stand-ins are the same with or without it.

    Example:
        >>> v = torch.tensor([1.0, -2.0])
        >>> [bool((p - v).abs().min() > 0) for p in _perturbations(v)]
        [True, True, True]
        >>> all(torch.equal(a, b) for a, b in zip(_perturbations(v), _perturbations(v, _Noise(), 0)))
        True
    """
    if v.dtype == torch.bool:
        yield ~v
        yield torch.zeros_like(v) if bool(v.any()) else torch.ones_like(v)
        return
    if not (v.is_floating_point() or v.is_complex()):
        yield v + 1
        yield v - 1
        yield torch.zeros_like(v) if bool(v.any()) else torch.ones_like(v)
        return
    noise = _Noise() if noise is None else noise
    scale = noise.scale(v, key)
    for i, sign in enumerate((1.0, -1.0)):  # few kernels: these run for every parent of every op
        yield v + noise.pattern(v, i) * (sign * 2.0 * scale)  # (a scale past the dtype's range: inf)
    yield noise.pattern(v, 2) * (4.0 * scale)


class _Noise:
    """The random patterns of :func:`_perturbations`, drawn once per shape, device and dtype in one validation.

    A pattern depends only on the shape (a generator seeded with the element count draws
    uniform, uniform, then normal values), so the parents of one shape share it: drawing
    it was most of the link check's time. Patterns past ``budget`` bytes are drawn anew.
    """

    def __init__(self, budget: int = 64 * 2**20) -> None:
        self._drawn: dict[tuple, tuple[torch.Generator, list[torch.Tensor]]] = {}
        self._scales: dict[Any, float] = {}
        self._left = budget

    def scale(self, v: torch.Tensor, key: Any = None) -> float:
        """How far the stand-ins move from ``v`` (its largest magnitude + 1; 1 when that is 0 or not finite)."""
        found = self._scales.get(key) if key is not None else None
        if found is None:
            scale = float(v.abs().max()) if v.numel() else 0.0
            found = 1.0 if scale != scale or scale in (float("inf"), 0.0) else scale + 1.0
            if key is not None:
                self._scales[key] = found
        return found

    def pattern(self, v: torch.Tensor, i: int) -> torch.Tensor:
        """The ``i``-th pattern (0, 1: uniform in [1, 2); 2: standard normal) for ``v``'s shape, device and dtype."""
        key = (tuple(v.shape), v.device, v.dtype)
        entry = self._drawn.get(key)
        if entry is None:
            entry = (torch.Generator().manual_seed(v.numel()), [])
            if self._left > 0:
                self._drawn[key] = entry
                self._left -= 3 * v.numel() * 4
        gen, drawn = entry
        while len(drawn) <= i:
            t = torch.rand(v.shape, generator=gen) + 1.0 if len(drawn) < 2 else torch.randn(v.shape, generator=gen)
            drawn.append(t.to(v.device, v.dtype))
        return drawn[i]


# -- values -----------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    """Equal, or equal up to float rounding (a replay may take another kernel path)."""
    if _equal(a, b):
        return True
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(torch.allclose(a, b.to(a.device), rtol=1e-4, atol=1e-6, equal_nan=True))
    return False


def _equal(a: Any, b: Any) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        return a is b
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.device.type == "meta" or a.layout != torch.strided:
        return True
    return bool(torch.equal(a, b.to(a.device)))


def _diff(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"shape/dtype {tuple(a.shape)} {a.dtype} vs saved {tuple(b.shape)} {b.dtype}"
    try:
        return f"max abs difference {float((a.detach().double() - b.detach().double().to(a.device)).abs().max()):.3g}"
    except (RuntimeError, TypeError):
        return "values differ"


def _tensors_of(result: Any) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    out: list[torch.Tensor] = []
    if isinstance(result, (tuple, list)):
        for v in result:
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif isinstance(v, (tuple, list)):
                out.extend(t for t in v if isinstance(t, torch.Tensor))
    return out


def _leaves(value: Any, depth: int = 0) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if depth > 8:
        return []
    if isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif hasattr(value, "__dataclass_fields__"):
        items = [getattr(value, n, None) for n in value.__dataclass_fields__]
    else:
        return []
    return [t for v in items for t in _leaves(v, depth + 1)]


def _cloned(value: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """The inputs with every tensor copied, so a model that edits its inputs sees fresh ones each pass.

    A tensor passed twice stays one tensor (``mha(x, x, x)`` takes the self-attention path
    because ``query is key``).
    """
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            copy = value.detach().clone()
            memo[id(value)] = copy.requires_grad_(value.requires_grad) if copy.is_leaf and value.requires_grad else copy
        return memo[id(value)]
    if isinstance(value, dict):
        return {k: _cloned(v, memo) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(_cloned(v, memo) for v in value)
    return value


def _param_versions(model: nn.Module) -> list[int]:
    """The autograd version of each of ``model.parameters()``, in that order (one walk of the model)."""
    return [p._version for _, p in index_model(model).unique_params()]


def _cuda_devices() -> list[int]:
    """Every initialized CUDA device: a replay sets their random states, which must be put back."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []
