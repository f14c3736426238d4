"""log_forward_pass: values, selection, options, inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens_train as lt
from lens_train.errors import InvalidArgumentError, LayerNotFoundError
from tests.models import DemoNetwork, SmallAlexNet


def test_output_equals_plain_forward() -> None:
    model = SmallAlexNet().eval()
    x = torch.randn(2, 3, 64, 64)
    log = lt.log_forward_pass(model, x)
    assert torch.equal(log["output_1_23"].activation, model(x))


def test_saved_values_equal_forward_hooks() -> None:
    model = SmallAlexNet().eval()
    x = torch.randn(2, 3, 64, 64)
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o.clone()))
               for n, m in model.named_modules() if n and "." in n]
    model(x)
    for h in handles:
        h.remove()
    log = lt.log_forward_pass(model, x)
    for name in ["features.0", "features.3", "features.6", "classifier.1", "classifier.6"]:
        assert torch.equal(log[name].activation, seen[name]), name


def test_inplace_ops_do_not_change_saved_snapshots() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            y.add_(1)
            v = y[0]
            v.zero_()
            y[1] = 5.0
            return y

    x = torch.ones(3, 2)
    log = lt.log_forward_pass(M(), x)
    assert torch.equal(log["mul_1_1"].activation, torch.full((3, 2), 2.0))
    assert torch.equal(log["add_1_2"].activation, torch.full((3, 2), 3.0))
    assert torch.equal(log["input_1_0"].activation, torch.ones(3, 2))
    assert log["add_1_2"].is_inplace
    final = log[-1].activation
    assert torch.equal(final, torch.tensor([[0.0, 0.0], [5.0, 5.0], [3.0, 3.0]]))


def test_layers_to_save_selection() -> None:
    model = SmallAlexNet().eval()
    x = torch.randn(1, 3, 64, 64)
    log = lt.log_forward_pass(model, x, layers_to_save=["conv2d_3_7", "features.0", -2, "linear", "relu_7", 14])
    saved = {layer.layer_label for layer in log if layer.activation is not None}
    assert saved == {"conv2d_1_1", "conv2d_3_7", "linear_1_17", "linear_2_20", "linear_3_22", "relu_7_21",
                     "adaptiveavgpool2d_1_14"}
    full = lt.log_forward_pass(model, x)
    assert torch.equal(log["conv2d_3_7"].activation, full["conv2d_3_7"].activation)
    assert log["relu_3_8"].tensor_shape == full["relu_3_8"].tensor_shape


def test_layers_to_save_none_keeps_metadata() -> None:
    log = lt.get_model_metadata(DemoNetwork(), torch.randn(5, 5))
    assert all(layer.activation is None for layer in log)
    assert log["linear_1_3"].tensor_shape == (5, 5)
    assert log["linear_1_3"].num_params == 30


def test_layers_to_save_unknown_raises_with_suggestion() -> None:
    with pytest.raises(LayerNotFoundError, match="linear_1_3"):
        lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5), layers_to_save=["linear_1_33"])


def test_activation_postfunc_and_raw_flag() -> None:
    x = torch.randn(5, 5)
    log = lt.log_forward_pass(DemoNetwork(), x, activation_postfunc=lambda t: t.mean(), random_seed=1)
    layer = log["linear_1_3"]
    assert torch.allclose(layer.transformed_activation, layer.activation.mean())
    log2 = lt.log_forward_pass(DemoNetwork(), x, activation_postfunc=lambda t: t.abs(), save_raw_activation=False)
    assert log2["linear_1_3"].activation is None
    assert log2["linear_1_3"].transformed_activation.shape == (5, 5)
    assert log2["linear_1_3"].tensor_shape == (5, 5)


def test_train_mode_keeps_graph_and_reaches_parameters() -> None:
    model = SmallAlexNet().eval()
    x = torch.randn(1, 3, 64, 64)
    log = lt.log_forward_pass(model, x, train_mode=True)
    log["features"].activation.square().mean().backward()
    assert model.features[0].weight.grad is not None
    assert model.classifier[1].weight.grad is None
    ref = SmallAlexNet().eval()
    ref.load_state_dict(model.state_dict())
    ref.features(x).square().mean().backward()
    assert torch.allclose(model.features[0].weight.grad, ref.features[0].weight.grad, atol=1e-6)


def test_default_mode_detaches_saved_values() -> None:
    log = lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5))
    assert not log["linear_1_3"].activation.requires_grad
    assert log["linear_1_3"].requires_grad


def test_seed_makes_capture_deterministic_and_rng_is_restored() -> None:
    model = DemoNetwork()
    x = torch.randn(5, 5)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = lt.log_forward_pass(model, x, random_seed=7)
    after = torch.rand(3)
    b = lt.log_forward_pass(model, x, random_seed=7)
    assert torch.equal(after, expected_next)
    assert a.random_seed == 7 and "Random seed: 7" in str(a)
    assert a.layer_labels == b.layer_labels
    assert torch.equal(a["randn_1_5"].activation, b["randn_1_5"].activation)
    c = lt.log_forward_pass(model, x)
    assert isinstance(c.random_seed, int)


class TwoInputs(nn.Module):
    def forward(self, a: torch.Tensor, b: dict, scale: float = 1.0, *, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = a + b["x"][0] * b["x"][1]
        if mask is not None:
            out = out * mask
        return out * scale


def test_nested_inputs_and_kwargs() -> None:
    a, p, q, mask = (torch.randn(3) for _ in range(4))
    model = TwoInputs()
    log = lt.log_forward_pass(model, (a, {"x": [p, q]}, 2.0), input_kwargs={"mask": mask})
    assert torch.allclose(log[-1].activation, model(a, {"x": [p, q]}, 2.0, mask=mask))
    assert len(log.input_layers) == 4
    log2 = lt.log_forward_pass(model, [a, {"x": (p, q)}])
    assert torch.allclose(log2[-1].activation, a + p * q)


def test_single_list_argument_rule() -> None:
    class Cat(nn.Module):
        def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(xs)

    xs = [torch.ones(2), torch.zeros(3)]
    assert lt.log_forward_pass(Cat(), xs)[-1].tensor_shape == (5,)
    assert lt.log_forward_pass(Cat(), (xs,))[-1].tensor_shape == (5,)


def test_every_kind_of_operation_is_captured() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[0] + x.dim() + x.size(1)
            a = torch.ones(2) + torch.arange(2) + torch.from_numpy(np.ones(2, dtype=np.float32))
            y = (1 / (x + 1)) ** 2 - x.T.T + x.mT.mT + x.data
            y[0] = 0
            return F.relu(y).sum() + a.sum() * n

    log = lt.log_forward_pass(M(), torch.rand(2, 2) + 1)
    types = [layer.layer_type for layer in log]
    for expected in ["ones", "arange", "fromnumpy", "rtruediv", "pow", "sub", "T", "mT", "data", "setitem", "relu", "sum"]:
        assert expected.lower() in types, expected
    assert "shape" not in types and "dim" not in types and "size" not in types


def test_operations_and_properties_have_their_values() -> None:
    class M(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert x.dtype == torch.float32 and x.ndim == 2  # metadata reads: not operations
            z = torch.complex(x, -x)
            parts = z.real * z.imag
            y = (1 / x) ** 2 + x.T + parts
            y[0, 0] = -1.0
            return y[1:]

    x = torch.rand(2, 2) + 1
    log = lt.log_forward_pass(M(), x)
    assert [layer.layer_type for layer in log] == [
        "input", "neg", "complex", "real", "imag", "mul", "rtruediv", "pow", "t", "add", "add", "setitem", "getitem",
        "output"]
    assert torch.equal(log["complex_1_2"].activation, torch.complex(x, -x))
    assert torch.equal(log["real_1_3"].activation, x) and torch.equal(log["imag_1_4"].activation, -x)
    assert torch.equal(log["rtruediv_1_6"].activation, 1 / x)
    assert torch.equal(log["pow_1_7"].activation, (1 / x) ** 2)
    assert torch.equal(log["t_1_8"].activation, x.T) and log["t_1_8"].func_name == "T"
    y = (1 / x) ** 2 + x.T + x * -x
    assert torch.equal(log["add_2_10"].activation, y)  # a snapshot from before the assignment
    y[0, 0] = -1.0
    assert torch.equal(log["setitem_1_11"].activation, y) and log["setitem_1_11"].is_inplace
    assert log["setitem_1_11"].parent_layers == ["add_2_10"]
    assert torch.equal(log[-1].activation, y[1:])


def test_nested_buffers_are_tagged_with_their_address() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("example_buffer", torch.arange(3.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.example_buffer

    model = nn.Sequential(nn.Identity(), nn.Sequential(Inner()))
    log = lt.log_forward_pass(model, torch.ones(3))
    (buffer,) = log.buffer_layers
    assert log[buffer].buffer_address == "1.0.example_buffer"
    assert torch.equal(log[buffer].activation, torch.arange(3.0)) and log[buffer].is_buffer
    assert log[buffer].containing_modules == ["1:1", "1.0:1"]


def test_vis_mode_is_an_alias_of_vis_opt(tmp_path) -> None:
    out = tmp_path / "graph"
    log = lt.log_forward_pass(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), torch.ones(1, 2), vis_mode="rolled",
                              vis_outpath=str(out), vis_save_only=True)
    assert (tmp_path / "graph.svg").read_text().count("relu_1_2") >= 1 and len(log) == 4
    with pytest.raises(InvalidArgumentError, match="vis_opt must be"):
        lt.log_forward_pass(nn.ReLU(), torch.ones(1), vis_mode="sideways")


def test_python_functional_internals_are_captured_once() -> None:
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(2, 4, 8)
    log = lt.log_forward_pass(mha, (x, x, x), input_kwargs={"need_weights": False})
    types = [layer.layer_type for layer in log]
    assert "multiheadattentionforward" not in types
    assert "linear" in types and "scaleddotproductattention" in types
    assert torch.allclose(log[-1].activation, mha(x, x, x, need_weights=False)[0])


def test_aliases_and_bad_arguments() -> None:
    x = torch.randn(5, 5)
    assert lt.get_model_activations(DemoNetwork(), x).layer_labels[0] == "input_1_0"
    with pytest.raises(InvalidArgumentError, match="vis_opt"):
        lt.log_forward_pass(DemoNetwork(), x, vis_opt="sideways")
    with pytest.raises(InvalidArgumentError, match="unknown arguments"):
        lt.log_forward_pass(DemoNetwork(), x, layers_to_sav="all")
    with pytest.raises(InvalidArgumentError, match="layers_to_save"):
        lt.log_forward_pass(DemoNetwork(), x, layers_to_save=3.5)


def test_metadata_fields() -> None:
    log = lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5))
    fc = log["fc"]
    assert fc.parent_layers == ["relu_1_2"] and fc.child_layers == ["relu_2_4"]
    assert fc.parent_params == [(5, 5), (5,)] and fc.param_bytes == 120
    assert fc.grad_fn_name == "AddmmBackward0" and fc.func_name == "linear"
    assert fc.containing_modules == ["fc:1"] and fc.module_outputs == ["fc:1"]
    assert fc.tensor_fsize == 100 and fc.tensor_dtype == torch.float32
    assert fc.time_s >= 0
    div = log["truediv_1_8"]
    assert div.parent_layer_arg_locs == {"add_2_6": [0], "pow_1_7": [1]}
    stack = log["add_1_1"].func_call_stack
    assert stack[0].function == "forward" and stack[0].code_context == "x = x + 1"
    assert log["mul_1_10"].parent_layers == ["truediv_1_8", "buffer_1_9"]


def test_printing() -> None:
    log = lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5), random_seed=3)
    text = str(log)
    assert "Log of DemoNetwork forward pass" in text and "purely feedforward" in text
    assert "(10) mul_1_10 5x5" in text and "fc (Linear)" in text
    layer_text = str(log["fc"])
    assert "Layer linear_1_3" in layer_text and "Params: computed from 2 parameter(s) (5x5, 5)" in layer_text
    assert "Output of modules: fc:1" in layer_text


def test_non_module_error_fits_what_was_passed() -> None:
    from lens_train.errors import UnsupportedModelError

    model, x = nn.Linear(2, 2), torch.randn(1, 2)
    with pytest.raises(UnsupportedModelError, match="got ModelLog. Pass the nn.Module itself") as info:
        lt.validate_model_activations(lt.log_forward_pass(model, x), x)
    assert "Wrap a function" not in str(info.value)
    with pytest.raises(UnsupportedModelError, match="got function. Wrap a function in a module"):
        lt.log_forward_pass(lambda t: t * 2, x)
