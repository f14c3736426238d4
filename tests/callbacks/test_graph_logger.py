"""GraphLoggerCallback: files per epoch, dead-unit colours, TensorBoard image."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

import lens_train as lt
from lens_train.callbacks import GraphLoggerCallback
from lens_train.errors import InvalidArgumentError
from tests.callbacks.lit_models import LitNet, fit


def test_renders_at_fit_start_and_every_n_epochs(tmp_path):
    cb = GraphLoggerCallback(every_n_epochs=2)
    fit(tmp_path, LitNet(), [cb], max_epochs=4)
    names = sorted(p.name for p in cb.written)
    assert names == ["epoch001.svg", "epoch003.svg", "step000000.svg"]
    assert all(p.parent == tmp_path / "run" / "version_0" / "graphs" for p in cb.written)
    assert "net.layer1" in cb.written[0].read_text()
    assert len(cb.timings) == 3 and all(t["render_s"] > 0 for t in cb.timings)


def test_nodes_coloured_by_dead_units(tmp_path):
    module = LitNet()
    with torch.no_grad():  # every unit of layer2's ReLU is dead: its inputs are all negative
        module.net.layer2[0].weight.zero_()
        module.net.layer2[0].bias.fill_(-1.0)
    cb = GraphLoggerCallback(every_n_epochs=0, background=False)
    fit(tmp_path, module, [cb], max_epochs=1)
    svg = cb.written[0].read_text()
    assert "dead units: 100%" in svg and "#FF0000" in svg.upper()


def test_tensorboard_gets_an_image(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cb = GraphLoggerCallback(every_n_epochs=1)
    fit(tmp_path, LitNet(), [cb], max_epochs=1, logger=TensorBoardLogger(tmp_path, name="tb"))
    events = EventAccumulator(str(tmp_path / "tb" / "version_0"))
    events.Reload()
    assert len(events.Images("lens/graph")) == 2


def test_constructor_validation():
    with pytest.raises(InvalidArgumentError, match="vis_opt must be 'rolled' or 'unrolled', got 'tree'"):
        GraphLoggerCallback(vis_opt="tree")
    with pytest.raises(InvalidArgumentError, match="every_n_epochs must be an int >= 0, got -1"):
        GraphLoggerCallback(every_n_epochs=-1)


def test_default_depth_draws_a_transformer_readably(tmp_path):
    from PIL import Image

    from lens_train.experiments import Classifier, RowTransformer
    from lens_train.viz.dot import graph_to_dot
    from lens_train.viz.render import render_dot

    module = Classifier(RowTransformer(dim=32, depth=3, num_heads=4))
    log = lt.log_forward_pass(module, torch.zeros(2, 1, 8, 8), layers_to_save=None)
    default, everything = GraphLoggerCallback(annotate=False), GraphLoggerCallback(annotate=False, vis_nesting_depth=None)
    assert default.vis_nesting_depth == 4
    shown, full = default.graph(log), everything.graph(log)
    assert len(shown.nodes) < len(full.nodes) / 3
    labels = " ".join(node.label for node in shown.nodes)
    assert "net.blocks.0.attn" in labels and "net.blocks.2.mlp" in labels  # each block's parts, as boxes
    with Image.open(render_dot(graph_to_dot(shown), tmp_path / "g.png", "png")) as img:
        width, height = img.size
    assert width < 600 and height < 3000  # every module: 509 x 7412 px
