"""Plots: tables extracted from the history, and PNGs written with the right content."""

import math

import pytest

from lens_train.experiments import MetricsHistory
from lens_train.experiments.plots import probe_table, write_plots


def _history() -> MetricsHistory:
    h = MetricsHistory()
    h.steps = [{"step": float(s), "train/loss": 2.0 / s, "aux/blocks.1": 0.5 / s} for s in range(1, 6)]
    h.epochs = [
        {"epoch": 0.0, "step": 2.0, "val/acc": 0.5, "train/acc": 0.4, "val/loss": 1.5,
         "probe/blocks.0/val_acc": 0.3, "probe/blocks.0/train_acc": 0.35},
        {"epoch": 1.0, "step": 5.0, "val/acc": 0.8, "train/acc": 0.7, "val/loss": 0.5,
         "probe/blocks.0/val_acc": 0.6, "probe/blocks.1/val_acc": 0.9, "drift/blocks.0": 0.7, "drift/blocks.1": 0.95},
    ]
    return h


def test_probe_table_fills_missing_epochs_with_nan() -> None:
    epochs, table = probe_table(_history())
    assert epochs == [0.0, 1.0]
    assert table["blocks.0"] == [0.3, 0.6]
    assert math.isnan(table["blocks.1"][0]) and table["blocks.1"][1] == 0.9
    assert probe_table(_history(), "train")[1] == {"blocks.0": [0.35, pytest.approx(float("nan"), nan_ok=True)]}


def test_write_plots_writes_two_pngs(tmp_path) -> None:
    from matplotlib.image import imread

    written = write_plots(_history(), tmp_path)
    assert sorted(written) == ["probe_accuracy", "training_curves"]
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(path).shape[0] > 200


def test_empty_history_writes_nothing(tmp_path) -> None:
    assert write_plots(MetricsHistory(), tmp_path) == {}
    assert list(tmp_path.iterdir()) == []
