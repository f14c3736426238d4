"""What a sweep (``lens-train -m ...``, ``hparams_search=...``) found: the jobs ranked, the best one.

Each job returns the value of ``optimized_metric`` (what a sweeper such as Optuna maximizes);
lens-train keeps one :class:`SweepJob` per job of the process and, when the sweep ends,
prints the ranking and writes the best job to ``<sweep dir>/best_run.yaml``.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .commands import command, relative
from .summary import StageResult


@dataclass(frozen=True)
class SweepJob:
    """One job of a sweep: its own overrides, the value it reached and where it ran.

    Example:
        >>> SweepJob(["model.lr=0.01"], "val/acc", 0.97, Path("logs/0")).value
        0.97
    """

    overrides: list[str]
    metric: str
    value: float | None
    run_dir: Path


def metric_value(result: StageResult, metric: str | None) -> float | None:
    """``metric``'s value for a stage: its test metric, else its value at the last epoch.

    Example:
        >>> from lens_train.experiments.history import MetricsHistory
        >>> h = MetricsHistory(); h.epochs = [{"epoch": 0.0, "step": 9.0, "val/acc": 0.5}, {"epoch": 1.0, "step": 19.0, "val/acc": 0.8}]
        >>> metric_value(StageResult("train", Path("."), history=h), "val/acc")
        0.8
    """
    if not metric:
        return result.test_acc
    if metric in result.test:
        return result.test[metric]
    values = result.history.series(metric)[1]
    return float(values[-1]) if values else None


def ranking_lines(jobs: Sequence[SweepJob], maximize: bool = True) -> list[str]:
    """The jobs best first, then the best job's overrides as a command that reruns it.

    Example:
        >>> jobs = [SweepJob(["model.lr=0.01"], "val/acc", 0.91, Path("0")), SweepJob(["model.lr=0.1"], "val/acc", 0.95, Path("1"))]
        >>> print("\\n".join(ranking_lines(jobs)))
        sweep: 2 jobs ranked by val/acc (best first)
          0.9500  model.lr=0.1   (1)
          0.9100  model.lr=0.01   (0)
        best run: val/acc=0.9500 with model.lr=0.1
        rerun it: lens-train model.lr=0.1
    """
    ranked = sorted(jobs, key=lambda j: _key(j.value, maximize))
    metric = jobs[0].metric if jobs else "value"
    lines = [f"sweep: {len(jobs)} jobs ranked by {metric} (best first)"]
    lines += [f"  {_fmt(j.value)}  {' '.join(j.overrides)}   ({relative(j.run_dir)})" for j in ranked]
    best = ranked[0] if ranked and ranked[0].value is not None else None
    if best is not None:
        # The overrides are Hydra's already; a rerun is one run, not the search again.
        words = [shlex.quote(o) for o in best.overrides if not o.startswith(("hparams_search=", "hydra."))]
        lines += [f"best run: {metric}={_fmt(best.value)} with {' '.join(best.overrides)}", f"rerun it: {command(*words)}"]
    return lines


def _key(value: float | None, maximize: bool) -> float:
    if value is None or math.isnan(value):
        return math.inf
    return -value if maximize else value


def _fmt(value: float | None) -> str:
    return "   -  " if value is None else f"{value:.4f}"


def write_best(jobs: Sequence[SweepJob], sweep_dir: Path, maximize: bool = True) -> Path | None:
    """Write the best job (metric, value, overrides, run dir) to ``sweep_dir/best_run.yaml``.

    Example:
        >>> import tempfile
        >>> path = write_best([SweepJob(["model.lr=0.1"], "val/acc", 0.9, Path("0"))], Path(tempfile.mkdtemp()))
        >>> "model.lr=0.1" in path.read_text()
        True
    """
    import yaml

    ranked = [j for j in sorted(jobs, key=lambda j: _key(j.value, maximize)) if j.value is not None]
    if not ranked:
        return None
    best = ranked[0]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    path = sweep_dir / "best_run.yaml"
    path.write_text(yaml.safe_dump({"metric": best.metric, "value": best.value, "overrides": list(best.overrides),
                                    "run_dir": str(best.run_dir)}, sort_keys=False))
    return path
