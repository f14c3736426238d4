"""Every shipped config composes and instantiates; documented overrides do what the docs say."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, get_method, instantiate
from omegaconf import DictConfig

from lens_train.cli import config_dir, group_options
from lens_train.experiments import Classifier, DigitsCNN, ImageDataModule
from lens_train.experiments.builders import build_lens_callbacks

CONFIGS = config_dir()
GROUPS = ("data", "model", "lens", "trainer", "logger", "callbacks", "paths", "experiment", "debug", "hparams_search")
# Options whose packages are optional extras (lens-train[loggers], lens-train[sweep]).
NEEDS = {"wandb": "wandb", "mlflow": "mlflow", "digits_optuna": "hydra_plugins.hydra_optuna_sweeper"}
OPTIONS = [(g, o) for g in GROUPS for o in group_options(CONFIGS, g)]


def make_cfg(tmp_path: Path, *overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("train", overrides=[f"paths.output_dir={tmp_path}", *overrides])


def _targets(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "_target_"] + [t for v in node.values() for t in _targets(v)]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


def test_groups_ship_the_documented_options() -> None:
    assert group_options(CONFIGS, "data") == ["digits", "synthetic"]
    assert group_options(CONFIGS, "model") == ["cnn", "mlp", "transformer"]
    assert group_options(CONFIGS, "lens") == ["aux_loss", "distill", "graphs", "importance", "probes", "snapshots", "stats"]
    assert group_options(CONFIGS, "trainer") == ["cpu", "ddp", "default", "gpu"]
    assert group_options(CONFIGS, "logger") == ["csv", "mlflow", "tensorboard", "wandb"]
    assert group_options(CONFIGS, "experiment") == ["aux_loss_digits", "distill_digits", "probe_digits"]
    assert group_options(CONFIGS, "debug") == ["fdr", "limit", "overfit", "profiler"]
    assert group_options(CONFIGS, "hparams_search") == ["digits_grid", "digits_optuna"]


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_target_resolves(path: Path) -> None:
    for target in _targets(yaml.safe_load(path.read_text())):
        try:
            get_class(target)
        except ValueError:
            assert callable(get_method(target)), target


@pytest.mark.parametrize(("group", "name"), [(g, n) for g in ("experiment", "debug", "hparams_search")
                                             for n in group_options(CONFIGS, g)])
def test_experiments_debug_and_searches_are_global_packages(group: str, name: str) -> None:
    assert (CONFIGS / group / f"{name}.yaml").read_text().startswith("# @package _global_")


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_instantiates(tmp_path: Path, group: str, option: str) -> None:
    if option in NEEDS:
        pytest.importorskip(NEEDS[option])
    override = f"{group}=[{option}]" if group == "lens" else f"{group}={option}"
    cfg = make_cfg(tmp_path, override)
    check_instantiates(cfg, tmp_path)


def check_instantiates(cfg: DictConfig, tmp_path: Path) -> None:
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ImageDataModule) and datamodule.num_classes == cfg.data.num_classes
    module = instantiate(cfg.model)
    assert isinstance(module, Classifier)
    x, _ = datamodule.example_batch(3)
    assert module(x).shape == (3, cfg.data.num_classes)
    teacher = instantiate(cfg.teacher.model).net if "teacher" in cfg else DigitsCNN()
    lens = build_lens_callbacks(cfg.lens, teacher=teacher)
    assert [type(cb).__name__ for cb in lens] == [_class_name(e) for e in cfg.lens.values() if e is not None]
    for name, logger in (cfg.logger or {}).items():
        built = instantiate(logger)
        if name == "mlflow":  # one store for every run, in the logs dir
            assert built._tracking_uri == f"sqlite:///{cfg.paths.log_dir}/mlflow.db"
        else:
            assert Path(built.save_dir) == tmp_path
    for callback in cfg.callbacks.values():
        assert isinstance(instantiate(callback), L.pytorch.callbacks.Callback)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        return
    trainer = instantiate(cfg.trainer, logger=False, callbacks=lens, default_root_dir=str(tmp_path))
    if cfg.trainer.get("fast_dev_run"):  # debug=fdr: one batch, whatever max_epochs says
        assert trainer.fast_dev_run == 1 and trainer.max_epochs == 1
    else:
        assert trainer.max_epochs == cfg.trainer.max_epochs


def _class_name(entry: DictConfig) -> str:
    name = entry._target_.rsplit(".", 1)[1]
    # The builders for records return the callback they are named after.
    return {"auxiliary_loss_callback": "AuxiliaryLossCallback", "distillation_callback": "DistillationCallback"}.get(name, name)


def test_default_run_matches_the_main_job(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    assert cfg.model.net._target_.endswith("DigitsCNN") and cfg.data._target_.endswith("DigitsDataModule")
    assert list(cfg.lens) == ["aux_loss", "probes", "snapshots", "graphs", "stats"]
    assert [t.layer for t in cfg.lens.aux_loss.terms] == ["blocks.1"]
    assert cfg.lens.probes.layers == ["blocks.0", "blocks.1", "blocks.2"]
    assert cfg.lens.snapshots.every_n_epochs == 1
    assert cfg.trainer.enable_progress_bar is True
    assert cfg.flow == "train"


def test_experiments_override_the_defaults(tmp_path: Path) -> None:
    aux = make_cfg(tmp_path, "experiment=aux_loss_digits")
    assert [t.loss for t in aux.lens.aux_loss.terms] == ["deep_supervision", "l1_activity"]
    assert instantiate(aux.lens.aux_loss.schedule)(30) == pytest.approx(0.5)
    distill = make_cfg(tmp_path, "experiment=distill_digits")
    assert distill.flow == "distill" and list(distill.lens) == ["distill"]
    assert list(distill.model.net.channels) == [16, 32, 64] and list(distill.teacher.model.net.channels) == [32, 64, 128]
    assert distill.data.train_fraction == 0.1 and distill.teacher.data.train_fraction == 1.0
    assert len(distill.student_seeds) >= 3
    probe = make_cfg(tmp_path, "experiment=probe_digits", "trainer.max_epochs=2")
    assert probe.model.net._target_.endswith("RowTransformer") and probe.trainer.max_epochs == 2


def test_documented_overrides_of_records(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "lens.aux_loss.terms.0.weight=0.05", "lens.aux_loss.weight=0.5")
    callback = build_lens_callbacks({"aux_loss": cfg.lens.aux_loss})[0]
    assert cfg.lens.aux_loss.terms[0].weight == 0.05 and cfg.lens.aux_loss.weight == 0.5
    assert callback is not None
    replaced = make_cfg(tmp_path, "lens.aux_loss.terms=[{layer: blocks.2, loss: l1_activity, weight: 1e-4}]")
    assert [dict(t) for t in replaced.lens.aux_loss.terms] == [{"layer": "blocks.2", "loss": "l1_activity", "weight": 1e-4}]
    pair = make_cfg(tmp_path, "lens=[distill]", "lens.distill.pairs.0.teacher=blocks.0")
    assert pair.lens.distill.pairs[0].teacher == "blocks.0"
    hints = make_cfg(tmp_path, "experiment=distill_digits", "lens.distill.pairs=[{student: blocks.1, teacher: blocks.1}]")
    assert [dict(p) for p in hints.lens.distill.pairs] == [{"student": "blocks.1", "teacher": "blocks.1"}]


def test_lists_of_groups_and_switching_one_off(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "lens=[probes,stats]", "logger=[csv,tensorboard]")
    assert list(cfg.lens) == ["probes", "stats"] and list(cfg.logger) == ["csv", "tensorboard"]
    off = make_cfg(tmp_path, "lens.snapshots=null", "lens.graphs=null")
    assert [type(cb).__name__ for cb in build_lens_callbacks(off.lens)] == [
        "AuxiliaryLossCallback", "ProbeCallback", "ActivationStatsCallback"]
    assert make_cfg(tmp_path, "lens=[]").get("lens") is None
