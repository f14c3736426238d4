"""The experiment flows behind ``lens-train``: build everything from a config, fit, test, report.

``cfg.flow`` picks the flow: ``"train"`` (one model, the default experiment) or
``"distill"`` (a teacher, then a student without and with distillation). Every flow
returns a list of :class:`StageResult` and prints the summary on rank zero.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from ..errors import InvalidArgumentError, suggestion_text
from .builders import build_lens_callbacks, check_lens_layers
from .history import MetricsHistory
from .plots import write_plots
from .summary import StageResult, format_summary


def output_dir(cfg: DictConfig) -> Path:
    """The run directory (``paths.output_dir``), created if needed.

    Example:
        >>> import tempfile
        >>> from omegaconf import OmegaConf
        >>> d = tempfile.mkdtemp()
        >>> output_dir(OmegaConf.create({"paths": {"output_dir": d}})) == Path(d).absolute()
        True
    """
    path = Path(cfg.paths.output_dir).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _instantiate_all(node: DictConfig | None, **overrides: Any) -> list[Any]:
    # A group selected as a list (``logger=[csv,tensorboard]``) is a dict of named entries;
    # ``null`` entries are how a user switches one off from the shell.
    if node is None:
        return []
    return [instantiate(entry, **overrides) for entry in node.values() if entry is not None]


def make_trainer(cfg: DictConfig, out_dir: Path, callbacks: Sequence[Callback], trainer_overrides: dict | None = None) -> L.Trainer:
    """A Trainer from ``cfg.trainer`` writing into ``out_dir`` with ``cfg.callbacks``, the loggers and ``callbacks``."""
    loggers = _instantiate_all(cfg.get("logger"), save_dir=str(out_dir))
    standard = _instantiate_all(cfg.get("callbacks"))
    for cb in standard:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(out_dir / "checkpoints")
    kwargs = {"callbacks": [*standard, *callbacks], "logger": loggers or False, "default_root_dir": str(out_dir),
              **(trainer_overrides or {})}
    return instantiate(cfg.trainer, **kwargs)


def fit_stage(cfg: DictConfig, name: str, module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: Path,
              lens: Sequence[Callback] = (), trainer_overrides: dict | None = None) -> tuple[StageResult, L.Trainer]:
    """Fit ``module`` (resuming from ``cfg.ckpt_path`` when set), test it, write plots."""
    check_lens_layers(module, lens)  # a misspelled layer fails here, not after the Trainer starts
    history = MetricsHistory()
    # The loggers write into the run dir, which already holds Hydra's .hydra/ folder.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    trainer = make_trainer(cfg, out_dir, [*lens, history], trainer_overrides)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_s = time.perf_counter() - start
    best = _best_checkpoint(trainer)
    test = {}
    start = time.perf_counter()
    if cfg.get("test", True):
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=False)
        test = {k: float(v) for k, v in (metrics[0] if metrics else {}).items()}
    result = StageResult(name, out_dir, test=test, history=history, best_checkpoint=best, fit_s=fit_s,
                         test_s=time.perf_counter() - start)
    if cfg.get("plots", True) and trainer.is_global_zero:
        result.plots = write_plots(history, out_dir / "plots")
        # The snapshot callback draws the drift heat map next to its snapshots.
        result.plots.update({"drift": p for p in sorted(out_dir.rglob("snapshots/drift.png"))[:1]})
    return result, trainer


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path or None


def train_flow(cfg: DictConfig) -> list[StageResult]:
    """Train ``cfg.model`` on ``cfg.data`` with every ``cfg.lens`` callback; test; plot."""
    needs_teacher = [name for name, entry in (cfg.get("lens") or {}).items() if entry is not None and "teacher" in entry]
    if needs_teacher:
        raise InvalidArgumentError(
            f"lens.{needs_teacher[0]} distills from a teacher, which only flow=distill builds. Run "
            "lens-train experiment=distill_digits, or drop it: lens-train lens." + needs_teacher[0] + "=null."
        )
    datamodule = instantiate(cfg.data)
    module = instantiate(cfg.model)
    lens = build_lens_callbacks(cfg.get("lens"))
    result, _ = fit_stage(cfg, cfg.get("task_name", "train"), module, datamodule, output_dir(cfg), lens)
    return [result]


def _teacher(cfg: DictConfig, datamodule: L.LightningDataModule, out_dir: Path) -> tuple[L.LightningModule, StageResult]:
    teacher_cfg = cfg.teacher
    if teacher_cfg.get("ckpt_path"):
        path = Path(teacher_cfg.ckpt_path)
        if not path.is_file():
            raise InvalidArgumentError(
                f"teacher.ckpt_path={str(path)!r} is not a file. Pass the checkpoint a previous distill run printed, "
                "e.g. lens-train experiment=distill_digits teacher.ckpt_path=logs/.../teacher/checkpoints/last.ckpt, "
                "or leave it null to train the teacher first."
            )
        module_cls = get_class(teacher_cfg.model._target_)
        teacher = module_cls.load_from_checkpoint(path, net=instantiate(teacher_cfg.model.net), weights_only=False)
        trainer = make_trainer(cfg, out_dir, [], {"logger": False, "callbacks": []})
        start = time.perf_counter()
        metrics = trainer.test(teacher, datamodule=datamodule, verbose=False)
        test = {k: float(v) for k, v in (metrics[0] if metrics else {}).items()}
        return teacher, StageResult("teacher (loaded)", out_dir, test=test, best_checkpoint=str(path),
                                    test_s=time.perf_counter() - start)
    teacher = instantiate(teacher_cfg.model)
    overrides = OmegaConf.to_container(teacher_cfg.get("trainer") or {}, resolve=True)
    result, trainer = fit_stage(cfg, "teacher", teacher, datamodule, out_dir, trainer_overrides=overrides)
    if result.best_checkpoint:
        result.notes.append(f"reuse this teacher: add teacher.ckpt_path={result.best_checkpoint}")
        # Test and distill from the same (best) weights.
        module_cls = type(teacher)
        teacher = module_cls.load_from_checkpoint(result.best_checkpoint, net=instantiate(teacher_cfg.model.net),
                                                  weights_only=False)
    return teacher, result


def distill_flow(cfg: DictConfig) -> list[StageResult]:
    """Teacher (trained, or loaded from ``teacher.ckpt_path``), then per seed the student without and with distillation.

    For each of ``student_seeds`` (default: ``[seed]``) both students start from that
    seed and see the same batches; the only difference is the distillation callback, so
    their test accuracies pair up into the gain the summary prints (mean and standard
    error over seeds). ``teacher.data`` overrides ``data`` for the teacher only (e.g. all
    the labels, while the students get ``data.train_fraction`` of them).
    """
    if cfg.get("teacher") is None or (cfg.get("lens") or {}).get("distill") is None:
        raise InvalidArgumentError(
            "flow=distill needs a 'teacher' config and a 'lens.distill' entry. Start from the shipped one: "
            "lens-train experiment=distill_digits."
        )
    out = output_dir(cfg)
    datamodule = instantiate(cfg.data)
    teacher_data = cfg.teacher.get("data")
    teacher_dm = instantiate(cfg.data, **OmegaConf.to_container(teacher_data, resolve=True)) if teacher_data else datamodule
    teacher, teacher_result = _teacher(cfg, teacher_dm, out / "teacher")
    teacher.eval()
    results = [teacher_result]
    seeds = [int(s) for s in (cfg.get("student_seeds") or [cfg.seed])]
    for i, seed in enumerate(seeds):
        for kind, with_distill in (("no distillation", False), ("distilled", True)):
            L.seed_everything(seed, workers=True, verbose=False)
            student = instantiate(cfg.model)
            lens = build_lens_callbacks(cfg.lens, teacher=teacher.net if with_distill else None)
            subdir = ("student_distilled" if with_distill else "student_baseline") + (f"_seed{seed}" if i else "")
            name = f"student ({kind}" + (f", seed {seed})" if len(seeds) > 1 else ")")
            result = fit_stage(cfg, name, student, datamodule, out / subdir, lens)[0]
            result.seed, result.detail = seed, i == 0
            results.append(result)
    return results


FLOWS: dict[str, Callable[[DictConfig], list[StageResult]]] = {"train": train_flow, "distill": distill_flow}


def run_experiment(cfg: DictConfig, started: float | None = None) -> list[StageResult]:
    """Run ``cfg.flow`` (``train`` or ``distill``) seeded by ``cfg.seed``; print the summary on rank zero.

    ``started`` (a ``time.monotonic()`` value, default: now) is when the run began, for
    the wall time in the summary; ``lens-train`` passes the start of its process.

    Example:
        >>> from omegaconf import OmegaConf
        >>> run_experiment(OmegaConf.create({"flow": "nope"}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_train.errors.InvalidArgumentError: Unknown flow 'nope'. Choose one of ['distill', 'train']...
    """
    started = time.monotonic() if started is None else started
    flow = str(cfg.get("flow", "train"))
    if flow not in FLOWS:
        raise InvalidArgumentError(
            f"Unknown flow {flow!r}. Choose one of {sorted(FLOWS)}: lens-train flow=train."
            + suggestion_text(flow, FLOWS, "sorted(lens_train.experiments.run.FLOWS)")
        )
    L.seed_everything(cfg.get("seed", 0), workers=True, verbose=False)
    results = FLOWS[flow](cfg)
    if rank_zero_only.rank == 0 and cfg.get("print_summary", True):
        print(format_summary(results, wall_s=time.monotonic() - started), flush=True)
    return results

