"""Rendering: output paths, choosing a Graphviz program, format errors, capture integration."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
import torch
from tests.viz.svg_tools import parse_svg
from tests.models import DemoNetwork, SimpleRecurrent

import lens_train as lt
from lens_train.errors import InvalidArgumentError, RenderError
from lens_train.viz import render
from lens_train.viz.render import graphviz_binaries, render_dot, render_graph

_DOT = 'digraph { "a" -> "b" }'
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def log() -> lt.ModelLog:
    return lt.log_forward_pass(DemoNetwork(), torch.rand(5, 5), layers_to_save=None, random_seed=0)


def _fake_dot(folder: Path, formats: str, exit_code: int = 0) -> Path:
    """A stand-in system ``dot`` that lists ``formats`` and writes a marker file."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "dot"
    script.write_text(
        "#!/bin/sh\n"
        f"if [ \"$1\" = '-T?' ]; then echo 'Format: \"?\" not recognized. Use one of: {formats}' >&2; exit 1; fi\n"
        f"if [ {exit_code} -ne 0 ]; then echo 'Error: syntax error in line 1' >&2; exit {exit_code}; fi\n"
        "cat > /dev/null; echo fake-dot > \"$3\"\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


def _only_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render.shutil, "which", lambda name: None if name == "dot" else real(name))


def test_output_paths_get_the_format_extension(log, tmp_path):
    assert render_graph(log, vis_outpath=tmp_path / "g", vis_save_only=True) == tmp_path / "g.svg"
    assert render_graph(log, vis_outpath=tmp_path / "h.svg", vis_save_only=True) == tmp_path / "h.svg"
    nested = render_graph(log, vis_outpath=str(tmp_path / "a" / "b" / "g"), vis_fileformat="png", vis_save_only=True)
    assert nested == tmp_path / "a" / "b" / "g.png" and nested.read_bytes()[:8] == _PNG_MAGIC


def test_vis_opt_none_draws_nothing(log, tmp_path):
    assert render_graph(log, vis_opt="none", vis_outpath=tmp_path / "g") is None
    assert list(tmp_path.iterdir()) == []


def test_graphviz_pure_is_found_without_a_system_dot(monkeypatch):
    _only_pure(monkeypatch)
    [binary] = graphviz_binaries()
    assert binary.kind == "graphviz-pure" and {"svg", "png"} <= set(binary.formats)


def test_system_dot_is_preferred_and_graphviz_pure_covers_its_missing_formats(monkeypatch, tmp_path):
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    fake = _fake_dot(tmp_path / "bin", "svg xdot")
    monkeypatch.setenv("PATH", f"{fake.parent}:{Path(shutil.which('sh')).parent}")
    kinds = [b.kind for b in graphviz_binaries()]
    assert kinds == ["system dot", "graphviz-pure"]
    assert render_dot(_DOT, tmp_path / "s", "svg").read_text().strip() == "fake-dot"
    assert render_dot(_DOT, tmp_path / "p", "png").read_bytes()[:8] == _PNG_MAGIC


def test_a_failing_program_reports_its_message(monkeypatch, tmp_path):
    fake = _fake_dot(tmp_path / "bin", "svg", exit_code=3)
    monkeypatch.setenv(render.ENV_VAR, str(fake))
    with pytest.raises(RenderError, match=r"failed to render .* \(exit 3\): Error: syntax error in line 1.*log\.to_dot\(\)"):
        render_dot(_DOT, tmp_path / "g", "svg")


def test_unavailable_format_lists_what_is_available_and_how_to_get_more(monkeypatch, log, tmp_path):
    _only_pure(monkeypatch)
    with pytest.raises(InvalidArgumentError, match=r"vis_fileformat='pdf'.*graphviz-pure .* writes .*png.*svg.*apt install graphviz") as err:
        render_graph(log, vis_outpath=tmp_path / "g", vis_fileformat="pdf", vis_save_only=True)
    assert "vis_fileformat='svg'" in str(err.value)


def test_no_graphviz_at_all(monkeypatch, tmp_path):
    monkeypatch.delenv(render.ENV_VAR, raising=False)
    monkeypatch.setattr(render.shutil, "which", lambda name: None)
    monkeypatch.setattr(render, "_find_pure", lambda: None)
    with pytest.raises(RenderError, match=r"No Graphviz program found.*pip install graphviz-pure.*log\.to_dot\(\)"):
        render_dot(_DOT, tmp_path / "g", "svg")


def test_bad_forced_program_and_bad_format_names(monkeypatch, tmp_path):
    with pytest.raises(InvalidArgumentError, match="vis_fileformat must be a format name"):
        render_dot(_DOT, tmp_path / "g", "svg; rm -rf")
    monkeypatch.setenv(render.ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(RenderError, match=r"LENS_TRAIN_DOT=.*missing.* is not an executable file"):
        render_dot(_DOT, tmp_path / "g", "svg")


@pytest.mark.parametrize("binary", graphviz_binaries(), ids=lambda b: b.kind)
@pytest.mark.parametrize("vis", [{}, {"vis_opt": "rolled"}, {"vis_nesting_depth": 1}])
def test_dot_source_is_valid_for_every_graphviz_found(monkeypatch, tmp_path, binary, vis):
    monkeypatch.setenv(render.ENV_VAR, binary.path)
    log = lt.log_forward_pass(SimpleRecurrent(), torch.rand(2, 5), layers_to_save=None)
    g = parse_svg(render_graph(log, vis_outpath=tmp_path / "g", vis_save_only=True, **vis))
    assert g.header[0] == "SimpleRecurrent" and "output_1_4" in g.nodes


def test_log_forward_pass_renders_while_capturing(tmp_path):
    out = tmp_path / "captured"
    log = lt.log_forward_pass(SimpleRecurrent(), torch.rand(2, 5), vis_opt="rolled", vis_outpath=str(out), vis_save_only=True)
    g = parse_svg(out.with_suffix(".svg"))
    assert g.nodes["linear_1_1"].texts[0] == "linear_1_1 (x4)"
    assert log["linear_1_1:2"].activation is not None


def test_special_characters_are_escaped(log, tmp_path):
    log.model_name = 'A<B> & "C"'
    g = parse_svg(render_graph(log, vis_outpath=tmp_path / "g", vis_save_only=True))
    assert g.header[0] == 'A<B> & "C"'
