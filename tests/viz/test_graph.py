"""What the picture shows, read back from rendered SVG (and the DOT it came from)."""

from __future__ import annotations

import torch
from tests.viz.svg_tools import render_svg
from tests.models import DemoNetwork, SimpleRecurrent
from tests.viz.viz_models import Blocks, Conditional, InceptionNet, SharedBlock, SmallResNet

import lens_train as lt
from lens_train.capture.calls import _THIN_FUNCTIONS
from lens_train.viz.graph import build_graph
from lens_train.viz.placement import VisOptions

INPUT, OUTPUT, BUFFER, PARAMS, BOOL = "#98fb98", "#ff9999", "#aaaaaa", "#e6e6e6", "#f7d460"


def _log(model: torch.nn.Module, *shape: int) -> lt.ModelLog:
    torch.manual_seed(0)
    return lt.log_forward_pass(model, torch.rand(*shape), layers_to_save=None, random_seed=0)


def _parent_pairs(log: lt.ModelLog, rolled: bool = False) -> set[tuple[str, str]]:
    key = (lambda name: log[name].layer_label_no_pass) if rolled else (lambda name: name)
    return {(key(p), key(layer.layer_label)) for layer in log for p in layer.parent_layers}


def test_demo_network_nodes_colours_and_text(tmp_path):
    log = _log(DemoNetwork(), 5, 5)
    g = render_svg(log, tmp_path)
    assert set(g.nodes) == set(log.layer_labels)
    assert g.nodes["input_1_0"].fill == INPUT and g.nodes["output_1_11"].fill == OUTPUT
    buffer = g.nodes["buffer_1_9"]
    assert buffer.fill == BUFFER and "@example_buffer" in buffer.texts
    fc = g.nodes["linear_1_3"]
    # 5x5 float32 = 25 * 4 bytes; weight 5x5 and bias of 5
    assert fc.texts == ["linear_1_3", "5x5 (100 B)", "@fc", "params: 5x5, x5"]
    assert fc.fill == PARAMS and fc.outline == "polygon"
    assert g.nodes["relu_1_2"].outline == "polygon" and "@relu" in g.nodes["relu_1_2"].texts
    assert g.nodes["add_1_1"].outline == "ellipse" and g.nodes["add_1_1"].fill == "white"
    assert g.nodes["randn_1_5"].dashed and not g.nodes["add_2_6"].dashed
    assert g.edges[("randn_1_5", "add_2_6")][0].dashed


def test_demo_network_edges_follow_data_flow_with_argument_positions(tmp_path):
    log = _log(DemoNetwork(), 5, 5)
    g = render_svg(log, tmp_path)
    assert set(g.edges) == _parent_pairs(log)
    assert g.edges[("add_2_6", "truediv_1_8")][0].texts == ["arg 0"]
    assert g.edges[("pow_1_7", "truediv_1_8")][0].texts == ["arg 1"]
    # x + noise and x * buffer: order does not matter, so no labels
    assert g.edges[("relu_2_4", "add_2_6")][0].texts == []
    assert g.edges[("buffer_1_9", "mul_1_10")][0].texts == []


def test_header_names_model_tensors_and_params(tmp_path):
    log = _log(DemoNetwork(), 5, 5)
    g = render_svg(log, tmp_path)
    tensor_bytes = 11 * 100 + 20  # eleven 5x5 float tensors and the 5-element buffer
    assert g.header[0] == "DemoNetwork"
    assert g.header[1] == f"12 tensors total ({tensor_bytes / 1024:.1f} KB)"
    assert g.header[2] == "30 params in 2 tensors (120 B)"
    assert g.header[3] == "unrolled view"


def test_recurrent_unrolled_has_one_node_per_pass(tmp_path):
    log = _log(SimpleRecurrent(), 5, 5)
    g = render_svg(log, tmp_path)
    assert set(g.nodes) == set(log.layer_labels) and len(g.nodes) == 14
    assert g.nodes["linear_1_1:3"].texts[:3] == ["linear_1_1:3", "5x5 (100 B)", "@fc:3"]
    assert ("mul_1_3:2", "linear_1_1:3") in g.edges
    assert all(e[0].texts == [] for e in g.edges.values())


