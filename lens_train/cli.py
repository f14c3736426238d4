"""``lens-train``: the Hydra app that runs the experiments in ``configs/``.

``lens-train`` (or ``python -m lens_train``) composes ``configs/train.yaml`` with the
command-line overrides and runs :func:`lens_train.experiments.run.run_experiment`.
Before Hydra starts, config-group overrides (``model=nope``) are checked against the
files in ``configs/`` so a typo gets a one-line answer listing the options, not a
traceback. The config directory is ``$LENS_TRAIN_CONFIG_DIR`` when set, else the
``configs/`` shipped inside the installed package, else the ``configs/`` folder of the
source checkout (an editable install); ``--config-dir`` adds a folder of your own.
"""

from __future__ import annotations

import difflib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError, LensTrainError, closest

CONFIG_NAME = "train"
_MULTIRUN_FLAGS = ("-m", "--multirun")
# When the command started (time.monotonic()); the first job's summary counts from there.
_STARTED: list[float] = []
# The jobs of a multirun in this process, for the ranking printed at its end.
_SWEEP: list = []
_SWEEP_DIR: list[Path] = []


def seconds_since_start() -> float | None:
    """Wall time since this process started (imports included), or None where unknown.

    Example:
        >>> 0 < seconds_since_start() < 24 * 3600
        True
    """
    try:  # Linux: the start time in clock ticks since boot, against the uptime
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def config_dir() -> Path:
    """The folder holding ``train.yaml`` and the config groups.

    Example:
        >>> (config_dir() / "train.yaml").is_file()
        True
    """
    env = os.environ.get("LENS_TRAIN_CONFIG_DIR")
    package = Path(__file__).resolve().parent
    # A wheel ships configs/ inside the package; a source checkout has it at the repo root.
    candidates = [Path(env)] if env else [package / "configs", package.parent / "configs"]
    for path in candidates:
        if (path / f"{CONFIG_NAME}.yaml").is_file():
            return path
    where = "LENS_TRAIN_CONFIG_DIR" if env else "the installed package and the source checkout"
    raise ConfigError(
        f"No {CONFIG_NAME}.yaml found in {[str(p) for p in candidates]} ({where}). Point "
        "LENS_TRAIN_CONFIG_DIR at a folder holding train.yaml and the config groups (e.g. the configs/ folder "
        "of the lens_train sources), or reinstall lens_train: pip install --force-reinstall lens-train."
    )


def group_options(directory: Path | Sequence[Path], group: str) -> list[str]:
    """The options of one config group (``model`` -> ``['cnn', 'mlp', 'transformer']``) in one or more folders.

    Example:
        >>> group_options(config_dir(), "model")
        ['cnn', 'mlp', 'transformer']
    """
    folders = [directory] if isinstance(directory, Path) else list(directory)
    return sorted({p.stem for folder in folders for p in (Path(folder) / group).glob("*.yaml")})


def _extra_config_dirs(args: Sequence[str]) -> list[Path]:
    # Hydra's --config-dir/-cd adds a folder whose options join the shipped ones.
    found = []
    for i, arg in enumerate(args):
        if arg.startswith("--config-dir="):
            found.append(Path(arg.split("=", 1)[1]))
        elif arg in ("--config-dir", "-cd") and i + 1 < len(args):
            found.append(Path(args[i + 1]))
    return found


def _split_choice(value: str) -> list[str]:
    # `model=cnn`, a sweep `model=cnn,mlp`, a list `lens=[probes,stats]`, or null.
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    return [v.strip() for v in value.split(",") if v.strip() and v.strip() != "null"]


def check_group_overrides(overrides: Sequence[str], directory: Path | Sequence[Path]) -> str | None:
    """A message for the first override choosing a config that does not exist, else ``None``.

    Example:
        >>> print(check_group_overrides(["model=nope"], config_dir()))
        lens-train: unknown model 'nope'. Available models: cnn, mlp, transformer.
        Example: lens-train model=cnn
        >>> print(check_group_overrides(["logger=null"], config_dir()))
        lens-train: error: logger=null is not how Hydra switches a config group off. Remove it with ~logger (lens-train ~logger), or choose none with logger=[].
        >>> check_group_overrides(["model=mlp", "trainer.max_epochs=2"], config_dir()) is None
        True
    """
    for override in overrides:
        if override.startswith("-") or "=" not in override:
            continue
        key, _, value = override.partition("=")
        group = key.lstrip("+~").split("@")[0]
        options = group_options(directory, group)
        if not options or "." in group or value.startswith(("choice(", "range(", "glob(", "interval(")):
            continue
        if value.strip() == "null" and not key.startswith("~"):
            return _null_group_message(group, directory)
        for name in _split_choice(value):
            if name not in options:
                near = closest(name, options)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                plural = group if group.endswith("s") else f"{group}s"  # "lens", not "lenss"
                return (
                    f"lens-train: unknown {group} {name!r}.{hint} Available {plural}: {', '.join(options)}.\n"
                    f"Example: lens-train {group}={near[0] if near else options[0]}"
                )
    return None


