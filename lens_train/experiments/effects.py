"""What the lens terms did, for the summary: the distillation gain and deep supervision's heads.

The distillation gain is the distilled student's test accuracy minus the same student's
without. The distill flow trains the student once per seed without and once with distillation
(same seed, same batches, same initial weights). Each seed gives one paired difference;
the gain is their mean, with its standard error ``std / sqrt(n)``. The summary calls the
gain real only when the mean exceeds two standard errors (and is positive).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BASELINE, DISTILLED = "student (no distillation", "student (distilled"


@dataclass(frozen=True)
class DistillationGain:
    """Paired test accuracies per seed, without and with distillation.

    Example:
        >>> g = DistillationGain(seeds=(0, 1, 2), baseline=(0.90, 0.91, 0.89), distilled=(0.93, 0.93, 0.92))
        >>> round(g.mean, 4), round(g.stderr, 4), g.is_real
        (0.0267, 0.0033, True)
    """

    seeds: tuple[int, ...]
    baseline: tuple[float, ...]
    distilled: tuple[float, ...]

    @property
    def gains(self) -> list[float]:
        """Distilled minus baseline accuracy, per seed."""
        return [d - b for b, d in zip(self.baseline, self.distilled)]

    @property
    def mean(self) -> float:
        """The mean gain over seeds."""
        return sum(self.gains) / len(self.gains)

    @property
    def stderr(self) -> float:
        """The standard error of the mean gain (0 for a single seed)."""
        n = len(self.gains)
        if n < 2:
            return 0.0
        var = sum((g - self.mean) ** 2 for g in self.gains) / (n - 1)
        return math.sqrt(var / n)

    @property
    def is_real(self) -> bool:
        """Whether the mean gain is positive and exceeds two standard errors (needs 2+ seeds)."""
        return len(self.gains) >= 2 and self.mean > 2 * self.stderr and self.mean > 0

    def lines(self) -> list[str]:
        """The summary's text: per-seed accuracies, the mean gain with its spread, and a verdict."""
        out = ["distillation gain (distilled - no distillation, test accuracy, paired by seed):"]
        out += [f"  seed {s:<4} {b:.4f} -> {d:.4f}   {d - b:+.4f}" for s, b, d in zip(self.seeds, self.baseline, self.distilled)]
        spread = f"  mean gain {self.mean:+.4f} +- {self.stderr:.4f} (standard error, {len(self.gains)} seeds)"
        out.append(spread)
        if len(self.gains) < 2:
            out.append("  one seed: no spread to judge the gain by; list several, e.g. student_seeds=[0,1,2,3].")
        elif self.is_real:
            out.append(f"  distillation helped: the mean gain is {self.mean / max(self.stderr, 1e-12):.1f} standard errors above 0.")
        else:
            out.append("  no gain: the mean gain is not above 2 standard errors; distillation did not measurably help here.")
        return out


def distillation_gain(results: Sequence[Any]) -> DistillationGain | None:
    """The paired gain from a distill flow's stage results (None when there are no student pairs).

    Stages are matched by their ``seed``; a seed with only one of the two students is skipped.

    Example:
        >>> from pathlib import Path
        >>> from lens_train.experiments.summary import StageResult
        >>> r = [StageResult("student (no distillation)", Path("."), test={"test/acc": 0.8}, seed=0),
        ...      StageResult("student (distilled)", Path("."), test={"test/acc": 0.85}, seed=0)]
        >>> round(distillation_gain(r).mean, 4)
        0.05
    """
    by_seed: dict[int, dict[str, float]] = {}
    for r in results:
        kind = "b" if r.name.startswith(BASELINE) else "d" if r.name.startswith(DISTILLED) else None
        if kind and r.test_acc is not None and getattr(r, "seed", None) is not None:
            by_seed.setdefault(int(r.seed), {})[kind] = float(r.test_acc)
    pairs = [(s, v["b"], v["d"]) for s, v in by_seed.items() if len(v) == 2]
    if not pairs:
        return None
    seeds, baseline, distilled = zip(*pairs)
    return DistillationGain(tuple(seeds), tuple(baseline), tuple(distilled))


def deep_supervision_lines(history: Any) -> list[str]:
    """One line per deep-supervision head: its validation accuracy over the epochs, and its term.

    ``AuxiliaryLossCallback`` logs ``val/aux/<layer>/acc`` (the head's accuracy on the
    validation batches) for every ``deep_supervision`` term.

    Example:
        >>> from lens_train.experiments.history import MetricsHistory
        >>> h = MetricsHistory()
        >>> h.epochs = [{"epoch": 0.0, "val/aux/blocks.1/acc": 0.41, "val/aux/blocks.1": 0.5},
        ...             {"epoch": 1.0, "val/aux/blocks.1/acc": 0.93, "val/aux/blocks.1": 0.06}]
        >>> print(deep_supervision_lines(h)[0])
        deep supervision on blocks.1: its head's val accuracy 0.410 -> 0.930 (first -> last epoch); weighted val term 0.500 -> 0.060
    """
    lines = []
    for key in history.keys():
        if not (key.startswith("val/aux/") and key.endswith("/acc")):
            continue
        layer = key[len("val/aux/"):-len("/acc")]
        _, acc = history.series(key)
        _, term = history.series(f"val/aux/{layer}")
        line = f"deep supervision on {layer}: its head's val accuracy {acc[0]:.3f} -> {acc[-1]:.3f} (first -> last epoch)"
        if term:
            line += f"; weighted val term {term[0]:.3f} -> {term[-1]:.3f}"
        lines.append(line)
    return lines
