"""Every equivalent key finds the same layer; bad keys explain themselves."""

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
    assert set(map(str, keys)) <= set(found[0].lookup_keys)


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