def _primary_default(directory: Path | Sequence[Path], group: str) -> object:
    # The group's entry in train.yaml's defaults list: an option, a list of options, or None.
    import yaml

    folders = [directory] if isinstance(directory, Path) else list(directory)
    try:
        defaults = yaml.safe_load((folders[0] / f"{CONFIG_NAME}.yaml").read_text()).get("defaults", [])
    except (OSError, AttributeError, yaml.YAMLError):
        return "unknown"
    entries = [e for e in defaults if isinstance(e, dict) and group in e]
    return entries[0][group] if entries else "unknown"


def _null_group_message(group: str, directory: Path | Sequence[Path]) -> str:
    """The answer to ``group=null``, which Hydra rejects with a traceback: how to switch the group off."""
    default = _primary_default(directory, group)
    head = f"lens-train: error: {group}=null is not how Hydra switches a config group off."
    if default is None:
        return f"{head} No {group} is the default: leave the override out (a chosen one is removed with ~{group})."
    if isinstance(default, list):  # `~lens` cannot delete a list of options; an empty list can
        first = f"{group}.{default[0]}=null" if default else f"{group}.NAME=null"
        return f"{head} Choose none with {group}=[] (lens-train {group}=[]), or switch one off with {first}."
    return f"{head} Remove it with ~{group} (lens-train ~{group}), or choose none with {group}=[]."


def quote_values_with_equals(args: Sequence[str]) -> list[str]:
    """Quote override values holding ``=`` (``ckpt_path=run/epoch=1-step=40.ckpt``) so Hydra parses them.

    Hydra's grammar refuses an unquoted ``=`` in a value; checkpoint names Lightning writes by
    default (and older lens_train runs) have one. Quoted values, lists and dicts are left as typed.

    Example:
        >>> quote_values_with_equals(["ckpt_path=a/epoch=1.ckpt", "model=mlp", "x='a=b'"])
        ['ckpt_path="a/epoch=1.ckpt"', 'model=mlp', "x='a=b'"]
    """
    from .experiments.commands import hydra_value

    out = []
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        after_flag = i > 0 and args[i - 1] in ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")
        if arg.startswith("-") or after_flag or not eq or "=" not in value or value[:1] in ("'", '"', "[", "{"):
            out.append(arg)
        else:
            out.append(f"{key}={hydra_value(value)}")
    return out


def _single_run_line(override: object) -> str | None:
    # One composable override: a sweep (`a=1,2`, `choice(...)`) stands in with its first value.
    if not override.is_sweep_override():
        return override.input_line
    try:
        first = next(iter(override.sweep_string_iterator()))
    except Exception:  # interval() and other non-discrete sweeps: nothing to compose
        return None
    prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(override.type.name, "")
    return f"{prefix}{override.get_key_element()}={first}"


