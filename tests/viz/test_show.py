"""show_model_graph: capture without activations, then draw."""

from __future__ import annotations

import pytest
import torch
from tests.viz.svg_tools import parse_svg
from tests.models import DemoNetwork

import lens_train as lt
from lens_train.errors import InvalidArgumentError


class _Keyword(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 3)

    def forward(self, x: torch.Tensor, *, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x) / scale


def test_show_model_graph_draws_every_layer_and_leaves_the_model_alone(tmp_path):
    model = DemoNetwork()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = lt.show_model_graph(model, torch.rand(5, 5), vis_outpath=tmp_path / "demo", vis_save_only=True, random_seed=0)
    expected = lt.log_forward_pass(model, torch.rand(5, 5), layers_to_save=None, random_seed=0).layer_labels
    assert path == tmp_path / "demo.svg"
    assert set(parse_svg(path).nodes) == set(expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_show_model_graph_takes_keyword_inputs_and_every_vis_option(tmp_path):
    path = lt.show_model_graph(_Keyword(), torch.rand(2, 3), {"scale": torch.full((3,), 2.0)}, vis_opt="rolled",
                               vis_outpath=tmp_path / "k", vis_fileformat="png", vis_save_only=True)
    assert path.suffix == ".png" and path.stat().st_size > 0
    svg = parse_svg(lt.show_model_graph(_Keyword(), torch.rand(2, 3), {"scale": torch.ones(3)},
                                        vis_outpath=tmp_path / "k", vis_save_only=True))
    assert svg.edges[("input_2_1", "truediv_1_3")][0].texts == ["arg 1"]


def test_show_model_graph_none_and_bad_mode(tmp_path):
    assert lt.show_model_graph(DemoNetwork(), torch.rand(5, 5), vis_opt="none", vis_outpath=tmp_path / "x") is None
    assert not any(tmp_path.iterdir())
    with pytest.raises(InvalidArgumentError, match=r"vis_opt must be 'unrolled', 'rolled' or 'none', got 'flat'"):
        lt.show_model_graph(DemoNetwork(), torch.rand(5, 5), vis_opt="flat")
