"""Node, edge and header text: TorchLens formats, escaping, argument-label rules."""

from __future__ import annotations

import torch

import lens_train as lt
from lens_train.viz.node_text import arg_text, header_label, html, labels_arguments, pass_ranges, shape_label, shape_lines
from lens_train.viz.placement import VisOptions


class _Ops(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x - x.mean()
        b = torch.maximum(a, x)
        c = torch.where(a > 0, a, b)
        return torch.matmul(c, a.T) + x.sum()


def test_shapes_and_pass_ranges():
    assert [shape_label(s) for s in [(2, 3, 4), (7,), ()]] == ["2x3x4", "x7", "scalar"]
    assert pass_ranges([1]) == "1" and pass_ranges([3, 1, 2, 5, 7, 8]) == "1-3,5,7-8" and pass_ranges([]) == ""


def test_argument_text():
    assert arg_text([0]) == "arg 0"
    assert arg_text([2, 0]) == "arg 0, 2"
    assert arg_text(["other", 1, (0, 1)]) == "arg 0[1], 1, other"


def test_html_escapes_markup():
    assert html('<b a="1">&') == "&lt;b a=&quot;1&quot;&gt;&amp;"


def test_argument_labels_only_where_order_matters():
    log = lt.log_forward_pass(_Ops(), torch.rand(3, 3), layers_to_save=None)
    by_type = {layer.layer_type: labels_arguments(layer) for layer in log}
    assert by_type["sub"] is True  # x - x.mean()
    assert by_type["matmul"] is True
    assert by_type["where"] is True  # condition, then two values
    assert by_type["maximum"] is False and by_type["add"] is False  # commutative
    assert by_type["mean"] is False  # one argument


def test_header_counts_tensors_and_params():
    model = torch.nn.Sequential(torch.nn.Linear(10, 100), torch.nn.Linear(100, 20))
    log = lt.log_forward_pass(model, torch.rand(1, 10), layers_to_save=None)
    text = header_label(log, VisOptions("rolled", nesting_depth=2, module="0"))
    params = 10 * 100 + 100 + 100 * 20 + 20
    tensor_bytes = 4 * (10 + 100 + 20 + 20)
    assert text.split('<br align="left"/>')[:4] == [
        "<b>Sequential</b>", f"4 tensors total ({tensor_bytes} B)",
        f"{params:,} params in 4 tensors ({params * 4 / 1024:.1f} KB)", "rolled view, inside 0, nesting depth 2",
    ]
    assert "no parameters" in header_label(lt.log_forward_pass(torch.nn.ReLU(), torch.rand(2), layers_to_save=None), VisOptions("unrolled"))


def test_shape_lines_group_passes_by_shape_and_stay_short():
    assert shape_lines([(1, (2, 3), 24), (2, (2, 3), 24)]) == ["2x3 (24 B)"]
    assert shape_lines([(1, (1,), 4), (2, (2,), 8), (3, (1,), 4)]) == ["x1 (4 B): passes 1,3", "x2 (8 B): pass 2"]
    many = shape_lines([(n, (n,), 4 * n) for n in range(1, 8)], limit=3)
    assert many == ["x1 (4 B): pass 1", "x2 (8 B): pass 2", "... 5 more shapes"]
    assert shape_lines([(1, (1,), 4), (2, (2,), 8)], unit="call")[1] == "x2 (8 B): call 2"