def check_config_keys(overrides: Sequence[str], directory: Path, extra: Sequence[Path] = ()) -> str | None:
    """A message for the first override naming a config key that does not exist, else ``None``.

    Composes the config as Hydra will (sweeps by their first value) and also checks the
    composed values' types (:func:`~lens_train.experiments.config_types.check_config_types`);
    other errors are left for Hydra to report.

    Example:
        >>> print(check_config_keys(["trainer.max_epoch=1"], config_dir()))  # doctest: +ELLIPSIS
        lens-train: error: no config key 'max_epoch' in trainer. Closest: 'max_epochs', ... add a new key with +trainer.max_epoch=1.
        >>> check_config_keys(["trainer.max_epochs=3", "+trainer.foo=1"], config_dir()) is None
        True
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from .experiments.config_types import check_config_types

    args = list(overrides)
    if any(a in ("-cn", "--config-name") or a.startswith(("--config-name=", "--config-path", "-cp")) for a in args):
        return None  # another primary config: Hydra reports on its own
    skip = {i + 1 for i, a in enumerate(args) if a in ("--config-dir", "-cd")}
    candidates = [a for i, a in enumerate(args) if i not in skip and not a.startswith("-") and "=" in a]
    try:
        parsed = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # a syntax error: Hydra's own message says where
        return None
    lines = [line for line in map(_single_run_line, parsed) if line is not None]
    if extra:
        lines.append("hydra.searchpath=[" + ",".join(f"file://{Path(d).absolute()}" for d in extra) + "]")
    try:
        with initialize_config_dir(str(directory.absolute()), version_base="1.3"):
            cfg = compose(CONFIG_NAME, overrides=lines)
        check_config_types(cfg)
    except ConfigError as exc:  # a value of the wrong type for its _target_'s signature
        return f"lens-train: error: {exc}"
    except ConfigCompositionException as exc:
        cause = exc.__cause__
        if not isinstance(cause, (ConfigAttributeError, ConfigKeyError)) or cause.key is None:
            return None
        key, full_key = str(cause.key), str(cause.full_key)
        parent = full_key[: -len(key)].rstrip(".") if full_key.endswith(key) else ""
        node = cause.parent_node
        existing = [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []
        near = difflib.get_close_matches(key, existing, n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(repr(k) for k in near)}." if near else (
            f" Keys there: {', '.join(existing)}." if existing else "")
        line = next((a for a in candidates if a.lstrip("~+").partition("=")[0] == full_key), f"{full_key}=...")
        value = line.partition("=")[2]
        where = f"in {parent}" if parent else "at the top level"
        return (f"lens-train: error: no config key {key!r} {where}.{hint} Fix the spelling, or add a new key "
                f"with +{full_key}={value}.")
    except Exception:
        return None
    return None


def _uses_ddp(trainer_cfg: object) -> bool:
    strategy = str(getattr(trainer_cfg, "get", lambda *_: None)("strategy") or "")
    devices = getattr(trainer_cfg, "get", lambda *_: None)("devices")
    return "ddp" in strategy or (isinstance(devices, int) and devices > 1)


def _task(cfg: object) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import InstantiationException
    from hydra.types import RunMode

    from .experiments.run import run_experiment

    try:
        if HydraConfig.get().mode == RunMode.MULTIRUN and _uses_ddp(cfg.trainer):
            raise ConfigError(
                "Multirun (-m) cannot be combined with trainer=ddp: Lightning's DDP launcher re-runs the command "
                "once per process and cannot follow Hydra's per-job sweep directories. Sweep on one process "
                "(lens-train -m trainer=cpu lens.aux_loss.weight=0.1,0.3), or launch each DDP run separately "
                "(lens-train trainer=ddp lens.aux_loss.weight=0.1)."
            )
        # Later jobs of a multirun count from their own start, not the process's.
        results = run_experiment(cfg, started=_STARTED.pop() if _STARTED else None)
    except (LensTrainError, InstantiationException) as exc:
        print(f"lens-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # The return value is what sweepers (e.g. Optuna) optimize.
    return _record_job(cfg, results[-1]) if results else None


def _record_job(cfg: object, result: object) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from .experiments.sweep import SweepJob, metric_value

    value = metric_value(result, cfg.get("optimized_metric"))
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        metric = str(cfg.get("optimized_metric") or "test/acc")
        _SWEEP.append(SweepJob(list(hydra_cfg.overrides.task), metric, value, result.run_dir))
        _SWEEP_DIR[:] = [Path(hydra_cfg.sweep.dir)]
    return value


def _report_sweep() -> None:
    # After the last job of a multirun: the jobs ranked and the best one, as a rerunnable command.
    from .experiments.sweep import ranking_lines, write_best

    jobs, _SWEEP[:] = list(_SWEEP), []
    if not jobs:
        return
    lines = ranking_lines(jobs)
    best = write_best(jobs, _SWEEP_DIR[0]) if _SWEEP_DIR else None
    if best is not None:
        lines.append(f"written to {best}")
    print("\n".join(["=" * 72, *lines, "=" * 72]), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``lens-train`` and ``python -m lens_train``.

    Example:
        >>> main(["model=nope"])
        Traceback (most recent call last):
        ...
        SystemExit: 2
    """
    import hydra

    args = quote_values_with_equals(sys.argv[1:] if argv is None else argv)
    # As a command, the process is lens-train's own: its imports count in the wall time.
    since = seconds_since_start() if argv is None else None
    _STARTED[:] = [time.monotonic() - (since or 0.0)]
    try:
        directory = config_dir()
    except ConfigError as exc:
        print(f"lens-train: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    extra = _extra_config_dirs(args)
    message = check_group_overrides(args, [directory, *extra]) or check_config_keys(args, directory, extra)
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
    app = hydra.main(config_path=str(directory), config_name=CONFIG_NAME, version_base="1.3")(_task)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "lens-train", *args]
    try:
        app()
        _report_sweep()
    finally:
        sys.argv = saved
        _SWEEP.clear()
        _close_process_group()


def _close_process_group() -> None:
    # A DDP run leaves gloo's threads running; without this the interpreter can abort at exit.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
