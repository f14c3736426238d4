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

from ..bundle.checkpoint import SafeCheckpointIO, read_checkpoint
from ..callbacks._images import log_image
from ..callbacks._shared import default_batch_to_input, quiet_forward
from ..capture.api import log_forward_pass
from ..errors import ConfigError, InvalidArgumentError, suggestion_text
from .builders import build_lens_callbacks, check_lens_layers
from .commands import override, relative, shell_path
from .config_tree import write_config_tree
from .config_types import check_config_types
from .saved_config import find_run_dir, load_saved_config, merge_saved_config
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
    """A Trainer from ``cfg.trainer`` writing into ``out_dir`` with ``cfg.callbacks``, the loggers and ``callbacks``.

    ``cfg.tags`` are recorded in every logger (as the hyperparameter ``tags``).
    """
    # The loggers write into the run dir, which already holds Hydra's .hydra/ folder.
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
    loggers = _instantiate_all(cfg.get("logger"), save_dir=str(out_dir))
    tags = list(cfg.get("tags") or [])
    for logger in loggers if tags else []:  # W&B also takes them as its run's tags (logger/wandb.yaml)
        logger.log_hyperparams({"tags": tags})
    standard = _instantiate_all(cfg.get("callbacks"))
    for cb in standard:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = str(out_dir / "checkpoints")
    # checkpoints (resume, test of the best one) are read without running code from them
    plugins = [*(cfg.trainer.get("plugins") or []), SafeCheckpointIO()]
    kwargs = {"callbacks": [*standard, *callbacks], "logger": loggers or False, "default_root_dir": str(out_dir),
              "plugins": plugins, **(trainer_overrides or {})}
    return instantiate(cfg.trainer, **kwargs)


def fit_stage(cfg: DictConfig, name: str, module: L.LightningModule, datamodule: L.LightningDataModule, out_dir: Path,
              lens: Sequence[Callback] = (), trainer_overrides: dict | None = None) -> tuple[StageResult, L.Trainer]:
    """Fit ``module`` (resuming from ``cfg.ckpt_path`` when set), test it, write plots."""
    check_lens_layers(module, lens)  # a misspelled layer fails here, not after the Trainer starts
    history = MetricsHistory()
    trainer = make_trainer(cfg, out_dir, [*lens, history], trainer_overrides)
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_s = time.perf_counter() - start
    best = _best_checkpoint(trainer)
    test = {}
    start = time.perf_counter()
    if cfg.get("test", True):
        metrics = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
        test = {k: float(v) for k, v in (metrics[0] if metrics else {}).items()}
    result = StageResult(name, out_dir, test=test, history=history, best_checkpoint=best, fit_s=fit_s,
                         test_s=time.perf_counter() - start)
    if cfg.get("plots", True) and trainer.is_global_zero:
        result.plots = write_plots(history, out_dir / "plots")
        # The snapshot callback draws the drift heat map next to its snapshots.
        for name, png in result.plots.items():  # the drift map went to the loggers as it was drawn
            log_image(trainer.loggers, f"plots/{name}", png, step=trainer.global_step)
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
        teacher = load_teacher(teacher_cfg, path)
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
        result.notes.append("reuse this teacher: add " + override("teacher.ckpt_path", relative(result.best_checkpoint)))
        # Test and distill from the same (best) weights.
        _load_weights(teacher, read_checkpoint(result.best_checkpoint), result.best_checkpoint)
    return teacher, result


def load_teacher(teacher_cfg: DictConfig, path: Path) -> L.LightningModule:
    """The teacher of ``teacher_cfg.model`` with the weights of the checkpoint ``path``.

    The checkpoint is read without running code from it (plain data and tensors only);
    ``teacher.trust_checkpoint=true`` unpickles it in full instead (Lightning's
    ``load_from_checkpoint``, hyper-parameters from the file), with a warning.
    """
    if teacher_cfg.get("trust_checkpoint", False):
        warnings.warn(f"teacher.trust_checkpoint=true: unpickling {str(path)!r} in full; a crafted checkpoint can run any "
                      "code. Use it only for checkpoints you wrote yourself.", UserWarning, stacklevel=2)
        module_cls = get_class(teacher_cfg.model._target_)
        return module_cls.load_from_checkpoint(path, net=instantiate(teacher_cfg.model.net), weights_only=False)
    teacher = instantiate(teacher_cfg.model)
    _load_weights(teacher, read_checkpoint(path), path)
    return teacher


def _load_weights(module: L.LightningModule, checkpoint: dict[str, Any], path: str | Path) -> None:
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{str(path)!r} holds no 'state_dict': pass a Lightning checkpoint as teacher.ckpt_path.")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = " ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise ConfigError(
            f"The weights in {str(path)!r} do not fit teacher.model ({first}). Give teacher.model the architecture the "
            "checkpoint was trained with, or pass teacher.trust_checkpoint=true for a checkpoint you wrote yourself."
        ) from None


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