def test_recurrent_rolled_merges_passes_and_annotates_edges(tmp_path):
    log = _log(SimpleRecurrent(), 5, 5)
    g = render_svg(log, tmp_path, vis_opt="rolled")
    assert set(g.nodes) == {"input_1_0", "linear_1_1", "add_1_2", "mul_1_3", "output_1_4"}
    assert set(g.edges) == _parent_pairs(log, rolled=True)
    assert g.nodes["linear_1_1"].texts[:3] == ["linear_1_1 (x4)", "5x5 (100 B)", "@fc"]
    assert g.nodes["add_1_2"].texts[0] == "add_1_2 (x4)"
    assert g.edges[("input_1_0", "linear_1_1")][0].texts == ["in 1"]
    assert g.edges[("mul_1_3", "linear_1_1")][0].texts == ["out 1-3", "in 2-4"]
    assert g.edges[("mul_1_3", "output_1_4")][0].texts == ["out 4"]
    assert g.edges[("linear_1_1", "add_1_2")][0].texts == []
    assert g.header[3] == "rolled view"


def test_conditional_if_edge_points_to_the_chosen_branch(tmp_path):
    taken = render_svg(_log(Conditional(), 5, 5), tmp_path, "taken")
    assert taken.nodes["gt_1_2"].fill == BOOL and "if: True" in taken.nodes["gt_1_2"].texts
    [edge] = taken.edges[("gt_1_2", "mul_1_3")]
    assert edge.texts == ["IF"] and edge.stroke != "black"
    torch.manual_seed(0)
    log = lt.log_forward_pass(Conditional(), -torch.rand(5, 5), layers_to_save=None)
    other = render_svg(log, tmp_path, "other")
    assert "if: False" in other.nodes["gt_1_2"].texts
    assert other.edges[("gt_1_2", "sub_1_3")][0].texts == ["IF"]
    assert [k for k, e in other.edges.items() if e[0].texts == ["IF"]] == [("gt_1_2", "sub_1_3")]


def test_nested_modules_are_nested_clusters(tmp_path):
    log = _log(InceptionNet(), 2, 4)
    g = render_svg(log, tmp_path)
    assert set(g.clusters) == {"block:1", "block.b2:1", "block.b3:1"}
    assert g.clusters["block:1"].texts == ["@block", " (Inception)"]
    assert g.clusters["block.b2:1"].texts == ["@block.b2", " (Sequential)"]
    block, b2 = g.clusters["block:1"], g.clusters["block.b2:1"]
    assert block.contains(b2) and block.contains(g.clusters["block.b3:1"])
    assert b2.contains(g.nodes["relu_1_4"]) and not b2.contains(g.nodes["linear_2_2"])
    assert block.contains(g.nodes["linear_2_2"]) and block.contains(g.nodes["cat_1_8"])
    assert not block.contains(g.nodes["linear_1_1"]) and not block.contains(g.nodes["relu_2_9"])
    # torch.cat([b1, b2, b3]): each branch feeds one slot of the list argument
    assert g.edges[("tanh_1_7", "cat_1_8")][0].texts == ["arg 0[2]"]


def test_nesting_depth_collapses_modules(tmp_path):
    log = _log(InceptionNet(), 2, 4)
    one = render_svg(log, tmp_path, "one", vis_nesting_depth=1)
    assert set(one.nodes) == {"input_1_0", "linear_1_1", "@block:1", "relu_2_9", "linear_6_10", "output_1_11"}
    block = one.nodes["@block:1"]
    assert block.texts == ["@block", "Inception", "2x18 (144 B)", f"params: {sum(p.numel() for p in InceptionNet().block.parameters())}"]
    assert block.outline.startswith("polygon+polyline")  # box3d
    assert set(one.edges) == {("input_1_0", "linear_1_1"), ("linear_1_1", "@block:1"), ("@block:1", "relu_2_9"),
                              ("relu_2_9", "linear_6_10"), ("linear_6_10", "output_1_11")}
    assert one.clusters == {}
    two = render_svg(log, tmp_path, "two", vis_nesting_depth=2)
    assert {"@block.b2:1", "@block.b3:1", "linear_2_2", "cat_1_8"} <= set(two.nodes)
    assert "relu_1_4" not in two.nodes and set(two.clusters) == {"block:1"}
    assert two.clusters["block:1"].contains(two.nodes["@block.b2:1"])
    assert two.edges[("@block.b3:1", "cat_1_8")][0].texts == ["arg 0[2]"]
    three = render_svg(log, tmp_path, "three", vis_nesting_depth=3)
    assert set(three.nodes) == set(log.layer_labels)


