"""Config values are checked against the annotations of their ``_target_``'s signature."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lens_train.cli import config_dir
from lens_train.errors import ConfigError, LensTrainError
from lens_train.experiments.config_types import check_config_types, mismatch, parameter_types


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=/tmp", *overrides])


@pytest.mark.parametrize(("override", "message"), [
    ("trainer.max_epochs=abc", "trainer.max_epochs: expected an integer, got 'abc'. Example: trainer.max_epochs=3"),
    ("lens.aux_loss.weight=abc", "lens.aux_loss.weight: expected a number, got 'abc'"),
    ("data.batch_size=1.5", "data.batch_size: expected an integer, got 1.5"),
    ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar: expected true or false, got 'maybe'"),
    ("trainer.precision=33", "trainer.precision: expected one of 64, 32, 16 or one of 'transformer-engine'"),
    ("lens.probes.layers=[1,2]", "lens.probes.layers: expected a string or a list of strings, got [1, 2]"),
])
def test_wrong_types_are_named_with_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_config_types(composed(override))
    assert str(info.value).startswith(message)
    assert isinstance(info.value, (LensTrainError, ValueError))


@pytest.mark.parametrize("overrides", [[], ["experiment=distill_digits"], ["experiment=probe_digits"],
                                       ["trainer.precision=16-mixed", "trainer.devices=auto"],
                                       ["trainer.limit_train_batches=0.5", "model.lr=1"], ["debug=profiler"],
                                       ["logger=[csv,tensorboard]", "data=synthetic", "model=mlp"]])
def test_shipped_configs_pass(overrides: list[str]) -> None:
    check_config_types(composed(*overrides))


def test_unannotated_parameters_and_unknown_types_are_not_checked() -> None:
    def build(a, b: int, c: object, d: "NoSuchName"):  # noqa: F821, ANN001, ANN202
        return None

    import sys
    module = sys.modules[__name__]
    module.build = build  # a _target_ the checker can import
    cfg = OmegaConf.create({"x": {"_target_": f"{__name__}.build", "a": "any", "b": 2, "c": "s", "d": "s"}})
    check_config_types(cfg)
    hints = parameter_types(f"{__name__}.build")
    assert "a" not in hints and {"b", "c"} <= set(hints)
    cfg.x.b = "two"
    with pytest.raises(ConfigError, match="x.b: expected an integer, got 'two'"):
        check_config_types(cfg)


def test_mismatch_rules() -> None:
    assert mismatch({"_target_": "x.Y"}, int) is None  # built into whatever the target returns
    assert mismatch(True, int) == "an integer" and mismatch(3, bool) == "true or false"
    assert mismatch(None, int | None) is None and mismatch([1, 2], tuple[int, ...]) is None
    assert mismatch("a", Path) is None and mismatch({"a": 1}, dict[str, int]) is None


def test_the_command_refuses_a_wrong_type_before_anything_runs(tmp_path: Path) -> None:
    from lens_train.cli import check_config_keys

    message = check_config_keys(["trainer.max_epochs=abc"], config_dir())
    assert message == "lens-train: error: trainer.max_epochs: expected an integer, got 'abc'. Example: trainer.max_epochs=3"
