"""Labels follow the TorchLens conventions exactly."""

import torch
from torch import nn

import lens_train as lt
from tests.models import ALEXNET_LABELS, DemoNetwork, SimpleRecurrent, SmallAlexNet


def test_alexnet_labels_exact() -> None:
    log = lt.log_forward_pass(SmallAlexNet().eval(), torch.randn(1, 3, 64, 64))
    assert log.layer_labels == ALEXNET_LABELS


def test_demo_network_has_twelve_layers_in_order() -> None:
    log = lt.log_forward_pass(DemoNetwork(), torch.randn(5, 5))
    labels = log.layer_labels
    assert len(log) == 12
    assert labels[:5] == ["input_1_0", "add_1_1", "relu_1_2", "linear_1_3", "relu_2_4"]
    assert labels[5].startswith("randn_1_5")
    assert labels[6:9] == ["add_2_6", "pow_1_7", "truediv_1_8"]
    assert labels[9] == "buffer_1_9"
    assert labels[10:] == ["mul_1_10", "output_1_11"]
    assert log["buffer_1_9"].buffer_address == "example_buffer"
    assert log["randn_1_5"].is_internally_generated


def test_recurrent_labels_use_pass_suffix() -> None:
    log = lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5))
    assert log.layer_labels_no_pass == ["input_1_0", "linear_1_1", "add_1_2", "mul_1_3", "output_1_4"]
    assert [layer.layer_label for layer in log.layer_passes("linear_1_1")] == [f"linear_1_1:{i}" for i in range(1, 5)]


def test_type_names_strip_underscores_and_lowercase() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.pool(torch.nn.functional.max_pool2d(x, 2))
            q = y.flatten(1)[:, None, :]
            a = torch.nn.functional.scaled_dot_product_attention(q, q, q)
            return a / 2

    log = lt.log_forward_pass(M(), torch.randn(1, 4, 4, 4))
    types = [layer.layer_type for layer in log]
    assert types == ["input", "maxpool2d", "adaptiveavgpool2d", "flatten", "getitem", "scaleddotproductattention", "truediv", "output"]


def test_first_and_later_calls_of_a_functional_log_alike() -> None:
    """F.embedding_bag returns one of its op's four tensors: it must not log four tensors once, then one."""
    from lens_train.capture.calls import _THIN_FUNCTIONS

    _THIN_FUNCTIONS.discard(torch.nn.functional.embedding_bag)
    bag = torch.nn.EmbeddingBag(10, 4, mode="mean")
    args = (torch.tensor([1, 2, 4, 5, 4, 3]), torch.tensor([0, 3]))
    first = lt.log_forward_pass(bag, args, layers_to_save=None).layer_labels
    assert lt.log_forward_pass(bag, args, layers_to_save=None).layer_labels == first
