"""``lens-train`` flows beyond one fit: resume from last.ckpt, debug configs, evaluation, sweeps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from hydra.core.global_hydra import GlobalHydra

from lens_train.cli import main
from tests.test_cli import TINY, _columns, run_cli

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_config=false"]


@pytest.fixture
def lens_train(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``lens-train`` in this process with its run dir at ``tmp_path/<name>``; returns the run dir."""
    monkeypatch.setenv("LENS_TRAIN_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def _run(name: str, *args: str) -> Path:
        GlobalHydra.instance().clear()
        try:
            main([*args, f"hydra.run.dir={tmp_path / name}"])
        finally:
            GlobalHydra.instance().clear()
        return tmp_path / name

    yield _run
    GlobalHydra.instance().clear()


def _snapshots(run: Path) -> list[tuple[str, int, int]]:
    entries = json.loads((run / "snapshots" / "index.json").read_text())["snapshots"]
    return [(e["name"], e["epoch"], e["step"]) for e in entries]


@pytest.mark.slow
def test_last_ckpt_is_the_last_epoch_and_resuming_continues_the_run(lens_train) -> None:
    # mode=min makes the monitored checkpoint an early epoch: last.ckpt must not follow it.
    base = ["lens=[snapshots]", "callbacks.model_checkpoint.mode=min", "test=false", "plots=false", *TINY[1:], *QUIET]
    first = lens_train("first", "trainer.max_epochs=6", *base)
    last = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (5, 18)
    assert not any("=" in p.name for p in (first / "checkpoints").iterdir())
    resumed = lens_train("resumed", "trainer.max_epochs=8", f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", *base)
    straight = lens_train("straight", "trainer.max_epochs=8", *base)
    assert _snapshots(resumed) == _snapshots(straight) == [
        (f"epoch{e:03d}-step{3 * (e + 1):06d}", e, 3 * (e + 1)) for e in range(8)]
    assert _columns(resumed / "metrics.csv")["epoch"][0] == 6  # epochs 6 and 7 only, not 4-5 again


@pytest.mark.slow
def test_an_old_checkpoint_name_with_equals_is_accepted_unquoted(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "flow=eval", f"ckpt_path={tmp_path}/epoch=1-step=4.ckpt", timeout=120)
    assert done.returncode == 2 and "mismatched input" not in done.stderr
    assert f"flow=eval needs ckpt_path=<a .ckpt file>, got '{tmp_path}/epoch=1-step=4.ckpt'" in done.stderr


@pytest.mark.parametrize(("override", "fix"), [
    ("logger=null", "Remove it with ~logger (lens-train ~logger), or choose none with logger=[]."),
    ("lens=null", "Choose none with lens=[] (lens-train lens=[]), or switch one off with lens.aux_loss=null."),
    ("trainer=null", "Remove it with ~trainer"),
    ("experiment=null", "No experiment is the default: leave the override out"),
])
def test_group_null_names_the_fix(override: str, fix: str) -> None:
    from lens_train.cli import check_group_overrides, config_dir

    message = check_group_overrides([override], config_dir())
    assert message.startswith(f"lens-train: error: {override} is not how Hydra switches a config group off.")
    assert fix in message and "\n" not in message


def test_group_null_on_the_command_line_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "logger=null", timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "~logger" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(("override", "line"), [
    ("trainer.max_epochs=abc", "lens-train: error: trainer.max_epochs: expected an integer, got 'abc'."),
    ("lens.aux_loss.weight=abc", "lens-train: error: lens.aux_loss.weight: expected a number, got 'abc'."),
])
def test_a_value_of_the_wrong_type_stops_the_command_before_anything_runs(tmp_path: Path, override: str, line: str) -> None:
    done = run_cli(tmp_path, override, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(line) and done.stderr.count("\n") == 1
    assert not (tmp_path / "logs").exists()


def test_debug_fdr_runs_one_batch_of_everything(lens_train, capsys: pytest.CaptureFixture) -> None:
    run = lens_train("fdr", "debug=fdr", "lens=[probes,snapshots]", *QUIET)
    out = capsys.readouterr().out
    assert "test accuracy: " in out and "[1 entry]" in out
    assert not (run / "checkpoints").exists()  # fast_dev_run writes no checkpoint
    assert len(_snapshots(run)) == 1


@pytest.mark.slow
def test_debug_limit_runs_three_short_epochs(lens_train) -> None:
    run = lens_train("limit", "debug=limit", "lens=[probes]", *QUIET)
    steps = _columns(run / "metrics.csv")["step"]
    assert max(steps) == 3 * 5  # the test metrics are logged at the last global step
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2


@pytest.mark.slow
def test_debug_overfit_learns_two_batches(lens_train) -> None:
    run = lens_train("overfit", "debug=overfit", "trainer.max_epochs=20", "lens=[snapshots]", "plots=false", *QUIET)
    train_acc = _columns(run / "metrics.csv")["train/acc"]
    assert len(train_acc) == 20 and train_acc[-1] >= 0.95
    assert not (run / "snapshots").exists()  # switched off by debug=overfit


@pytest.mark.slow
def test_debug_profiler_writes_the_report(lens_train, capsys: pytest.CaptureFixture) -> None:
    run = lens_train("profiler", "debug=profiler", "lens=[probes]", "plots=false", *QUIET)
    report = (run / "fit-profile.txt").read_text()
    assert "run_training_epoch" in report and "ProbeCallback" in report
    assert "fit-profile.txt" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_reads_the_saved_config_and_command_line_wins(lens_train, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    trained = lens_train("trained", "experiment=probe_digits", "lens.snapshots=null", *TINY, *QUIET)
    capsys.readouterr()
    # A name with "=", as Lightning writes by default and older runs did: passed unquoted.
    old_name = trained / "checkpoints" / "epoch=1-step=6.ckpt"
    (trained / "checkpoints" / "last.ckpt").rename(old_name)
    run = lens_train("eval", "flow=eval", f"ckpt_path={old_name}", "data.batch_size=16", "trainer.limit_test_batches=3")
    out = capsys.readouterr().out
    assert "lens-train: eval finished" in out and "test accuracy: " in out
    table = out.split("probe accuracy per layer (tested checkpoint):")[1].splitlines()
    assert table[1].split() == ["layer", "test"] and [t.split()[0] for t in table[2:6]] == [
        "embed", "blocks.0", "blocks.1", "blocks.2"]
    graph = re.search(r"graph\s+(\S+)", out)[1]
    assert Path(graph).is_file() and graph.startswith("trained/graphs/")
    tree = (run / "config_tree.txt").read_text()
    assert "RowTransformer" in tree and "batch_size: 16" in tree and "flow: eval" in tree
    assert _columns(run / "metrics.csv")["test/acc"]


@pytest.mark.slow
def test_hparams_search_grid_prints_the_best_run(lens_train, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lens_train("unused", "hparams_search=digits_grid", "hydra.sweeper.params={model.lr: '0.0001,0.01'}",
               "hydra.sweep.dir=grid", *TINY, *QUIET)
    out = capsys.readouterr().out
    best = yaml.safe_load((tmp_path / "grid" / "best_run.yaml").read_text())
    values = [float(v) for v in re.findall(r"^  (\d\.\d{4})  model.lr=", out, re.M)]
    assert len(values) == 6 and values == sorted(values, reverse=True)  # 2 lr x 3 weights, best first
    assert best["metric"] == "val/acc" and best["value"] == pytest.approx(values[0], abs=1e-4)
    assert "rerun it: lens-train model.lr=" in out and "hparams_search" not in out.split("rerun it:")[1].splitlines()[0]


@pytest.mark.slow
def test_hparams_search_optuna_maximizes_val_acc(lens_train, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    lens_train("unused", "hparams_search=digits_optuna", "hydra.sweeper.n_trials=2", "hydra.sweep.dir=optuna", *TINY,
               *QUIET)
    results = yaml.safe_load((tmp_path / "optuna" / "optimization_results.yaml").read_text())
    best = yaml.safe_load((tmp_path / "optuna" / "best_run.yaml").read_text())
    assert set(results["best_params"]) == {"model.lr", "lens.aux_loss.weight"}
    assert best["value"] == pytest.approx(results["best_value"])
    assert "sweep: 2 jobs ranked by val/acc" in capsys.readouterr().out


def test_the_importance_lens_runs_beside_aux_loss_and_probes(lens_train, capsys: pytest.CaptureFixture) -> None:
    run = lens_train("importance", "lens=[aux_loss,probes,importance]", "test=false", *TINY, *QUIET)
    columns = _columns(run / "metrics.csv")
    for layer in ("blocks.0", "blocks.1", "blocks.2"):
        values = [v for v in columns[f"importance/{layer}"] if v == v]  # NaN: rows of other metrics
        assert len(values) == 2 and all(abs(v) < 100 for v in values)  # the rise in loss, finite
    assert (run / "plots" / "importance.png").stat().st_size > 1000
    assert (run / "plots" / "probe_accuracy.png").is_file()
    out = capsys.readouterr().out
    assert "causal importance per layer" in out and "importance/plots/importance.png" in out
