"""print(log) and print(log[key]): every field, with the values of the pass."""

from __future__ import annotations

import torch
from torch import nn

import lens_train as lt
from lens_train.capture.printing import human_bytes, shape_text
from tests.models import DemoNetwork, SimpleRecurrent
from tests.zoo.control import NetworkOrganizationDemo


def _lines(text: str) -> dict[str, str]:
    """``"\\tName: value"`` lines of a layer printout as {name: value}."""
    out = {}
    for line in text.splitlines()[1:]:
        name, sep, value = line.strip().partition(": ")
        if sep:
            out.setdefault(name, value)
    return out


def test_layer_printout_fields() -> None:
    model = DemoNetwork()
    log = lt.log_forward_pass(model, torch.randn(5, 5), random_seed=0)
    layer = log["fc"]
    text = str(layer)
    fields = _lines(text)
    assert text.splitlines()[0] == "Layer linear_1_3, operation 4:"
    assert fields["Output tensor"] == "shape=(5, 5), dtype=torch.float32, size=100 B, device=cpu"
    preview = text.splitlines()[2].strip()
    first = ", ".join(f"{v:.4g}" for v in layer.activation.reshape(-1)[:8].tolist())
    assert preview == f"[{first}, ...]"
    assert fields["Params"] == "computed from 2 parameter(s) (5x5, 5); 30 params, 120 B (fc.weight, fc.bias)"
    assert fields["Function"] == "linear (grad_fn: AddmmBackward0)"
    assert fields["Computed inside module"] == "fc:1"
    assert fields["Output of modules"] == "fc:1" and fields["Output of bottom-level module"] == "fc:1"
    assert fields["Parent layers"] == "relu_1_2 (arg 0)" and fields["Child layers"] == "relu_2_4"
    assert float(fields["Time elapsed"].removesuffix(" ms")) == round(layer.time_s * 1e3, 3)
    assert fields["Lookup keys"] == "fc:1, fc, linear_1, linear_1:1, linear_1_3, linear_1_3:1, 3, -9"
    stack = text.split("Call stack (innermost first):\n")[1].splitlines()[0].strip()
    assert stack.endswith("in forward: x = self.fc(x)") and "tests/models/__init__.py:" in stack
    assert "Flags" not in fields and "Passes" not in fields


def test_layer_printout_parents_with_positions_and_flags() -> None:
    log = lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5), activation_postfunc=lambda t: t.abs().max())
    fields = _lines(str(log["truediv_1_8"]))
    assert fields["Parent layers"] == "add_2_6 (arg 0), pow_1_7 (arg 1)"
    layer = log["truediv_1_8"]
    assert fields["Transformed activation"] == f"[{layer.transformed_activation.item():.4g}]"
    assert fields["Computed inside module"] == "not computed inside a module"
    assert fields["Output of modules"] == "none" and fields["Params"] == "no params used"
    assert _lines(str(log["buffer_1_9"]))["Flags"] == "is_buffer, buffer address: example_buffer"
    assert _lines(str(log["randn_1_5"]))["Flags"] == "is_internally_generated"
    assert _lines(str(log["input_1_0"]))["Parent layers"] == "no parent layers"
    assert _lines(str(log[-1]))["Child layers"] == "no child layers"


def test_layer_printout_of_unsaved_passes_and_conditions() -> None:
    log = lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5), layers_to_save=["linear_1_1:1"])
    text = str(log["add_1_2:2"])
    assert text.splitlines()[0] == "Layer add_1_2:2 (pass 2/4), operation 6:"
    assert text.splitlines()[2].strip() == "(not saved)"
    assert _lines(text)["Passes"] == "add_1_2:1, add_1_2:2, add_1_2:3, add_1_2:4"
    cond = lt.log_forward_pass(NetworkOrganizationDemo(), torch.rand(2, 5) + 0.1)["gt_1_2"]
    flags = _lines(str(cond))["Flags"]
    assert flags == "is_conditional, bool values: [True], branch taken starts at rtruediv_1_3"


def test_layer_printout_with_gradient() -> None:
    log = lt.log_forward_pass(nn.Sequential(nn.Linear(2, 3)), torch.ones(4, 2), save_gradients=True)
    log[-1].activation.sum().backward()
    assert _lines(str(log["linear_1_1"]))["Gradient"] == "shape=(4, 3), dtype=torch.float32, size=48 B"


def test_model_printout_fields() -> None:
    log = lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5), random_seed=3, layers_to_save=["linear"])
    lines = str(log).splitlines()
    assert lines[0] == "Log of DemoNetwork forward pass:"
    # branching: x feeds both x ** 2 and x / y
    assert lines[1] == ("\tModel structure: purely feedforward, with branching; "
                        "no conditional (if-then) branching; 2 submodules.")
    # eleven 5x5 float32 tensors and one 5-element buffer; only the linear op saved
    assert lines[2] == "\tNumber of tensors: 12 total (1.1 KB), 1 saved (100 B)."
    assert lines[3] == "\tNumber of operations: 9; 1 use parameters."
    assert lines[4] == "\tParameters: 30 params in 2 tensors (120 B)."
    assert lines[5] == "\tRandom seed: 3"
    assert lines[6] == f"\tTime elapsed: {log.elapsed_s:.3f}s"
    assert lines[7:10] == ["\tModule hierarchy:", "\t\trelu (ReLU)", "\t\tfc (Linear)"]
    assert lines[10] == "\tLayers (in order of execution):"
    assert lines[11] == "\t\t(0) input_1_0 5x5 (not saved)"
    assert lines[14] == "\t\t(3) linear_1_3 5x5"
    assert lines[20] == "\t\t(9) buffer_1_9 5 (not saved)"
    assert len(lines) == 11 + 12


def test_model_printout_of_a_recurrent_branching_model() -> None:
    text = str(lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5)))
    assert "Model structure: recurrent (at most 4 loops), without branching" in text  # x feeds only the next op
    assert "\t\tfc (Linear) (x4)" in text and "\t\t(4) linear_1_1:2 (2/4 passes) 2x5" in text


def test_human_bytes_and_shape_text() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 2**20, 3 * 2**30)] == [
        "0 B", "1023 B", "1.0 KB", "1.5 KB", "5.0 MB", "3.0 GB"]
    assert shape_text((2, 3, 4)) == "2x3x4" and shape_text(()) == "scalar"
