"""The ``lens-train`` command: runs, summaries, files, and clear errors instead of tracebacks."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra

from lens_train.cli import check_group_overrides, config_dir, main

TINY = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false"]


def run_cli(tmp_path: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "LENS_TRAIN_ROOT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "lens_train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LENS_TRAIN_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()

    def _run(*args: str) -> Path:
        main(list(args))
        GlobalHydra.instance().clear()
        runs = sorted((tmp_path / "logs").glob("*/runs/*"))
        assert len(runs) == 1, runs
        return runs[0]

    yield _run
    GlobalHydra.instance().clear()


def _columns(path: Path) -> dict[str, list[float]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in rows[0]}


def test_unknown_group_option_lists_the_options(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "model=nope", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "lens-train: unknown model 'nope'. Available models: cnn, mlp, transformer.\nExample: lens-train model=cnn"
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(("overrides", "expected"), [
    (["experiment=distill"], "unknown experiment 'distill'. Did you mean 'distill_digits'?"),
    (["lens=[probes,probe]"], "unknown lens 'probe'. Did you mean 'probes'?"),
    (["+logger=[csv,neptune]"], "unknown logger 'neptune'."),
    (["-m", "model=cnn,mpl"], "unknown model 'mpl'. Did you mean 'mlp'?"),
])
def test_group_override_checks(overrides: list[str], expected: str) -> None:
    assert expected in check_group_overrides(overrides, config_dir())


def test_options_of_an_extra_config_dir_are_accepted(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("_target_: x\n")
    assert check_group_overrides(["model=mine"], [config_dir(), tmp_path]) is None
    assert "Available models: cnn, mine, mlp, transformer" in check_group_overrides(["model=min_"], [config_dir(), tmp_path])


@pytest.mark.parametrize("overrides", [["model=mlp", "lens=[]", "~logger"], ["logger=[]"], ["trainer.max_epochs=3"],
                                       ["model.net.channels=[8,16]"], ["hydra/launcher=basic"],
                                       ["-m", "model=choice(cnn,mlp)"]])
def test_valid_overrides_pass_the_check(overrides: list[str]) -> None:
    assert check_group_overrides(overrides, config_dir()) is None


@pytest.mark.slow
def test_wrong_value_in_a_record_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "lens.aux_loss.terms.0.loss=deep_supervison", *TINY, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "lens-train: error:" in done.stderr and "Closest: 'deep_supervision'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_multirun_with_ddp_is_refused_before_training(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "-m", "trainer=ddp", "lens.aux_loss.weight=0.1,0.3", timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Multirun (-m) cannot be combined with trainer=ddp" in done.stderr
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.rglob("*.ckpt"))


def test_help_names_the_command_and_examples(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--help", timeout=120)
    assert done.returncode == 0
    assert "lens-train: train a model" in done.stdout and "experiment: aux_loss_digits, distill_digits, probe_digits" in done.stdout


@pytest.mark.slow
def test_default_run_end_to_end(in_process, capsys: pytest.CaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = in_process(*TINY, "logger=[csv,tensorboard]", "tags=[digits,smoke]")
    out = capsys.readouterr().out
    assert "lens-train: train finished in" in out and "test accuracy: " in out
    headline = re.search(r"finished in ([\d.]+) s \(fit ([\d.]+) s, test ([\d.]+) s; start-up, data and plots", out)
    assert headline and float(headline[1]) >= float(headline[2]) + float(headline[3]) > 0
    table = out.split("probe accuracy per layer (last epoch):")[1].splitlines()
    assert [line.split()[0] for line in table[1:5]] == ["layer", "blocks.0", "blocks.1", "blocks.2"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert len(json.loads((run / "snapshots" / "index.json").read_text())["snapshots"]) == 2
    assert list((run / "graphs").glob("*.svg"))
    assert {p.name for p in (run / "plots").glob("*.png")} == {"training_curves.png", "probe_accuracy.png"}
    assert (run / "snapshots" / "drift.png").is_file()
    with open(run / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert {"aux/blocks.1", "lens/total_loss", "probe/blocks.2/val_acc", "test/acc"} <= set(columns)
    assert any(c.startswith("stats/") or "dead_fraction" in c for c in columns), columns
    assert (run / ".hydra" / "config.yaml").is_file()
    # The composed config, printed first and saved; tags in the loggers; pictures in TensorBoard.
    assert out.startswith("CONFIG\n") and (run / "config_tree.txt").read_text().startswith("CONFIG\n├── data")
    assert yaml.safe_load((run / "hparams.yaml").read_text())["tags"] == ["digits", "smoke"]
    events = EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    assert {"lens/graph", "lens/drift", "plots/training_curves", "plots/probe_accuracy"} <= set(events.Tags()["images"])
    assert re.search(r"snapshots +\S+  \[2 entries\]", out) and not any("=" in p.name for p in run.rglob("*"))


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_shares_one_run_dir(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "trainer=ddp", *TINY, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(runs) == 1
    run = runs[0]
    assert (run / "train_ddp_process_1.log").is_file()  # the second process ran, in the same dir
    assert done.stdout.count("test accuracy: ") == 1  # rank zero alone prints the summary
    assert len(json.loads((run / "snapshots" / "index.json").read_text())["snapshots"]) == 2
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "plots" / "probe_accuracy.png").is_file()


@pytest.mark.slow
def test_multirun_sweeps_write_one_dir_per_job(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "-m", "lens=[aux_loss]", "lens.aux_loss.weight=0.1,0.3", *TINY, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = sorted(p.name for p in (tmp_path / "logs" / "train" / "multiruns").glob("*/*") if p.is_dir())
    assert jobs == ["0", "1"]
    assert done.stdout.count("test accuracy: ") == 2


@pytest.mark.slow
def test_aux_loss_experiment_warms_up_and_logs_both_terms(in_process) -> None:
    run = in_process("experiment=aux_loss_digits", *TINY)
    metrics = _columns(run / "metrics.csv")
    deep, l1 = metrics["aux/blocks.1"], metrics["aux/blocks.2"]
    assert len(deep) == len(l1) == 6
    # linear_warmup(60): the weighted terms start at exactly 0 and grow with the step.
    assert deep[0] == 0.0 and l1[0] == 0.0 and deep[-1] > 0 and l1[-1] > 0
    assert not (run / "snapshots").exists()


@pytest.mark.slow
def test_probe_experiment_probes_every_block_of_the_transformer(in_process, capsys: pytest.CaptureFixture) -> None:
    run = in_process("experiment=probe_digits", *TINY)
    metrics = _columns(run / "metrics.csv")
    for layer in ("embed", "blocks.0", "blocks.1", "blocks.2"):
        assert len(metrics[f"probe/{layer}/val_acc"]) == 2
    assert not any(k.startswith("aux/") for k in metrics)
    assert "RowTransformer" in (run / ".hydra" / "config.yaml").read_text()
    assert "embed" in capsys.readouterr().out


@pytest.mark.slow
def test_distill_experiment_trains_teacher_then_two_students(in_process, capsys: pytest.CaptureFixture) -> None:
    run = in_process("experiment=distill_digits", "teacher.trainer.max_epochs=1", "student_seeds=[0,1]", *TINY)
    out = capsys.readouterr().out
    table = out.split("test accuracy by stage:")[1].splitlines()[1:6]
    assert [line.split("  (fit")[0].rsplit(None, 1)[0].strip() for line in table] == [
        "teacher", "student (no distillation, seed 0)", "student (distilled, seed 0)",
        "student (no distillation, seed 1)", "student (distilled, seed 1)"]
    baseline, distilled = _columns(run / "student_baseline" / "metrics.csv"), _columns(run / "student_distilled" / "metrics.csv")
    assert not any(k.startswith("distill/") for k in baseline)
    assert "distill/logits" in distilled and (run / "student_distilled_seed1" / "metrics.csv").is_file()
    # Same seed, same batches: the first step's task loss is identical with and without distillation.
    assert baseline["train/loss_step"][0] == pytest.approx(distilled["train/loss_step"][0])
    # The gain per seed, its mean with the standard error, and a plain verdict.
    assert re.search(r"mean gain [+-]\d\.\d{4} \+- \d\.\d{4} \(standard error, 2 seeds\)", out)
    assert "distillation helped" in out or "no gain:" in out
    teacher_ckpt = run / "teacher" / "checkpoints" / "last.ckpt"
    assert teacher_ckpt.is_file() and "reuse this teacher: add teacher.ckpt_path=" in out
    assert "=" not in out.split("reuse this teacher: add teacher.ckpt_path=")[1].split()[0]


@pytest.mark.slow
def test_distill_experiment_loads_a_teacher_checkpoint(in_process, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import lightning as L

    from lens_train.experiments import Classifier, DigitsCNN

    teacher = Classifier(DigitsCNN(channels=[32, 64, 128]))
    trainer = L.Trainer(max_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(teacher)
    trainer.save_checkpoint(tmp_path / "teacher.ckpt")
    run = in_process("experiment=distill_digits", f"teacher.ckpt_path={tmp_path / 'teacher.ckpt'}", *TINY)
    out = capsys.readouterr().out
    assert "teacher (loaded)" in out
    assert not (run / "teacher" / "checkpoints").exists()


def test_missing_teacher_checkpoint_is_a_clear_error(in_process, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        in_process("experiment=distill_digits", "teacher.ckpt_path=/nope/teacher.ckpt", *TINY)
    assert info.value.code == 2
    assert "teacher.ckpt_path='/nope/teacher.ckpt' is not a file" in capsys.readouterr().err


def test_distill_lens_without_the_distill_flow_is_a_clear_error(in_process, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        in_process("lens=[distill]", *TINY)
    assert info.value.code == 2
    assert "lens.distill distills from a teacher, which only flow=distill builds" in capsys.readouterr().err


def test_group_name_ending_in_s_is_not_doubled() -> None:
    message = check_group_overrides(["lens=[probe]"], [config_dir()])
    assert "Did you mean 'probes'? Available lens: aux_loss," in message and "lenss" not in message


def test_misspelled_config_key_names_the_closest_keys(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "trainer.max_epoch=1", timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "lens-train: error: no config key 'max_epoch' in trainer. Closest: 'max_epochs', 'min_epochs', 'max_steps'. "
        "Fix the spelling, or add a new key with +trainer.max_epoch=1."
    )
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "logs").exists()


def test_config_key_check_passes_sweeps_and_added_keys() -> None:
    from lens_train.cli import check_config_keys

    assert "no config key 'chanels' in model.net. Closest: 'channels'" in check_config_keys(
        ["-m", "model.net.chanels=[1],[2]"], config_dir())
    assert check_config_keys(["-m", "experiment=probe_digits", "trainer.max_epochs=1,2", "+trainer.foo=1"],
                             config_dir()) is None


def test_bad_lens_layer_fails_before_training_with_short_names(in_process, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        in_process("lens.probes.layers=[blocks.9]", "trainer.max_steps=1")
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert "lens-train: error: ProbeCallback: the model has no layer named 'blocks.9'. Closest: 'blocks.2'," in captured.err
    assert "net.blocks" not in captured.err and "GPU available" not in captured.out + captured.err  # no Trainer built
