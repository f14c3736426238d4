"""Which node each layer pass becomes: modes, nesting depth, module focus, option checks."""

from __future__ import annotations

import pytest
import torch
from tests.models import SimpleRecurrent
from tests.viz.viz_models import Blocks, InceptionNet

import lens_train as lt
from lens_train.errors import InvalidArgumentError, LayerNotFoundError
from lens_train.viz.placement import VisOptions, make_options, place_layers


def _log(model: torch.nn.Module, *shape: int) -> lt.ModelLog:
    return lt.log_forward_pass(model, torch.rand(*shape), layers_to_save=None, random_seed=0)


def test_unrolled_and_rolled_keys():
    log = _log(SimpleRecurrent(), 2, 5)
    unrolled = place_layers(log, VisOptions("unrolled")).node_of
    rolled = place_layers(log, VisOptions("rolled")).node_of
    assert unrolled == log.layer_labels
    assert rolled == [layer.layer_label_no_pass for layer in log]
    assert rolled.count("linear_1_1") == 4


def test_nesting_depth_maps_deep_layers_to_their_module_call():
    log = _log(InceptionNet(), 2, 4)
    placed = place_layers(log, VisOptions("unrolled", nesting_depth=2))
    by_label = dict(zip(log.layer_labels, placed.node_of))
    assert by_label["relu_1_4"] == by_label["linear_4_5"] == "@block.b2:1"
    assert by_label["linear_2_2"] == "linear_2_2"  # block.b1 is one op: stays a layer node
    assert by_label["cat_1_8"] == "cat_1_8"
    assert placed.cluster_path["@block.b2:1"] == ("block:1",)
    assert placed.module_nodes == {"@block.b2:1": "block.b2:1", "@block.b3:1": "block.b3:1"}


def test_rolled_module_node_keeps_the_call_number_of_each_pass():
    log = _log(Blocks(n=2), 2, 8)
    placed = place_layers(log, VisOptions("rolled", nesting_depth=1))
    assert set(placed.node_of) == {"input_1_0", "@blocks.0", "@blocks.1", "add_1_4", "add_2_8", "output_1_9"}


def test_focus_marks_boundary_nodes_outside_every_cluster():
    log = _log(Blocks(n=3), 2, 8)
    placed = place_layers(log, VisOptions("unrolled", module="blocks.1"))
    drawn = {k for k in placed.node_of if k is not None}
    assert placed.boundary == {"add_1_4": "in", "add_2_8": "out"}
    assert drawn == {"add_1_4", "linear_3_5", "gelu_2_6", "linear_4_7", "add_2_8"}
    assert placed.cluster_path["gelu_2_6"] == ("blocks.1:1", "blocks.1.1:1") and placed.cluster_path["add_1_4"] == ()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"vis_opt": "sideways"}, r"vis_opt must be 'unrolled' or 'rolled'.*got 'sideways'"),
        ({"vis_nesting_depth": 0}, r"vis_nesting_depth must be None .* or an int >= 1, got 0"),
        ({"vis_nesting_depth": 1.5}, r"got 1\.5"),
        ({"vis_module": 3}, r"vis_module must be a module address string"),
    ],
)
def test_bad_options_name_the_fix(kwargs, match):
    log = _log(Blocks(n=2), 2, 8)
    args = {"vis_opt": "unrolled", "vis_nesting_depth": None, "vis_module": None} | kwargs
    with pytest.raises(InvalidArgumentError, match=match):
        make_options(log, **args)


def test_unknown_module_lists_closest_addresses():
    log = _log(Blocks(n=3), 2, 8)
    with pytest.raises(LayerNotFoundError, match=r"vis_module='block\.1'.*Closest: .*'blocks\.1'.*list\(log\.modules\)"):
        make_options(log, "unrolled", None, "block.1")
    with pytest.raises(LayerNotFoundError, match="blocks.1:2"):
        make_options(log, "unrolled", None, "blocks.1:2")
    assert make_options(log, "rolled", 2, "blocks.1:1") == VisOptions("rolled", 2, "blocks.1:1")
