"""``vis_gradients=True``: the backward pass drawn on the graph (blue edges, gradient shapes)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from tests.viz.svg_tools import parse_svg, render_svg
from tests.models import SimpleRecurrent
from torch import nn

import lens_train as lt
from lens_train.errors import InvalidArgumentError
from lens_train.viz import render_graph, to_dot
from lens_train.viz.gradient_flow import GRADIENT_COLOR, gradient_flow

_EDGE = re.compile(r'^\s*"([^"]+)" -> "([^"]+)"(?: \[(.*)\])?;$')
_NODE = re.compile(r'^\s*"([^"]+)" \[label=<(.*)>, shape=')


class PartlyFrozen(nn.Module):
    """A trained path, a side branch under ``no_grad`` and a detached branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.side = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x).relu()
        with torch.no_grad():
            frozen = self.side(h)
        detached = h.detach() * 2
        return h * 3 + frozen + detached


# Which edges the backward pass of PartlyFrozen goes through, worked out by hand: the input
# needs no grad, ``side`` ran under no_grad, and ``detach`` cuts the third branch.
_BLUE = {
    ("linear_1_1", "relu_1_2"), ("relu_1_2", "mul_2_6"), ("mul_2_6", "add_1_7"),
    ("add_1_7", "add_2_8"), ("add_2_8", "output_1_9"),
}
_NOT_BLUE = {
    ("input_1_0", "linear_1_1"), ("relu_1_2", "linear_2_3"), ("relu_1_2", "detach_1_4"),
    ("detach_1_4", "mul_1_5"), ("linear_2_3", "add_1_7"), ("mul_1_5", "add_2_8"),
}


def _edges(source: str) -> dict[tuple[str, str], str]:
    """(tail, head) -> the edge's attribute text."""
    return {(m.group(1), m.group(2)): m.group(3) or "" for line in source.splitlines() if (m := _EDGE.match(line))}


def _labels(source: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for line in source.splitlines() if (m := _NODE.match(line))}


def _blue(source: str) -> set[tuple[str, str]]:
    return {e for e, attrs in _edges(source).items() if f'color="{GRADIENT_COLOR}"' in attrs}


@pytest.fixture
def backward_log() -> lt.ModelLog:
    log = lt.log_forward_pass(PartlyFrozen(), torch.rand(5, 5), save_gradients=True)
    log[-1].activation.sum().backward()
    return log


def test_blue_edges_follow_the_backward_pass(backward_log: lt.ModelLog):
    source = to_dot(backward_log, vis_gradients=True)
    assert set(_edges(source)) == _BLUE | _NOT_BLUE
    assert _blue(source) == _BLUE
    # oracle: an edge carried gradient exactly when autograd gave both of its ends one
    with_grad = {layer.layer_label for layer in backward_log if layer.gradient is not None}
    both_ends = {(p, layer.layer_label) for layer in backward_log for p in layer.parent_layers if {p, layer.layer_label} <= with_grad}
    assert both_ends == _BLUE


def test_nodes_show_gradient_shape_and_size(backward_log: lt.ModelLog):
    labels = _labels(to_dot(backward_log, vis_gradients=True))
    for layer in backward_log:
        if layer.gradient is None:
            assert "grad" not in labels[layer.layer_label], layer.layer_label
        else:
            assert layer.gradient.shape == (5, 5)
            assert f'<font color="{GRADIENT_COLOR}">grad 5x5 (100 B)</font>' in labels[layer.layer_label]
    assert "grad" not in labels["linear_2_3"] and "grad" not in labels["mul_1_5"]


def test_svg_draws_blue_edges_and_blue_gradient_text(backward_log: lt.ModelLog, tmp_path: Path):
    path = render_graph(backward_log, vis_outpath=tmp_path / "g", vis_save_only=True, vis_gradients=True)
    svg = parse_svg(path)
    strokes = {edge: shapes[0].stroke.lower() for edge, shapes in svg.edges.items()}
    assert {e for e, s in strokes.items() if s == GRADIENT_COLOR.lower()} == _BLUE
    assert {strokes[e] for e in _NOT_BLUE} == {"black"}
    assert "grad 5x5 (100 B)" in svg.nodes["relu_1_2"].texts
    assert not any("grad" in t for t in svg.nodes["linear_2_3"].texts)
    assert any("6 of 10 layer passes got a gradient" in line for line in svg.header)
    ns = "{http://www.w3.org/2000/svg}"
    fills = {t.get("fill") for t in ET.parse(path).getroot().iter(f"{ns}text") if (t.text or "").startswith("grad ")}
    assert {f.lower() for f in fills} == {GRADIENT_COLOR.lower()}


