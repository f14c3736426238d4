"""The end-of-run summary: what a person wants to know when the run finishes."""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .commands import command, override, relative, shell_path
from .effects import deep_supervision_lines, distillation_gain
from .history import MetricsHistory
from .plots import probe_table


@dataclass
class StageResult:
    """One fit + test of one model: its metrics, wall times and where its files are.

    Example:
        >>> r = StageResult("train", Path("run"), test={"test/acc": 0.97}, fit_s=10.0, test_s=0.5)
        >>> r.test_acc, r.elapsed_s
        (0.97, 10.5)
    """

    name: str
    run_dir: Path
    test: dict[str, float] = field(default_factory=dict)
    history: MetricsHistory = field(default_factory=MetricsHistory)
    best_checkpoint: str | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    fit_s: float = 0.0
    test_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    # The seed the stage was trained from (distillation students), and whether the summary
    # prints its details (probe table, paths) or only its row in the table of stages.
    seed: int | None = None
    detail: bool = True

    @property
    def elapsed_s(self) -> float:
        """Wall time of ``trainer.fit`` plus ``trainer.test``."""
        return self.fit_s + self.test_s

    @property
    def test_acc(self) -> float | None:
        """Test accuracy, when the stage was tested."""
        return self.test.get("test/acc")

    def artifact_dirs(self) -> dict[str, tuple[Path, int]]:
        """``{"checkpoints"|"snapshots"|"graphs": (directory, number of entries)}`` found under the run dir.

        Entries are what the folder is for: ``.ckpt`` files, the snapshots its index lists
        (not the index, the reference batch or the drift plot), graphs (one per render,
        whatever the number of formats).
        """
        found: dict[str, tuple[Path, int]] = {}
        for name in ("checkpoints", "snapshots", "graphs"):
            dirs = sorted((p for p in self.run_dir.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
            if dirs:
                found[name] = (dirs[0], count_entries(name, dirs[0]))
        return found

    def last_checkpoint(self) -> Path | None:
        """``checkpoints/last.ckpt`` of this stage, the one to resume from, when it exists."""
        path = self.artifact_dirs().get("checkpoints", (self.run_dir / "checkpoints", 0))[0] / "last.ckpt"
        return path if path.is_file() else None


def count_entries(kind: str, directory: Path) -> int:
    """How many checkpoints, snapshots or graphs ``directory`` holds.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for name in ("step000000.svg", "step000000.png", "epoch002.svg"):
        ...     _ = (d / name).write_text("")
        >>> count_entries("graphs", d)
        2
    """
    if kind == "checkpoints":
        return sum(1 for p in directory.glob("*.ckpt"))
    if kind == "snapshots":
        from ..bundle.snapshots import INDEX_NAME, read_index

        if (directory / INDEX_NAME).is_file():
            return len(read_index(directory))
        return sum(1 for p in directory.iterdir() if p.is_dir() and p.name.startswith("epoch"))
    return len({p.stem for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")})


def entries(count: int) -> str:
    """``"1 entry"``, ``"3 entries"``.

    Example:
        >>> entries(1), entries(0)
        ('1 entry', '0 entries')
    """
    return f"{count} entry" if count == 1 else f"{count} entries"


def _rel(path: Path, base: Path | None = None) -> str:
    return shell_path(path, base)


def probe_lines(history: MetricsHistory, test: dict[str, float] | None = None) -> list[str]:
    """The per-layer probe accuracy table (last epoch; test of the tested checkpoint), as text lines.

    Example:
        >>> h = MetricsHistory()
        >>> h.epochs = [{"epoch": 0.0, "step": 9.0, "probe/blocks.0/val_acc": 0.5, "probe/blocks.0/train_acc": 0.6}]
        >>> print("\\n".join(probe_lines(h, {"probe/blocks.0/test_acc": 0.55})))
        layer     train    val   test
        blocks.0  0.600  0.500  0.550
    """
    _, val = probe_table(history, "val")
    _, train = probe_table(history, "train")
    tested = {key[len("probe/"):-len("/test_acc")]: [v] for key, v in (test or {}).items()
              if key.startswith("probe/") and key.endswith("/test_acc")}
    # A column with no value at all (an evaluation has no train or val) is left out.
    columns = {name: table for name, table in (("train", train), ("val", val), ("test", tested)) if table}
    layers = list(dict.fromkeys([*train, *val, *tested]))
    if not layers:
        return []
    width = max(8, *(len(layer) for layer in layers)) + 2
    lines = [f"{'layer':<{width}}" + "  ".join(f"{name:>5}" for name in columns)]
    for layer in layers:
        cells = [_fmt(table.get(layer, [])[-1:] or [None]) for table in columns.values()]
        lines.append(f"{layer:<{width}}" + "  ".join(f"{cell:>5}" for cell in cells))
    return lines


def importance_lines(history: MetricsHistory) -> list[str]:
    """The causal importance table (``importance/<layer>``: first and last measured epoch), as text lines.

    Example:
        >>> h = MetricsHistory()
        >>> h.epochs = [{"epoch": 0.0, "step": 9.0, "importance/blocks.0": 0.5, "importance/baseline": 0.9},
        ...             {"epoch": 1.0, "step": 19.0, "importance/blocks.0": 0.7, "importance/baseline": 0.95}]
        >>> print("\\n".join(importance_lines(h)))
        layer     first   last
        baseline  0.900  0.950
        blocks.0  0.500  0.700
    """
    keys = [k for k in history.keys() if k.startswith("importance/")]
    keys.sort(key=lambda k: k != "importance/baseline")
    if not keys:
        return []
    width = max(8, *(len(k) - len("importance/") for k in keys)) + 2
    lines = [f"{'layer':<{width}}{'first':>5}  {'last':>5}"]
    for key in keys:
        values = history.series(key)[1]
        lines.append(f"{key[len('importance/'):]:<{width}}{_fmt(values[:1]):>5}  {_fmt(values[-1:]):>5}")
    return lines


def _fmt(values: list[float | None]) -> str:
    value = values[0]
    return "-" if value is None or value != value else f"{value:.3f}"


def stage_lines(result: StageResult, base: Path | None = None, indent: str = "  ",
                resume_hint: Sequence[str] | None = None) -> list[str]:
    """Summary lines of one stage: test accuracy, probe table, artifact paths (relative to ``base``), plots.

    Paths and commands are printed so that they work pasted into bash. With ``resume_hint``
    (the run's own overrides) the commands that resume from and evaluate ``last.ckpt`` follow.
    """
    lines = []
    if result.test_acc is not None:
        loss = result.test.get("test/loss")
        lines.append(f"test accuracy: {result.test_acc:.4f}" + (f"   (test loss {loss:.4f})" if loss is not None else ""))
    lines += deep_supervision_lines(result.history)
    probes = probe_lines(result.history, result.test)
    if probes:
        when = "last epoch" if result.history.epochs else "tested checkpoint"
        lines += ["", f"probe accuracy per layer ({when}):", *(indent + p for p in probes)]
    importance = importance_lines(result.history)
    if importance:
        lines += ["", "causal importance per layer (how much worse the metric gets when ablated; baseline: the metric):",
                  *(indent + p for p in importance)]
    lines += ["", f"{'run dir':<12} {_rel(result.run_dir, base)}"]
    for name, (path, count) in result.artifact_dirs().items():
        extra = f"  (best: {Path(result.best_checkpoint).name})" if name == "checkpoints" and result.best_checkpoint else ""
        lines.append(f"{name:<12} {_rel(path, base)}  [{entries(count)}]{extra}")
    if result.plots:
        lines.append(f"{'plots':<12} " + ", ".join(_rel(p, base) for p in result.plots.values()))
    profiles = sorted(result.run_dir.glob("*profile*.txt"))  # debug=profiler: Lightning's reports
    if profiles:
        lines.append(f"{'profile':<12} " + ", ".join(_rel(p, base) for p in profiles))
    last = result.last_checkpoint()
    if last is not None and resume_hint is not None:
        ckpt = override("ckpt_path", relative(last))
        more = f"trainer.max_epochs={2 * max(1, len(result.history.epochs))}"
        lines += ["", f"{'resume':<12} " + command(*map(shlex.quote, resume_hint), ckpt, more),
                  f"{'evaluate':<12} " + command("flow=eval", ckpt)]
    return lines + [f"{note}" for note in result.notes]


def format_summary(results: list[StageResult], title: str = "lens-train", wall_s: float | None = None,
                   overrides: Sequence[str] | None = None) -> str:
    """The whole end-of-run summary; several stages (distillation) get a comparison table first.

    ``wall_s`` is the whole command's wall time; the headline splits it into the stages'
    ``trainer.fit`` and ``trainer.test`` time and the rest (start-up, data, plots). With
    ``overrides`` (the run's command line), a one-stage run ends with the command that
    resumes it.

    Example:
        >>> r = StageResult("train", Path("."), test={"test/acc": 0.9, "test/loss": 0.3}, fit_s=11.5, test_s=0.5)
        >>> print(format_summary([r], wall_s=17.0).splitlines()[1])
        lens-train: train finished in 17.0 s (fit 11.5 s, test 0.5 s; start-up, data and plots 5.0 s)
    """
    bar = "=" * 72
    fit_s, test_s = sum(r.fit_s for r in results), sum(r.test_s for r in results)
    names = ", ".join(r.name for r in results) if len(results) <= 3 else f"{results[0].name} and {len(results) - 1} more stages"
    if wall_s is None or wall_s < fit_s + test_s:
        headline = f"finished in {fit_s + test_s:.1f} s (fit {fit_s:.1f} s, test {test_s:.1f} s)"
    else:
        rest = wall_s - fit_s - test_s
        headline = f"finished in {wall_s:.1f} s (fit {fit_s:.1f} s, test {test_s:.1f} s; start-up, data and plots {rest:.1f} s)"
    lines = [bar, f"{title}: {names} {headline}"]
    base = None
    if len(results) > 1:
        base = Path(os.path.commonpath([r.run_dir.absolute() for r in results]))
        lines += ["", "test accuracy by stage:"]
        width = max(len(r.name) for r in results) + 2
        lines += [f"  {r.name:<{width}}{_fmt([r.test_acc])}   (fit {r.fit_s:.1f} s, test {r.test_s:.1f} s)"
                  for r in results]
        gain = distillation_gain(results)
        lines += ["", *gain.lines()] if gain is not None else []
        lines += ["", f"run dir: {_rel(base)}  (paths below are relative to it)"]
    hint = _resume_overrides(overrides) if overrides is not None and len(results) == 1 else None
    for result in (r for r in results if r.detail):
        header = [] if len(results) == 1 else ["", f"-- {result.name} " + "-" * max(0, 68 - len(result.name))]
        lines += header + [""] + ["  " + line if line else "" for line in stage_lines(result, base, resume_hint=hint)]
    return "\n".join([*lines, bar])


def _resume_overrides(overrides: Sequence[str]) -> list[str]:
    # The run's own overrides, less the ones the resume command sets itself.
    dropped = ("ckpt_path=", "trainer.max_epochs=", "flow=", "hparams_search=", "hydra.")
    return [o for o in overrides if not o.lstrip("+~").startswith(dropped)]