def test_rolled_collapsed_module_counts_its_calls(tmp_path):
    log = _log(SharedBlock(), 2, 4)
    g = render_svg(log, tmp_path, vis_opt="rolled", vis_nesting_depth=1)
    assert set(g.nodes) == {"input_1_0", "@block", "output_1_3"}
    assert g.nodes["@block"].texts[0] == "@block (x3)"
    assert g.edges[("@block", "@block")][0].texts == ["out 1-2", "in 2-3"]
    assert g.edges[("input_1_0", "@block")][0].texts == ["in 1"]
    unrolled = render_svg(log, tmp_path, "u", vis_nesting_depth=1)
    assert {"@block:1", "@block:2", "@block:3"} <= set(unrolled.nodes)
    assert unrolled.nodes["@block:2"].texts[0] == "@block:2"


def test_module_calls_are_clusters_per_call_or_merged(tmp_path):
    log = _log(SharedBlock(), 2, 4)
    unrolled = render_svg(log, tmp_path, "u")
    assert set(unrolled.clusters) == {"block:1", "block:2", "block:3"}
    assert unrolled.clusters["block:2"].texts[0] == "@block:2"
    assert unrolled.clusters["block:2"].contains(unrolled.nodes["relu_1_2:2"])
    rolled = render_svg(log, tmp_path, "r", vis_opt="rolled")
    assert set(rolled.clusters) == {"block"} and rolled.clusters["block"].texts[-1].endswith("(x3)")


def test_module_focus_draws_only_its_inside(tmp_path):
    log = _log(Blocks(), 2, 8)
    g = render_svg(log, tmp_path, vis_module="blocks.2")
    inside = [layer.layer_label for layer in log if "blocks.2:1" in layer.containing_modules]
    assert len(inside) == 3
    entering = {p for name in inside for p in log[name].parent_layers} - set(inside)
    leaving = {c for name in inside for c in log[name].child_layers} - set(inside)
    assert set(g.nodes) == set(inside) | entering | leaving
    assert all(g.nodes[n].fill == INPUT and "enters the module" in g.nodes[n].texts for n in entering)
    assert all(g.nodes[n].fill == OUTPUT for n in leaving)
    assert set(g.clusters) == {"blocks.2:1"}
    assert "unrolled view, inside blocks.2" in g.header


def test_focus_and_nesting_depth_count_from_the_focused_module(tmp_path):
    log = _log(InceptionNet(), 2, 4)
    g = render_svg(log, tmp_path, vis_module="block", vis_nesting_depth=1)
    assert {"@block.b2:1", "@block.b3:1", "linear_2_2", "cat_1_8", "linear_1_1", "relu_2_9"} == set(g.nodes)


def test_single_op_modules_are_labelled_nodes_not_clusters():
    log = _log(DemoNetwork(), 5, 5)
    graph = build_graph(log, VisOptions("unrolled"))
    assert graph.clusters == {}
    assert {n.key: n.cluster for n in graph.nodes}["linear_1_3"] == ()


class _Chain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = self.fc(x)
        return x


def test_rolled_layer_feeding_its_next_pass_is_a_self_loop(tmp_path):
    log = _log(_Chain(), 1, 3)
    g = render_svg(log, tmp_path, vis_opt="rolled")
    assert g.edges[("linear_1_1", "linear_1_1")][0].texts == ["out 1-2", "in 2-3"]
    assert g.edges[("linear_1_1", "output_1_2")][0].texts == ["out 3"]


def _resnet_log() -> lt.ModelLog:
    torch.manual_seed(0)
    return lt.log_forward_pass(SmallResNet().eval(), torch.randn(2, 3, 16, 16), layers_to_save=None)


def test_resnet_at_depth_one_is_a_chain_of_modules(tmp_path):
    log = _resnet_log()
    g = render_svg(log, tmp_path, vis_nesting_depth=1)
    chain = ["input_1_0", "@stem:1", "@layer1:1", "@layer2:1", "adaptiveavgpool2d_1_32", "flatten_1_33", "linear_1_34",
             "output_1_35"]
    assert set(g.nodes) == set(chain) and g.clusters == {}
    assert set(g.edges) == set(zip(chain, chain[1:]))
    params = sum(p.numel() for p in SmallResNet().layer2.parameters())
    assert g.nodes["@layer2:1"].texts == ["@layer2", "BasicBlock", "2x16x8x8 (8.0 KB)", f"params: {params:,}"]


