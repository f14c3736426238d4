"""get_layers, get_nodes, Inspect."""

import torch
from torch import nn

import lens_train as lt


def test_get_layers_and_nodes() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    assert lt.get_layers(nn.DataParallel(model)) == ["0", "1"]
    nodes = lt.get_nodes(model, torch.ones(1, 2))
    assert nodes == ["linear_1_1", "relu_1_2"]


def test_inspect_returns_output_and_taps_every_call() -> None:
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    x = torch.randn(4, 2)
    out, acts = lt.Inspect(model, ["0", "1"])(x)
    assert torch.allclose(out, model(x)) and torch.allclose(acts[1], torch.relu(model[0](x)))
    only = lt.Inspect(model, "1", keep_output=False)
    for _ in range(2):
        assert only(x).shape == (4, 3)
    assert list(lt.Inspect(model, {"0": "x1"}).parameters()) == list(model.parameters())
