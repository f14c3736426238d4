"""Every equivalent key finds the same layer; bad keys explain themselves."""

import re

import pytest
import torch

import lens_train as lt
from lens_train.errors import AmbiguousLayerError, LayerNotFoundError
from tests.models import SimpleRecurrent, SmallAlexNet


@pytest.fixture(scope="module")
def alex_log() -> lt.ModelLog:
    torch.manual_seed(0)
    return lt.log_forward_pass(SmallAlexNet().eval(), torch.randn(1, 3, 64, 64))


def test_all_keys_for_one_layer_are_equivalent(alex_log: lt.ModelLog) -> None:
    keys = ["conv2d_3_7", "conv2d_3", "conv2d_3_7:1", "conv2d_3:1", "features.6", "features.6:1", 7, -17]
    found = [alex_log[k] for k in keys]
    assert all(f is found[0] for f in found)
    assert found[0].layer_label == "conv2d_3_7"
    assert set(keys) <= set(found[0].lookup_keys)


def test_every_listed_lookup_key_finds_its_layer(alex_log: lt.ModelLog) -> None:
    seq = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU()), torch.ones(1, 3))
    for log in (alex_log, seq):
        for layer in log:
            assert all(log[key] is layer and key in log for key in layer.lookup_keys), layer.layer_label
    # "0" is the Sequential's first module, not position 0 (the input): ints are listed as ints
    assert seq["0"].layer_label == "linear_1_1" and 0 in seq[0].lookup_keys and "0" not in seq[0].lookup_keys
    assert set(alex_log.lookup_keys) == {k for layer in alex_log for k in layer.lookup_keys if isinstance(k, str)}
    assert 23 in alex_log and -24 in alex_log and 24 not in alex_log and "conv2d_9" not in alex_log


def test_resolution_order_when_a_module_is_named_like_a_label() -> None:
    class Confusing(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu_1 = torch.nn.Tanh()  # module address equal to the short label of the relu
            self.relu_1_1 = torch.nn.Sigmoid()  # module address equal to the full label of the relu

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.relu_1_1(self.relu_1(torch.relu(x)))

    log = lt.log_forward_pass(Confusing(), torch.randn(3))
    assert log.layer_labels == ["input_1_0", "relu_1_1", "tanh_1_2", "sigmoid_1_3", "output_1_4"]
    # labels (with or without :pass) win over module addresses; the modules stay listed in log.modules
    assert log["relu_1_1"].func_name == "relu" and log["relu_1"].func_name == "relu"
    assert log["relu_1:1"].func_name == "relu"  # short label with pass beats the module call
    assert log["relu_1_1:1"].func_name == "relu"
    assert log.modules["relu_1"].output_layers == ["tanh_1_2"]
    assert log.modules["relu_1_1"].output_layers == ["sigmoid_1_3"]


def test_container_address_is_its_last_output(alex_log: lt.ModelLog) -> None:
    assert alex_log["features"] is alex_log["maxpool2d_3_13"]
    assert alex_log["classifier"] is alex_log["linear_3_22"]


def test_len_iteration_and_labels(alex_log: lt.ModelLog) -> None:
    assert len(alex_log) == 24
    assert [layer.layer_label for layer in alex_log] == alex_log.layer_labels
    assert alex_log[0].is_input and alex_log[-1].is_output


def test_unknown_key_lists_closest(alex_log: lt.ModelLog) -> None:
    with pytest.raises(LayerNotFoundError, match="conv2d_3_7") as info:
        alex_log["conv2d_3_8"]
    assert isinstance(info.value, KeyError)
    with pytest.raises(LayerNotFoundError, match="features.6"):
        alex_log["feature.6"]


def test_int_out_of_range_and_bad_type(alex_log: lt.ModelLog) -> None:
    with pytest.raises(LayerNotFoundError, match="out of range"):
        alex_log[24]
    with pytest.raises(LayerNotFoundError, match="strings or ints"):
        alex_log[1.5]  # type: ignore[index]


def test_multi_pass_keys() -> None:
    model = SimpleRecurrent()
    log = lt.log_forward_pass(model, torch.randn(2, 5))
    assert log["linear_1_1:2"] is log["fc:2"] is log["linear_1:2"]
    with pytest.raises(AmbiguousLayerError, match="linear_1_1:1"):
        log["linear_1_1"]
    with pytest.raises(AmbiguousLayerError, match="fc"):
        log["fc"]
    expected = model.fc(log["mul_1_3:1"].activation)
    assert torch.allclose(log["linear_1_1:2"].activation, expected)


def test_modules_table(alex_log: lt.ModelLog) -> None:
    mod = alex_log.modules["features.6"]
    assert mod.module_type == "Conv2d" and mod.num_passes == 1
    assert mod.output_layers == ["conv2d_3_7"]
    assert alex_log.modules["features.6:1"]["outputs"] == ["conv2d_3_7"]
    with pytest.raises(LayerNotFoundError, match="features.6"):
        alex_log.modules["features.66"]


def test_every_user_facing_name_suggests_the_closest(alex_log: lt.ModelLog) -> None:
    from lens_train.errors import InputMismatchError, InvalidArgumentError

    model, x = SmallAlexNet().eval(), torch.randn(1, 3, 64, 64)
    cases = [
        (lambda: alex_log["conv2d_3_77"], LayerNotFoundError, "'conv2d_3_7'"),
        (lambda: alex_log["classifer.1"], LayerNotFoundError, "'classifier.1'"),
        (lambda: alex_log.modules["feature"], LayerNotFoundError, "'features'"),
        (lambda: alex_log.layer_passes("relu_9_9"), LayerNotFoundError, "relu_"),
        (lambda: alex_log.select(["maxpool3d"]), LayerNotFoundError, "'maxpool2d_"),
        (lambda: lt.log_forward_pass(model, x, layers_to_save=["conv2d_3_8"]), LayerNotFoundError, "'conv2d_3_7'"),
        (lambda: lt.log_forward_pass(model, x, random_sed=1), InvalidArgumentError, "'random_seed'"),
        (lambda: lt.log_forward_pass(model, x, vis_nesting_dept=1), InvalidArgumentError, "'vis_nesting_depth'"),
        (lambda: lt.log_forward_pass(model, None, {"X": x}), InputMismatchError, "'x'"),
    ]
    for call, error, closest in cases:
        with pytest.raises(error, match=r"Closest: .*" + re.escape(closest)) as info:
            call()
        assert "List every name with" in str(info.value)
