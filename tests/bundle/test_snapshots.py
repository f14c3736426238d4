"""lens_train.bundle.snapshots: linear CKA against a direct formula, the index, the drift plot."""

from __future__ import annotations

import pytest
import torch

from lens_train.bundle.snapshots import Snapshot, drift_table, linear_cka, load_snapshots, plot_drift, read_index, write_index


def _feature_space_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    # Kornblith et al. (2019), eq. for linear CKA in feature space.
    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    x, y = x - x.mean(0), y - y.mean(0)
    return float((y.T @ x).norm() ** 2 / ((x.T @ x).norm() * (y.T @ y).norm()))


def test_linear_cka_matches_the_feature_space_formula():
    x = torch.randn(20, 7)
    y = x @ torch.randn(7, 5) + 0.3 * torch.randn(20, 5)
    assert linear_cka(x, y) == pytest.approx(_feature_space_cka(x, y), rel=1e-9)
    q, _ = torch.linalg.qr(torch.randn(7, 7))
    assert linear_cka(x, 2.5 * x @ q) == pytest.approx(1.0, rel=1e-9)  # rotation and scale invariant
    assert linear_cka(torch.randn(4, 3, 2, 2), torch.randn(4, 12)) <= 1.0


def test_linear_cka_needs_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.ones(3, 2), torch.ones(4, 2))


def test_index_round_trip_keeps_outside_paths_absolute(tmp_path):
    inside = Snapshot(0, "epoch=000-step=000001", 0, 1, str(tmp_path / "s" / "epoch=000-step=000001"))
    outside = Snapshot(1, "epoch=000-step=000002", 0, 2, str(tmp_path / "old" / "epoch=000-step=000002"), {"fc": 0.5})
    write_index(tmp_path / "s", [inside, outside], str(tmp_path / "s" / "reference.safetensors"))
    assert read_index(tmp_path / "s") == [inside, outside]
    assert load_snapshots(tmp_path) == [inside, outside]
    assert drift_table([inside, outside]) == (["fc"], ["epoch=000-step=000002"], [[0.5]])
    assert plot_drift([inside, outside], tmp_path / "drift.png").stat().st_size > 1000
    assert plot_drift([inside], tmp_path / "none.png") is None


def test_drift_colours_span_the_data_and_cells_print_their_value(tmp_path):
    from lens_train.bundle.snapshots import cka_text, drift_norm

    # CKA between consecutive snapshots: 0.92 early, 0.99999 late (every cell yellow on [0.9, 1]).
    values = [0.92, 0.99, 0.999, 0.9999, 0.99999]
    norm = drift_norm([[1 - v for v in values]])
    shades = [float(norm(1 - v)) for v in values]
    assert shades[0] == pytest.approx(1.0) and shades[-1] == pytest.approx(0.0, abs=1e-6)
    assert all(a - b > 0.2 for a, b in zip(shades, shades[1:]))  # each step of 10x is a visible step
    assert [cka_text(v) for v in values] == ["0.920", "0.990", "0.999", "1-1e-04", "1-1e-05"]
    snaps = [Snapshot(i, f"s{i}", i, i, "p", {"fc": v} if i else {}) for i, v in enumerate([1.0, *values])]
    out = plot_drift(snaps, tmp_path / "drift.png")
    assert out.stat().st_size > 1000