def eval_flow(cfg: DictConfig) -> list[StageResult]:
    """Test ``cfg.ckpt_path`` with the config saved in its run dir (command-line overrides win).

    Prints test metrics, probe accuracy per layer (the probes trained with the checkpoint)
    and where the model's graph is. A checkpoint with no saved config is tested with
    ``cfg`` as composed.
    """
    ckpt = Path(str(cfg.get("ckpt_path") or ""))
    if not ckpt.is_file():
        raise InvalidArgumentError(
            f"flow=eval needs ckpt_path=<a .ckpt file>, got {cfg.get('ckpt_path')!r}. Example: lens-train flow=eval "
            "ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt (every run's summary prints its line)."
        )
    run = find_run_dir(ckpt)
    notes = []
    if run is not None:
        cfg = merge_saved_config(load_saved_config(run), cfg, _command_line() or [])
        check_config_types(cfg)
        notes.append(f"{'config':<12} {shell_path(run / '.hydra' / 'config.yaml')}  (and this command's overrides)")
    else:
        notes.append(f"{'config':<12} none saved near the checkpoint: this command's config")
    model_cfg, lens_cfg = _eval_parts(cfg, ckpt, run)
    out = output_dir(cfg)
    if rank_zero_only.rank == 0:
        write_config_tree(cfg, out, echo=bool(cfg.get("print_config", True)))
    datamodule, module = instantiate(cfg.data), instantiate(model_cfg)
    lens = [cb for cb in build_lens_callbacks(lens_cfg) if type(cb).__name__ == "ProbeCallback"]
    trainer = make_trainer(cfg, out, lens, {"callbacks": lens, "enable_checkpointing": False})
    start = time.perf_counter()
    metrics = trainer.test(module, datamodule=datamodule, ckpt_path=str(ckpt), verbose=False)  # SafeCheckpointIO reads it
    test = {k: float(v) for k, v in (metrics[0] if metrics else {}).items()}
    result = StageResult("eval", out, test=test, best_checkpoint=str(ckpt), test_s=time.perf_counter() - start)
    if trainer.is_global_zero:
        result.notes += [*notes, f"{'graph':<12} {_graph_of(run, ckpt, module, datamodule, out)}"]
    return [result]


def _eval_parts(cfg: DictConfig, ckpt: Path, run: Path | None) -> tuple[DictConfig, DictConfig | None]:
    # A distillation run keeps its teacher in <run>/teacher/: that model, and no student probes.
    stage = ckpt.absolute().relative_to(run).parts[0] if run is not None else ""
    if stage == "teacher" and cfg.get("teacher") is not None:
        return cfg.teacher.model, None
    return cfg.model, cfg.get("lens")


def _graph_of(run: Path | None, ckpt: Path, module: L.LightningModule, datamodule: Any, out: Path) -> str:
    # The training run's latest graph when it drew one, else one drawn now from a test batch.
    stage_dir = ckpt.absolute().parent.parent
    graphs = sorted((stage_dir / "graphs").glob("*.svg"), key=lambda p: p.stat().st_mtime) if run else []
    if graphs:
        return relative(graphs[-1])
    datamodule.setup("test")
    x = default_batch_to_input(next(iter(datamodule.test_dataloader())))[:2]
    with quiet_forward(module):
        log = log_forward_pass(module, x, layers_to_save=None)
    return relative(log.render_graph(vis_opt="rolled", vis_nesting_depth=4, vis_outpath=str(out / "graphs" / "model"),
                                     vis_save_only=True))


FLOWS: dict[str, Callable[[DictConfig], list[StageResult]]] = {"train": train_flow, "distill": distill_flow,
                                                               "eval": eval_flow}


def run_experiment(cfg: DictConfig, started: float | None = None) -> list[StageResult]:
    """Run ``cfg.flow`` (``train``, ``distill`` or ``eval``) seeded by ``cfg.seed``; print the summary on rank zero.

    The composed config is saved as ``<run dir>/config_tree.txt`` and printed first
    (``print_config``); ``tags`` go to every logger.

    ``started`` (a ``time.monotonic()`` value, default: now) is when the run began, for
    the wall time in the summary; ``lens-train`` passes the start of its process.

    Example:
        >>> from omegaconf import OmegaConf
        >>> run_experiment(OmegaConf.create({"flow": "nope"}))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_train.errors.InvalidArgumentError: Unknown flow 'nope'. Choose one of ['distill', 'eval', 'train']...
    """
    started = time.monotonic() if started is None else started
    flow = str(cfg.get("flow", "train"))
    if flow not in FLOWS:
        raise InvalidArgumentError(
            f"Unknown flow {flow!r}. Choose one of {sorted(FLOWS)}: lens-train flow=train."
            + suggestion_text(flow, FLOWS, "sorted(lens_train.experiments.run.FLOWS)")
        )
    check_config_types(cfg)  # a wrong type fails here, before anything is built
    if rank_zero_only.rank == 0 and "paths" in cfg and flow != "eval":  # eval writes the config it reads
        write_config_tree(cfg, output_dir(cfg), echo=bool(cfg.get("print_config", True)))
    L.seed_everything(cfg.get("seed", 0), workers=True, verbose=False)
    results = FLOWS[flow](cfg)
    if rank_zero_only.rank == 0 and cfg.get("print_summary", True):
        print(format_summary(results, wall_s=time.monotonic() - started, overrides=_command_line()), flush=True)
    return results



def _command_line() -> list[str] | None:
    # The overrides of this run (one job's own values in a multirun), when Hydra runs it.
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)
