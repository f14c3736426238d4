"""Printed paths and commands work pasted into bash, and give Hydra the exact path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from lens_train.cli import config_dir, quote_values_with_equals
from lens_train.experiments.commands import hydra_value, override, shell_path

PATHS = ["logs/train/runs/2026-01-05_10-12-00/checkpoints/last.ckpt", "logs/run/checkpoints/epoch=001-step=40.ckpt",
         "my runs/it's here/epoch=1.ckpt", "a/$HOME/${oops}/b\"c.ckpt", "trailing\\", "null", "1e-3", "a,b/[c]"]


def bash_words(line: str) -> list[str]:
    """The arguments bash passes to a command for ``line`` pasted after it."""
    done = subprocess.run(["bash", "-c", f"printf '%s\\0' {line}"], capture_output=True, text=True, check=True)
    return done.stdout.split("\0")[:-1]


def composed_ckpt_path(word: str) -> str:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp", word]).ckpt_path


@pytest.mark.parametrize("path", PATHS)
def test_an_override_pasted_into_bash_gives_hydra_the_path(path: str) -> None:
    words = bash_words(override("ckpt_path", path))
    assert len(words) == 1
    assert composed_ckpt_path(words[0]) == path


def test_plain_paths_print_unquoted() -> None:
    assert override("ckpt_path", PATHS[0]) == f"ckpt_path={PATHS[0]}"
    assert hydra_value("logs/epoch=1.ckpt") == '"logs/epoch=1.ckpt"'
    assert bash_words(shell_path("/tmp/my runs/a", "/tmp")) == ["my runs/a"]


def test_unquoted_equals_in_a_value_is_quoted_for_hydra() -> None:
    args = quote_values_with_equals(["ckpt_path=logs/epoch=001-step=40.ckpt", "model=mlp", "-cd", "a=b", "x='a=b'"])
    assert args == ['ckpt_path="logs/epoch=001-step=40.ckpt"', "model=mlp", "-cd", "a=b", "x='a=b'"]
    assert composed_ckpt_path(args[0]) == "logs/epoch=001-step=40.ckpt"


def test_summary_commands_paste_into_bash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_train.experiments import StageResult, format_summary

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "logs" / "old run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_text("x")
    text = format_summary([StageResult("train", run, fit_s=1.0)], overrides=["model=mlp", "lens.aux_loss.weight=0.5"])
    resume = next(line for line in text.splitlines() if line.strip().startswith("resume")).split(None, 1)[1]
    evaluate = next(line for line in text.splitlines() if line.strip().startswith("evaluate")).split(None, 1)[1]
    words = bash_words(resume)
    assert words[:3] == ["lens-train", "model=mlp", "lens.aux_loss.weight=0.5"] and words[-1] == "trainer.max_epochs=2"
    assert composed_ckpt_path(words[3]) == "logs/old run/checkpoints/last.ckpt"
    assert bash_words(evaluate)[:2] == ["lens-train", "flow=eval"]
    assert composed_ckpt_path(bash_words(evaluate)[2]) == "logs/old run/checkpoints/last.ckpt"
    run_dir_line = next(line for line in text.splitlines() if line.strip().startswith("run dir"))
    assert bash_words(run_dir_line.split(None, 2)[2]) == ["logs/old run"]
