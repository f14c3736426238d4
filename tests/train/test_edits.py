"""lt.edits: each built-in is exactly its documented expression; specs normalise once; bad results raise."""

from __future__ import annotations

import pytest
import torch

import lens_train as lt
from lens_train.errors import EditError
from lens_train.train.edits import Function, apply_edit, as_edit


def _value_and_grad(fn, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(seed)
    out = fn(x)
    weights = torch.arange(out.numel(), dtype=out.dtype).view_as(out)
    if out.requires_grad:
        (out * weights).sum().backward()
    return out.detach(), x.grad


REFERENCE_MEAN = torch.tensor([0.5, -1.0, 2.0])
CASES = [
    ("zero", lambda x: x * 0),
    (lt.edits.zero(), lambda x: x * 0),
    ("mean", lambda x: x * 0 + x.mean(0, keepdim=True)),
    (lt.edits.mean(reference=REFERENCE_MEAN), lambda x: x * 0 + REFERENCE_MEAN),
    ("noise", lambda x: x + 1.0 * torch.randn_like(x)),
    (lt.edits.noise(0.3), lambda x: x + 0.3 * torch.randn_like(x)),
    (lt.edits.noise(0.3, relative=True), lambda x: x + 0.3 * x.detach().std(correction=0) * torch.randn_like(x)),
    ("detach", lambda x: x.detach()),
    (torch.full((3,), 2.0), lambda x: x * 0 + torch.full((3,), 2.0)),
]


@pytest.mark.parametrize(("spec", "expression"), CASES, ids=[repr(c[0])[:30] for c in CASES])
def test_each_edit_is_its_documented_expression_values_and_gradients(spec, expression) -> None:
    x = torch.randn(4, 3)
    edit = as_edit(spec)
    got, got_grad = _value_and_grad(lambda v: apply_edit(edit, v, "fc"), x)
    want, want_grad = _value_and_grad(expression, x)
    assert torch.equal(got, want)
    assert (got_grad is None and want_grad is None) or torch.equal(got_grad, want_grad)


def test_zero_keeps_the_graph_and_mean_sends_the_batch_mean_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    out = apply_edit(as_edit("zero"), x, "fc")
    assert out.requires_grad and not out.abs().sum()
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # zero, not None: every parameter takes part
    y = torch.randn(4, 3, requires_grad=True)
    apply_edit(as_edit("mean"), y, "fc").sum().backward()
    assert torch.allclose(y.grad, torch.ones_like(y))  # 4 rows of the mean, 1/4 each


def test_a_callable_gets_the_step_when_it_takes_two_arguments_or_one_named_step() -> None:
    assert not as_edit(lambda x: x).takes_step
    assert not as_edit(lambda x, scale=2.0: x * scale).takes_step
    assert not as_edit(torch.tanh).takes_step and not as_edit(torch.nn.ReLU()).takes_step
    two = as_edit(lambda x, s: x * s)
    named = as_edit(lambda x, *, step: x * step)
    assert two.takes_step and not two.step_by_name and named.takes_step and named.step_by_name
    x = torch.ones(2)
    assert apply_edit(two, x, "fc", step=3).tolist() == apply_edit(named, x, "fc", step=3).tolist() == [3.0, 3.0]


@pytest.mark.parametrize("fn", [lambda: 0, lambda x, y, z: x, lambda step, x: x, lambda x, *, scale: x])
def test_a_callable_of_another_shape_is_refused_when_normalised(fn) -> None:
    with pytest.raises(EditError, match=r"def edit\(x, step\)"):
        as_edit(fn)


@pytest.mark.parametrize(("spec", "message"), [
    ("zeros", r"Unknown edit 'zeros'. Use one of \['zero', 'mean', 'noise', 'detach'\]"),
    (3, r"An edit must be a callable, a tensor"),
])
def test_unknown_specs_name_the_choices(spec, message: str) -> None:
    with pytest.raises(EditError, match=message):
        as_edit(spec)
    assert issubclass(EditError, ValueError) and issubclass(EditError, lt.LensTrainError)


def test_as_edit_returns_an_edit_unchanged_and_functions_once_normalised() -> None:
    edit = lt.edits.noise(0.5)
    assert as_edit(edit) is edit
    assert isinstance(as_edit(lambda x: x), Function)
    with pytest.raises(EditError, match="std=...\\) must be a number >= 0"):
        lt.edits.noise(-1)
    with pytest.raises(EditError, match="reference=...\\) takes a tensor"):
        lt.edits.mean(reference=[1.0])


@pytest.mark.parametrize(("spec", "message"), [
    (lambda x: x[:, :1], r"The edit of 'blocks.1' returned shape \(4, 1\), but the activation has shape \(4, 3\). "
                         r"Return a tensor of shape \(4, 3\)"),
    (lambda x: x.double(), r"returned dtype torch.float64, but the activation is torch.float32. Convert the result: "
                           r"\.to\(torch.float32\)"),
    (lambda x: 1.0, r"returned a float of 0 tensor\(s\), not a tensor"),
    (torch.ones(5), r"Cannot apply the edit tensor to 'blocks.1': a replacement of shape \(5,\) does not broadcast "
                    r"to the value's shape \(4, 3\). Give a tensor of shape \(4, 3\)"),
    (torch.ones(3, dtype=torch.float64), r"the replacement is torch.float64 but the value is torch.float32. "
                                         r"Convert it: value.to\(torch.float32\)"),
])
def test_results_of_the_wrong_shape_or_dtype_name_the_layer_the_expectation_and_the_fix(spec, message: str) -> None:
    with pytest.raises(EditError, match=message):
        apply_edit(as_edit(spec), torch.randn(4, 3), "blocks.1")


def test_mean_and_noise_refuse_integer_values_and_zero_keeps_them() -> None:
    ids = torch.arange(6).view(2, 3)
    for spec in ("mean", "noise"):
        with pytest.raises(EditError, match="needs floating-point values, and this one is torch.int64"):
            apply_edit(as_edit(spec), ids, "embed")
    assert apply_edit(as_edit("zero"), ids, "embed").dtype == torch.int64


def test_structured_values_get_builtins_per_float_tensor_and_callables_whole() -> None:
    value = (torch.ones(2, 3), torch.arange(2))
    zeroed = apply_edit(as_edit("zero"), value, "lstm")
    assert not zeroed[0].abs().sum() and torch.equal(zeroed[1], value[1])
    swapped = apply_edit(as_edit(lambda v: (v[0] * 2, v[1])), value, "lstm")
    assert swapped[0].sum().item() == 12
    with pytest.raises(EditError, match=r"returned a tensor of shape \(2, 3\), but the activation is a tuple"):
        apply_edit(as_edit(lambda v: v[0]), value, "lstm")
    with pytest.raises(EditError, match="a tensor replaces one tensor"):
        apply_edit(as_edit(torch.ones(3)), value, "lstm")
