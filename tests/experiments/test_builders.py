"""Records in configs -> the callbacks' dict arguments."""

import pytest
import torch

import lens_train as lt
from lens_train.errors import InvalidArgumentError
from lens_train.experiments.builders import (auxiliary_loss_callback, auxiliary_terms, build_lens_callbacks,
                                             distillation_callback, distillation_pairs)


def test_terms_become_losses_and_weights() -> None:
    losses, weights = auxiliary_terms([
        {"layer": "blocks.1", "loss": "deep_supervision", "weight": 0.3, "num_classes": 7},
        {"layer": "blocks.2", "loss": "l1_activity"},
    ])
    assert list(losses) == ["blocks.1", "blocks.2"] and weights == {"blocks.1": [0.3], "blocks.2": [1.0]}
    assert isinstance(losses["blocks.1"][0], lt.losses.DeepSupervision) and losses["blocks.1"][0].num_classes == 7
    x = torch.tensor([[-1.0, 3.0]])
    assert float(losses["blocks.2"][0](x, None)) == float(lt.losses.l1_activity()(x, None))


def test_target_nodes_and_callables_are_accepted() -> None:
    losses, _ = auxiliary_terms([{"layer": "a", "loss": {"_target_": "lens_train.train.losses.l2_activation"}},
                                 {"layer": "b", "loss": torch.nn.functional.l1_loss}])
    assert isinstance(losses["a"][0], lt.losses.L2Activation) and losses["b"][0] is torch.nn.functional.l1_loss


@pytest.mark.parametrize(("terms", "match"), [
    ([], "non-empty list"),
    ({"layer": "a", "loss": "mse"}, "non-empty list"),
    ([{"loss": "mse"}], r"lacks \['layer'\]"),
    ([{"layer": "a", "loss": "l1_activty"}], "Closest: 'l1_activity'"),
    ([{"layer": "a", "loss": "l1_activity", "wieght": 1}], "wieght"),
])
def test_bad_terms_name_the_problem(terms, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        auxiliary_terms(terms)


def test_pairs_become_a_mapping() -> None:
    assert distillation_pairs([{"student": "s.1", "teacher": "t.2"}, {"student": "s.2", "teacher": "t.3", "weight": 2}]) == (
        {"s.1": "t.2", "s.2": "t.3"}, {"s.2": 2.0})
    with pytest.raises(InvalidArgumentError, match="unknown keys"):
        distillation_pairs([{"student": "a", "teacher": "b", "layer": "c"}])


def test_callbacks_get_the_converted_arguments() -> None:
    aux = auxiliary_loss_callback([{"layer": "blocks.1", "loss": "l1_activity", "weight": 0.2}], weight=0.5)
    assert aux.aux.weights == {"blocks.1": [0.2]} and aux.aux.weight == 0.5
    kd = distillation_callback(torch.nn.Linear(2, 2), [{"student": "0", "teacher": "0", "weight": 3.0}])
    assert type(kd).__name__ == "DistillationCallback"


def test_build_skips_null_entries_and_the_teacherless_distill_entry() -> None:
    lens = {"probes": {"_target_": "lens_train.callbacks.ProbeCallback", "layers": ["blocks.0"], "num_classes": 10},
            "stats": None,
            "distill": {"_target_": "lens_train.experiments.builders.distillation_callback", "teacher": None,
                        "pairs": [{"student": "0", "teacher": "0"}]}}
    assert [type(c).__name__ for c in build_lens_callbacks(lens)] == ["ProbeCallback"]
    with_teacher = build_lens_callbacks(lens, teacher=torch.nn.Linear(2, 2))
    assert [type(c).__name__ for c in with_teacher] == ["ProbeCallback", "DistillationCallback"]
    # Lists reach the callback as plain lists, as its signature says.
    assert type(with_teacher[0].probes.layers) is list


def test_several_records_on_one_layer_become_a_list_of_terms() -> None:
    aux = auxiliary_loss_callback([{"layer": "blocks.1", "loss": "deep_supervision", "num_classes": 10, "weight": 0.3},
                                   {"layer": "blocks.1", "loss": "l1_activity", "weight": 1e-4}])
    assert aux.aux.term_names == ["blocks.1/deep_supervision", "blocks.1/l1_activity"]
    assert aux.aux.weights == {"blocks.1": [0.3, 1e-4]} and aux.tap_layers() == ["blocks.1"]
