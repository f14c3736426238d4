"""Every script in examples/ runs and prints what it promises."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / name), str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


def test_every_example_has_a_test() -> None:
    tested = {"capture_and_print.py", "render_graph.py", "validate.py", "bundle_save_load.py",
              "plain_pytorch_taps.py", "plain_pytorch_distill.py", "lightning_all_callbacks.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_capture_and_print(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("capture_and_print.py", tmp_path, monkeypatch, capsys)
    assert "Layers (in order of execution):" in out
    assert "Layer relu_2_10" in out and "Output of modules: blocks.1.2:1" in out
    assert "output layer: output_1_21 (4, 10)" in out
    assert "saved only: ['relu_1_5', 'linear_1_20']" in out


def test_render_graph(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("render_graph.py", tmp_path, monkeypatch, capsys)
    svgs = {p.name: p.read_text() for p in (tmp_path / "out").glob("*.svg")}
    assert set(svgs) == {"cnn.svg", "cnn_overview.svg", "recurrent_unrolled.svg", "recurrent_rolled.svg"}
    assert "(x3)" in svgs["recurrent_rolled.svg"] and "(x3)" not in svgs["recurrent_unrolled.svg"]
    assert "rolled DOT source marks the loop" in out


def test_validate(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("validate.py", tmp_path, monkeypatch, capsys)
    assert [line.split()[-1] for line in out.splitlines()[:3]] == ["True", "True", "True"]
    assert "validate_model_activations: PASSED" in out


def test_bundle_save_load(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("bundle_save_load.py", tmp_path, monkeypatch, capsys)
    assert "manifest.json" in out and "loaded: False" in out
    assert "equal to the original: True" in out and "every activation equal" in out


@pytest.mark.slow
def test_plain_pytorch_taps(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("plain_pytorch_taps.py", tmp_path, monkeypatch, capsys)
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and "probe accuracy blocks.0" in epochs[-1]
    assert float(out.split("test accuracy: ")[1].split()[0]) > 0.8


@pytest.mark.slow
def test_plain_pytorch_distill(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("plain_pytorch_distill.py", tmp_path, monkeypatch, capsys)
    assert "adapters (student -> teacher channels): [(32, 8, 1, 1), (64, 16, 1, 1)]" in out
    assert float(out.split("teacher accuracy: ")[1].split()[0]) > 0.9
    assert "student with distillation:" in out


@pytest.mark.slow
def test_lightning_all_callbacks(tmp_path, monkeypatch, capsys) -> None:
    out = run_example("lightning_all_callbacks.py", tmp_path, monkeypatch, capsys)
    logged = out.split("logged: ")[1].splitlines()[0].split(", ")
    assert {"aux/blocks.1", "distill/blocks.2", "lens/total_loss", "probe/blocks.2/val_acc"} <= set(logged)
    assert "snapshots: ['epoch000-step000020', 'epoch001-step000040', 'epoch002-step000060']" in out
    run = tmp_path / "out" / "lightning_run"
    assert (run / "graphs" / "step000000.svg").is_file() and (run / "metrics.csv").is_file()
