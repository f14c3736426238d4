"""The end-of-run summary: what a person wants to know when the run finishes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .history import MetricsHistory
from .plots import probe_table


@dataclass
class StageResult:
    """One fit + test of one model: its metrics and where its files are.

    Example:
        >>> r = StageResult("train", Path("run"), test={"test/acc": 0.97})
        >>> r.test_acc
        0.97
    """

    name: str
    run_dir: Path
    test: dict[str, float] = field(default_factory=dict)
    history: MetricsHistory = field(default_factory=MetricsHistory)
    best_checkpoint: str | None = None
    plots: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def test_acc(self) -> float | None:
        """Test accuracy, when the stage was tested."""
        return self.test.get("test/acc")

    def artifact_dirs(self) -> dict[str, tuple[Path, int]]:
        """``{"checkpoints"|"snapshots"|"graphs": (directory, number of entries)}`` found under the run dir."""
        found: dict[str, tuple[Path, int]] = {}
        for name in ("checkpoints", "snapshots", "graphs"):
            dirs = sorted((p for p in self.run_dir.rglob(name) if p.is_dir()), key=lambda p: len(p.parts))
            if dirs:
                found[name] = (dirs[0], sum(1 for c in dirs[0].iterdir() if not c.name.startswith(".")))
        return found


def _rel(path: Path, base: Path | None = None) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return str(path)


def probe_lines(history: MetricsHistory) -> list[str]:
    """The per-layer probe accuracy table (last epoch), as aligned text lines.

    Example:
        >>> h = MetricsHistory()
        >>> h.epochs = [{"epoch": 0.0, "step": 9.0, "probe/blocks.0/val_acc": 0.5, "probe/blocks.0/train_acc": 0.6}]
        >>> print("\\n".join(probe_lines(h)))
        layer     train    val
        blocks.0  0.600  0.500
    """
    _, val = probe_table(history, "val")
    _, train = probe_table(history, "train")
    layers = list(dict.fromkeys([*train, *val]))
    if not layers:
        return []
    width = max(8, *(len(layer) for layer in layers)) + 2
    lines = [f"{'layer':<{width}}{'train':>5}  {'val':>5}"]
    for layer in layers:
        cells = [_fmt(table.get(layer, [])[-1:] or [None]) for table in (train, val)]
        lines.append(f"{layer:<{width}}{cells[0]:>5}  {cells[1]:>5}")
    return lines


def _fmt(values: list[float | None]) -> str:
    value = values[0]
    return "-" if value is None or value != value else f"{value:.3f}"


def stage_lines(result: StageResult, base: Path | None = None, indent: str = "  ") -> list[str]:
    """Summary lines of one stage: test accuracy, probe table, artifact paths (relative to ``base``), plots."""
    lines = []
    if result.test_acc is not None:
        loss = result.test.get("test/loss")
        lines.append(f"test accuracy: {result.test_acc:.4f}" + (f"   (test loss {loss:.4f})" if loss is not None else ""))
    probes = probe_lines(result.history)
    if probes:
        lines += ["", "probe accuracy per layer (last epoch):", *(indent + p for p in probes)]
    lines += ["", f"{'run dir':<12} {_rel(result.run_dir, base)}"]
    for name, (path, count) in result.artifact_dirs().items():
        extra = f"  (best: {Path(result.best_checkpoint).name})" if name == "checkpoints" and result.best_checkpoint else ""
        lines.append(f"{name:<12} {_rel(path, base)}  [{count} entries]{extra}")
    if result.plots:
        lines.append(f"{'plots':<12} " + ", ".join(_rel(p, base) for p in result.plots.values()))
    return lines + [f"{note}" for note in result.notes]


def format_summary(results: list[StageResult], title: str = "lens-train") -> str:
    """The whole end-of-run summary; several stages (distillation) get a comparison table first.

    Example:
        >>> r = StageResult("train", Path("."), test={"test/acc": 0.9, "test/loss": 0.3}, elapsed_s=12.0)
        >>> print(format_summary([r]).splitlines()[1])
        lens-train: train finished in 12.0 s
    """
    bar = "=" * 72
    total = sum(r.elapsed_s for r in results)
    names = ", ".join(r.name for r in results)
    lines = [bar, f"{title}: {names} finished in {total:.1f} s"]
    base = None
    if len(results) > 1:
        base = Path(os.path.commonpath([r.run_dir.absolute() for r in results]))
        lines += ["", "test accuracy by stage:"]
        width = max(len(r.name) for r in results) + 2
        lines += [f"  {r.name:<{width}}{_fmt([r.test_acc])}" for r in results]
        lines += ["", f"run dir: {_rel(base)}  (paths below are relative to it)"]
    for result in results:
        header = [] if len(results) == 1 else ["", f"-- {result.name} " + "-" * max(0, 68 - len(result.name))]
        lines += header + [""] + ["  " + line if line else "" for line in stage_lines(result, base)]
    return "\n".join([*lines, bar])
