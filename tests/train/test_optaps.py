"""Op-level taps agree with the capture engine's labels, inside decomposed functions too."""

from __future__ import annotations

import torch
from torch import nn

import lens_train as lt
from bench.models import Encoder


def test_op_taps_in_a_transformer_equal_the_logged_activations() -> None:
    model, x = Encoder(16, 2, heads=2).eval(), torch.randn(2, 5, 16)
    log = lt.log_forward_pass(model, x)
    labels = ["relu_1", "add_4", "scaleddotproductattention_2", "linear_2"]
    taps = lt.Taps(model, labels, example_input=x)
    kinds = {s.key: s.kind for s in taps.selection.specs}
    assert kinds["scaleddotproductattention_2_55"] == "op"  # inside F.multi_head_attention_forward
    with taps:
        model(x)
    for label in labels:
        assert torch.allclose(taps[label], log[label].activation, atol=1e-6), label


def test_ops_of_submodules_do_not_shift_the_count() -> None:
    class Inner(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 100  # an add inside a child module: not the root's

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = Inner()

        def forward(self, x: torch.Tensor, twice: bool = False) -> torch.Tensor:
            x = self.inner(x)
            if twice:
                x = self.inner(x)
            return (x + 1) + 2

    model, x = Outer(), torch.zeros(2)
    log = lt.get_model_metadata(model, x)
    label = next(lay.layer_label_short for lay in log if lay.layer_type == "add" and not lay.containing_modules)
    taps = lt.Taps(model, [label], example_input=x)
    assert taps.selection.specs[0].address == ""
    with taps:
        model(x, twice=True)
    assert torch.equal(taps[label], torch.full((2,), 201.0))


def test_ops_outside_tapped_modules_are_not_intercepted() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    x = torch.randn(1, 2)
    taps = lt.Taps(model, ["relu_1"], example_input=x)  # the output of module "1.1": a module tap
    assert taps.selection.specs[0].kind == "module" and taps.selection.specs[0].address == "1.1"
    seen = []
    scope_model = nn.Sequential(nn.Linear(2, 2))

    class Body(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch._C._len_torch_function_stack())
            return torch.sigmoid(x) * 3 + 1

    scope_model.append(Body())
    taps = lt.Taps(scope_model, ["mul_1"], example_input=x)
    assert taps.selection.specs[0].kind == "op"
    scope_model[0].register_forward_pre_hook(lambda m, a: seen.append(torch._C._len_torch_function_stack()))
    depth = torch._C._len_torch_function_stack()
    with taps:
        scope_model(x)
    assert seen[-2:] == [depth, depth + 1]  # no mode while the linear runs, one inside Body
    assert torch._C._len_torch_function_stack() == depth
    assert torch.allclose(taps["mul_1"], torch.sigmoid(scope_model[0](x)) * 3)


def test_a_functional_wrapper_first_seen_at_step_time_counts_as_one_op() -> None:
    from lens_train.capture import recorder
    from lens_train.train import optaps

    ce = torch.nn.functional.cross_entropy  # one op inside, named cross_entropy_loss

    class Body(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return ce(x, y) * ce(x * 2, y) + 1

    model = nn.Sequential()
    model.body = Body()
    model.forward = lambda x, y: model.body(x, y)  # type: ignore[method-assign]
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    taps = lt.Taps(model, ["crossentropy_2"], example_input=(x, y))
    recorder._THIN_FUNCTIONS.discard(ce)  # as if first seen during a training step
    optaps._KINDS.pop(ce, None)
    with taps:
        model(x, y)
    assert torch.allclose(taps["crossentropy_2"], ce(x * 2, y))
    assert ce in recorder._THIN_FUNCTIONS
