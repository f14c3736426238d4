"""Inline display in a Jupyter kernel, without requiring IPython."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import lens_train as lt
from lens_train.viz.display import in_notebook


@pytest.fixture
def notebook(monkeypatch: pytest.MonkeyPatch) -> list:
    shown: list = []
    display = types.ModuleType("IPython.display")
    display.display = shown.append
    display.SVG = lambda filename: ("SVG", filename)
    display.Image = lambda filename: ("Image", filename)
    ipython = types.ModuleType("IPython")
    ipython.display = display
    ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    return shown


@pytest.fixture
def log() -> lt.ModelLog:
    return lt.log_forward_pass(torch.nn.Linear(2, 2), torch.rand(1, 2), layers_to_save=None)


def test_notebook_shows_svg_and_png_inline(notebook, log, tmp_path):
    svg = log.render_graph(vis_outpath=tmp_path / "g")
    png = log.render_graph(vis_outpath=tmp_path / "g", vis_fileformat="png")
    assert notebook == [("SVG", str(svg)), ("Image", str(png))]


def test_save_only_shows_nothing(notebook, log, tmp_path):
    log.render_graph(vis_outpath=tmp_path / "g", vis_save_only=True)
    assert notebook == []


def test_terminal_ipython_and_plain_python_show_nothing(monkeypatch, log, tmp_path):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert not in_notebook()
    terminal = types.ModuleType("IPython")
    terminal.get_ipython = lambda: types.SimpleNamespace()  # a terminal shell has no kernel
    monkeypatch.setitem(sys.modules, "IPython", terminal)
    assert not in_notebook()
    assert log.render_graph(vis_outpath=tmp_path / "g").exists()