def test_resnet_at_depth_two_boxes_the_blocks_and_shows_both_skips(tmp_path):
    log = _resnet_log()
    g = render_svg(log, tmp_path, vis_nesting_depth=2)
    assert set(g.clusters) == {"stem:1", "layer1:1", "layer2:1"}
    collapsed = {k for k in g.nodes if k.startswith("@")}
    assert collapsed == {"@stem.1:1", "@layer1.bn1:1", "@layer1.bn2:1", "@layer2.bn1:1", "@layer2.bn2:1", "@layer2.downsample:1"}
    assert not any(k.startswith("buffer") for k in g.nodes)  # inside the collapsed BatchNorms
    # block 1 adds its input (the stem's output); block 2 adds its downsampled input
    assert {("relu_1_5", "add_1_15"), ("relu_3_16", "@layer2.downsample:1"), ("@layer2.downsample:1", "add_2_30"),
            ("@layer2.bn2:1", "add_2_30")} <= set(g.edges)
    assert g.clusters["layer2:1"].contains(g.nodes["@layer2.downsample:1"])
    assert not g.clusters["layer1:1"].contains(g.nodes["relu_1_5"])


def test_resnet_full_view_boxes_only_modules_with_several_ops(tmp_path):
    _THIN_FUNCTIONS.discard(torch.nn.functional.batch_norm)  # the first call of it is learned again
    log = _resnet_log()
    g = render_svg(log, tmp_path)
    assert set(g.nodes) == set(log.layer_labels) and set(g.edges) == _parent_pairs(log)
    # a BatchNorm is one op reading two buffers: not a box; its buffers sit in the block's box
    assert set(g.clusters) == {"stem:1", "layer1:1", "layer2:1", "layer2.downsample:1"}
    assert g.clusters["layer1:1"].contains(g.nodes["buffer_3_7"]) and "@layer1.bn1.running_mean" in g.nodes["buffer_3_7"].texts
    assert g.clusters["layer2.downsample:1"].contains(g.nodes["batchnorm_6_29"])
    for bn in [layer for layer in log if layer.layer_type == "batchnorm"]:
        mean, var = [p for p in bn.parent_layers if log[p].is_buffer]
        # the same argument labels on every call, the first (which teaches the engine F.batch_norm) included
        assert g.edges[(mean, bn.layer_label)][0].texts == ["arg 1"] and g.edges[(var, bn.layer_label)][0].texts == ["arg 2"]
        assert not g.edges[(mean, bn.layer_label)][0].dashed  # buffers are model state, not generated tensors
    assert g.nodes["relu_2_10"].texts[-1] == "@layer1.relu:1" and g.nodes["relu_3_16"].texts[-1] == "@layer1.relu:2"


def test_resnet_rolled_does_not_box_a_relu_used_twice(tmp_path):
    g = render_svg(_resnet_log(), tmp_path, vis_opt="rolled")
    assert set(g.clusters) == {"stem", "layer1", "layer2", "layer2.downsample"}
    assert g.nodes["relu_2_10"].texts[-1] == "@layer1.relu" and g.nodes["relu_3_16"].texts[-1] == "@layer1.relu"
    assert g.clusters["layer1"].contains(g.nodes["relu_2_10"]) and g.clusters["layer1"].contains(g.nodes["relu_3_16"])


class _Growing(torch.nn.Module):
    """A shared block applied to a batch that doubles each pass: passes of one layer differ in shape."""

    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.cat([x, self.block(x)], dim=0)
        return x


def test_rolled_node_lists_every_shape_its_passes_had(tmp_path):
    log = _log(_Growing(), 1, 4)
    g = render_svg(log, tmp_path, vis_opt="rolled")
    assert g.nodes["linear_1_1"].texts == ["linear_1_1 (x3)", "1x4 (16 B): pass 1", "2x4 (32 B): pass 2", "4x4 (64 B): pass 3",
                                           "@block.0", "params: 4x4, x4"]
    assert g.nodes["cat_1_3"].texts[1:] == ["2x4 (32 B): pass 1", "4x4 (64 B): pass 2", "8x4 (128 B): pass 3"]
    module = render_svg(log, tmp_path, "m", vis_opt="rolled", vis_nesting_depth=1).nodes["@block"]
    assert module.texts == ["@block (x3)", "Sequential", "1x4 (16 B): call 1", "2x4 (32 B): call 2", "4x4 (64 B): call 3",
                            "params: 20"]
    unrolled = render_svg(log, tmp_path, "u")
    assert unrolled.nodes["linear_1_1:2"].texts[1] == "2x4 (32 B)"
    same = render_svg(_log(SimpleRecurrent(), 5, 5), tmp_path, "same", vis_opt="rolled")
    assert same.nodes["linear_1_1"].texts[1] == "5x5 (100 B)"  # one shape: one line, no pass list
