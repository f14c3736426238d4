"""The end-of-run summary text."""

from pathlib import Path

from lens_train.experiments import MetricsHistory, StageResult, format_summary


def _result(tmp_path: Path, name: str = "train", acc: float = 0.9712) -> StageResult:
    (tmp_path / "checkpoints").mkdir(parents=True, exist_ok=True)
    (tmp_path / "checkpoints" / "last.ckpt").write_text("x")
    (tmp_path / "csv" / "snapshots" / "epoch=0-step=5").mkdir(parents=True, exist_ok=True)
    history = MetricsHistory()
    history.epochs = [{"epoch": 0.0, "step": 5.0, "probe/blocks.0/val_acc": 0.81, "probe/blocks.0/train_acc": 0.85,
                       "probe/blocks.1/val_acc": 0.93}]
    return StageResult(name, tmp_path, test={"test/acc": acc, "test/loss": 0.1}, history=history,
                       best_checkpoint=str(tmp_path / "checkpoints" / "last.ckpt"), elapsed_s=3.25,
                       plots={"training_curves": tmp_path / "plots" / "training_curves.png"})


def test_summary_has_accuracy_probe_table_and_paths(tmp_path) -> None:
    text = format_summary([_result(tmp_path)])
    assert "train finished in 3.2 s" in text or "train finished in 3.3 s" in text
    assert "test accuracy: 0.9712" in text
    lines = text.splitlines()
    row0 = next(line for line in lines if line.strip().startswith("blocks.0"))
    row1 = next(line for line in lines if line.strip().startswith("blocks.1"))
    assert row0.split()[1:] == ["0.850", "0.810"]
    assert row1.split()[1:] == ["-", "0.930"]
    assert any(line.strip().startswith("checkpoints") and "[1 entries]" in line and "best: last.ckpt" in line
               for line in lines)
    assert any(line.strip().startswith("snapshots") and "csv/snapshots" in line for line in lines)
    assert "training_curves.png" in text


def test_summary_of_several_stages_compares_them(tmp_path) -> None:
    results = [_result(tmp_path / "t", "teacher", 0.99), _result(tmp_path / "s", "student", 0.9)]
    text = format_summary(results)
    table = text.split("test accuracy by stage:")[1].splitlines()[1:3]
    assert [line.split() for line in table] == [["teacher", "0.990"], ["student", "0.900"]]
    assert "-- teacher" in text and "-- student" in text