def test_off_by_default_and_without_gradients_unchanged(backward_log: lt.ModelLog, tmp_path: Path):
    assert not _blue(to_dot(backward_log)) and "grad " not in to_dot(backward_log)
    fresh = lt.log_forward_pass(PartlyFrozen(), torch.rand(5, 5), save_gradients=True)  # no backward yet
    plain = lt.log_forward_pass(SimpleRecurrent(), torch.rand(5, 5), layers_to_save=None)
    for log in (fresh, plain):
        for vis in ({}, {"vis_opt": "rolled"}, {"vis_nesting_depth": 1}):
            assert to_dot(log, vis_gradients=True, **vis) == to_dot(log, **vis)
    with_opt = render_svg(fresh, tmp_path, "on", vis_gradients=True)
    without = render_svg(fresh, tmp_path, "off")
    assert (tmp_path / "on.svg").read_text() == (tmp_path / "off.svg").read_text()
    assert with_opt.header == without.header


def test_rolled_edge_is_blue_when_any_pass_carried_gradient():
    log = lt.log_forward_pass(SimpleRecurrent(), torch.rand(5, 5), save_gradients=True)
    log["mul_1_3:2"].activation.sum().backward()  # only passes 1-2 are upstream of this
    with_grad = [layer.layer_label for layer in log if layer.gradient is not None]
    assert with_grad == ["linear_1_1:1", "add_1_2:1", "mul_1_3:1", "linear_1_1:2", "add_1_2:2", "mul_1_3:2"]
    unrolled = _blue(to_dot(log, vis_gradients=True))
    assert ("mul_1_3:1", "linear_1_1:2") in unrolled
    assert ("mul_1_3:2", "linear_1_1:3") not in unrolled and ("add_1_2:3", "mul_1_3:3") not in unrolled
    rolled = to_dot(log, vis_opt="rolled", vis_gradients=True)
    # every rolled edge has a pass that carried gradient, except the way out of the loop
    assert _blue(rolled) == {("linear_1_1", "add_1_2"), ("add_1_2", "mul_1_3"), ("mul_1_3", "linear_1_1")}
    assert "grad 5x5 (100 B), passes 1-2" in _labels(rolled)["linear_1_1"]


def test_unsaved_layers_on_the_gradient_path_are_inferred():
    # Only the relu and the final add are saved: the unsaved linear, and the input (which
    # requires grad here), carried gradient; the detached exp branch did not.
    class Half(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).relu() + x.detach().exp()

    x = torch.rand(2, 3, requires_grad=True)
    log = lt.log_forward_pass(Half(), x, layers_to_save=["relu", "add"], save_gradients=True)
    log["add_1_5"].activation.sum().backward()
    flow = dict(zip(log.layer_labels, gradient_flow(log)))
    assert flow == {"input_1_0": True, "linear_1_1": True, "relu_1_2": True, "detach_1_3": False,
                    "exp_1_4": False, "add_1_5": True, "output_1_6": False}
    source = to_dot(log, vis_gradients=True)
    assert _blue(source) == {("input_1_0", "linear_1_1"), ("linear_1_1", "relu_1_2"), ("relu_1_2", "add_1_5")}
    assert "grad" not in _labels(source)["linear_1_1"]  # inferred flow, but no saved gradient to size


def test_collapsed_module_node_shows_its_output_gradient():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2))
    log = lt.log_forward_pass(model, torch.rand(3, 4), save_gradients=True)
    log[-1].activation.sum().backward()
    source = to_dot(log, vis_nesting_depth=1, vis_gradients=True)
    assert "grad 3x4 (48 B)" in _labels(source)["@0:1"]
    assert _blue(source) == {("@0:1", "linear_2_3"), ("linear_2_3", "output_1_4")}


def test_passes_through_every_entry_point(tmp_path: Path):
    log = lt.log_forward_pass(PartlyFrozen(), torch.rand(5, 5), save_gradients=True, vis_opt="unrolled",
                              vis_gradients=True, vis_outpath=tmp_path / "capture", vis_save_only=True)
    assert (tmp_path / "capture.svg").exists()
    log[-1].activation.sum().backward()
    assert log.to_dot(vis_gradients=True) == to_dot(log, vis_gradients=True)
    svg = parse_svg(log.render_graph(vis_outpath=tmp_path / "after", vis_save_only=True, vis_gradients=True))
    assert svg.edges[("relu_1_2", "mul_2_6")][0].stroke.lower() == GRADIENT_COLOR.lower()
    shown = lt.show_model_graph(PartlyFrozen(), torch.rand(5, 5), vis_outpath=tmp_path / "show",
                                vis_save_only=True, vis_gradients=True)
    assert shown == tmp_path / "show.svg"


def test_bad_value_and_misspelling_name_the_fix(backward_log: lt.ModelLog):
    with pytest.raises(InvalidArgumentError, match=r"vis_gradients must be True or False, got 'yes'.*render_graph\(vis_gradients=True\)"):
        to_dot(backward_log, vis_gradients="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="vis_gradients"):
        lt.log_forward_pass(PartlyFrozen(), torch.rand(5, 5), vis_gradient=True)
