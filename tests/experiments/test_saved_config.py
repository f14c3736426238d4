"""flow=eval reads the config saved next to a checkpoint; the command line wins."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

from lens_train.cli import config_dir
from lens_train.experiments.saved_config import SAVED, find_run_dir, load_saved_config, merge_saved_config


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp/x", *overrides])


def test_group_key_and_deleted_overrides_win_over_the_saved_config() -> None:
    saved = composed("model=transformer", "logger=[csv,tensorboard]", "data.batch_size=32")
    overrides = ["flow=eval", "ckpt_path=a.ckpt", "data=synthetic", "data.batch_size=8", "~logger"]
    merged = merge_saved_config(saved, composed(*overrides), overrides)
    assert merged.model.net._target_.endswith("RowTransformer")  # not given: from the saved run
    assert merged.data._target_.endswith("SyntheticDataModule") and merged.data.batch_size == 8
    assert "logger" not in merged and merged.flow == "eval" and merged.ckpt_path == "a.ckpt"
    assert merged.paths.output_dir == "/tmp/x"


def test_the_run_dir_is_found_above_the_checkpoint(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / SAVED).write_text("seed: 5\n")
    assert find_run_dir(tmp_path / "teacher" / "checkpoints" / "last.ckpt") == tmp_path
    assert load_saved_config(tmp_path).seed == 5
    assert find_run_dir(tmp_path / "a" / "b" / "c" / "d" / "x.ckpt") is None
