"""The end-of-run summary text."""

from pathlib import Path

import pytest

from lens_train.experiments import MetricsHistory, StageResult, format_summary


def _result(tmp_path: Path, name: str = "train", acc: float = 0.9712) -> StageResult:
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    (tmp_path / "csv" / "snapshots" / "epoch=0-step=5").mkdir(parents=True, exist_ok=True)
    history = MetricsHistory()
    history.epochs = [{"epoch": 0.0, "step": 5.0, "probe/blocks.0/val_acc": 0.81, "probe/blocks.0/train_acc": 0.85,
                       "probe/blocks.1/val_acc": 0.93}]
    return StageResult(name, tmp_path, test={"test/acc": acc, "test/loss": 0.1}, history=history,
                       best_checkpoint=str(tmp_path / "checkpoints" / "last.ckpt"), fit_s=3.0, test_s=0.25,
                       plots={"training_curves": tmp_path / "plots" / "training_curves.png"})


def test_summary_has_accuracy_probe_table_and_paths(tmp_path) -> None:
    result = _result(tmp_path)
    result.test["probe/blocks.1/test_acc"] = 0.95
    text = format_summary([result])
    assert "train finished in 3.2 s (fit 3.0 s, test 0.2 s)" in text or "finished in 3.3 s (fit 3.0 s, test 0.3 s)" in text
    assert "test accuracy: 0.9712" in text
    lines = text.splitlines()
    row0 = next(line for line in lines if line.strip().startswith("blocks.0"))
    row1 = next(line for line in lines if line.strip().startswith("blocks.1"))
    assert next(line for line in lines if line.strip().startswith("layer")).split() == ["layer", "train", "val", "test"]
    assert row0.split()[1:] == ["0.850", "0.810", "-"]
    assert row1.split()[1:] == ["-", "0.930", "0.950"]
    assert any(line.strip().startswith("checkpoints") and "[1 entry]" in line and "best: last.ckpt" in line
               for line in lines)
    assert any(line.strip().startswith("snapshots") and "csv/snapshots" in line for line in lines)
    assert "training_curves.png" in text


def test_summary_of_several_stages_compares_them(tmp_path) -> None:
    results = [_result(tmp_path / "t", "teacher", 0.99), _result(tmp_path / "s", "student", 0.9)]
    text = format_summary(results)
    table = text.split("test accuracy by stage:")[1].splitlines()[1:3]
    assert [line.split()[:2] for line in table] == [["teacher", "0.990"], ["student", "0.900"]]
    assert all(line.endswith("(fit 3.0 s, test 0.2 s)") for line in table)
    assert "-- teacher" in text and "-- student" in text


def test_headline_splits_the_wall_time_into_fit_test_and_the_rest(tmp_path) -> None:
    results = [_result(tmp_path / "t", "teacher"), _result(tmp_path / "s", "student")]
    headline = format_summary(results, wall_s=20.0).splitlines()[1]
    assert headline == ("lens-train: teacher, student finished in 20.0 s "
                        "(fit 6.0 s, test 0.5 s; start-up, data and plots 13.5 s)")


def test_summary_counts_snapshots_checkpoints_and_graphs_not_files(tmp_path) -> None:
    from lens_train.bundle.snapshots import Snapshot, write_index

    snapdir = tmp_path / "snapshots"
    snaps = [Snapshot(i, f"epoch{i:03d}-step{i:06d}", i, i, str(snapdir / f"epoch{i:03d}-step{i:06d}")) for i in range(6)]
    for snap in snaps:
        Path(snap.path).mkdir(parents=True)
    write_index(snapdir, snaps, str(snapdir / "reference.safetensors"))
    (snapdir / "reference.safetensors").write_text("x")
    (snapdir / "drift.png").write_text("x")
    (tmp_path / "graphs").mkdir()
    for name in ("step000000.svg", "step000000.png", "epoch002.svg"):
        (tmp_path / "graphs" / name).write_text("x")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    lines = format_summary([StageResult("train", tmp_path)]).splitlines()
    counts = {line.split()[0]: line.split("[")[1].split("]")[0] for line in lines if "[" in line}
    assert counts == {"snapshots": "6 entries", "graphs": "2 entries", "checkpoints": "1 entry"}


def test_evaluation_table_leaves_out_empty_columns(tmp_path) -> None:
    result = StageResult("eval", tmp_path, test={"test/acc": 0.5, "probe/embed/test_acc": 0.8})
    text = format_summary([result])
    assert "probe accuracy per layer (tested checkpoint):" in text
    table = text.split("(tested checkpoint):")[1].splitlines()[1:3]
    assert [line.split() for line in table] == [["layer", "test"], ["embed", "0.800"]]


def test_distillation_gain_with_spread_and_a_plain_verdict() -> None:
    from lens_train.experiments.effects import DistillationGain, distillation_gain

    def stages(pairs: list[tuple[float, float]]) -> list[StageResult]:
        out = [StageResult("teacher", Path("t"), test={"test/acc": 0.99})]
        for seed, (b, d) in enumerate(pairs):
            out += [StageResult(f"student (no distillation, seed {seed})", Path("b"), test={"test/acc": b}, seed=seed),
                    StageResult(f"student (distilled, seed {seed})", Path("d"), test={"test/acc": d}, seed=seed,
                                detail=False)]
        return out

    real = stages([(0.90, 0.93), (0.91, 0.93), (0.89, 0.92)])
    gain = distillation_gain(real)
    gains = [0.03, 0.02, 0.03]
    mean = sum(gains) / 3
    se = (sum((g - mean) ** 2 for g in gains) / 2 / 3) ** 0.5
    assert gain.mean == pytest.approx(mean) and gain.stderr == pytest.approx(se) and gain.is_real
    text = format_summary(real)
    assert f"mean gain +{mean:.4f} +- {se:.4f} (standard error, 3 seeds)" in text and "distillation helped" in text
    assert text.count("-- student (distilled") == 0  # detail=False: only its row in the table
    noisy = format_summary(stages([(0.90, 0.93), (0.91, 0.89), (0.90, 0.90)]))
    assert "no gain: the mean gain is not above 2 standard errors" in noisy
    assert DistillationGain((0,), (0.9,), (0.95,)).is_real is False  # one seed has no spread
