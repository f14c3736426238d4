"""DOT text: quoting, declarations, nested subgraphs for nested modules."""

from __future__ import annotations

import re

import torch
from tests.models import DemoNetwork
from tests.viz.viz_models import InceptionNet

import lens_train as lt
from lens_train.viz import to_dot
from lens_train.viz.dot import quote

_NODE = re.compile(r'^\s*("(?:[^"\\]|\\.)*") \[label=')
_EDGE = re.compile(r'^\s*("(?:[^"\\]|\\.)*") -> ("(?:[^"\\]|\\.)*")')


def _scopes(source: str) -> dict[str, tuple[str, ...]]:
    """Node name -> the subgraphs (outermost first) it is declared in."""
    stack: list[str] = []
    where: dict[str, tuple[str, ...]] = {}
    for line in source.splitlines()[1:]:
        opened = re.match(r'^\s*subgraph "cluster_([^"]+)" \{', line)
        if opened:
            stack.append(opened.group(1))
        elif line.strip() == "}":
            if stack:
                stack.pop()
        elif m := _NODE.match(line):
            assert m.group(1) not in where, f"{m.group(1)} declared twice"
            where[m.group(1).strip('"')] = tuple(stack)
    return where


def test_quote_escapes_quotes_backslashes_and_newlines():
    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


def test_every_edge_joins_declared_nodes():
    log = lt.log_forward_pass(DemoNetwork(), torch.rand(5, 5), layers_to_save=None)
    source = to_dot(log)
    declared = _scopes(source)
    edges = [(m.group(1).strip('"'), m.group(2).strip('"')) for line in source.splitlines() if (m := _EDGE.match(line))]
    assert set(declared) == set(log.layer_labels)
    assert {n for e in edges for n in e} <= set(declared)
    assert len(edges) == sum(len(layer.parent_layers) for layer in log)
    assert source == log.to_dot()  # the ModelLog method delegates


def test_nested_modules_become_nested_subgraphs():
    log = lt.log_forward_pass(InceptionNet(), torch.rand(2, 4), layers_to_save=None)
    scopes = _scopes(to_dot(log))
    assert scopes["relu_1_4"] == ("block:1", "block.b2:1")
    assert scopes["tanh_1_7"] == ("block:1", "block.b3:1")
    assert scopes["cat_1_8"] == scopes["linear_2_2"] == ("block:1",)
    assert scopes["linear_1_1"] == scopes["output_1_11"] == ()
    rolled = _scopes(to_dot(log, vis_opt="rolled", vis_nesting_depth=2))
    assert rolled["@block.b2"] == ("block",)


def test_a_log_loaded_from_a_bundle_draws_the_same_graph(tmp_path):
    log = lt.log_forward_pass(InceptionNet(), torch.rand(2, 4), random_seed=0)
    lt.save(log, tmp_path / "bundle")
    loaded = lt.load(tmp_path / "bundle", lazy=True)
    for vis in ({}, {"vis_opt": "rolled"}, {"vis_nesting_depth": 2}):
        assert loaded.to_dot(**vis) == log.to_dot(**vis)
    assert loaded.render_graph(vis_outpath=tmp_path / "g", vis_save_only=True).exists()
