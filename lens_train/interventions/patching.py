"""``lt.patch``: activation patching (causal tracing) from a clean run into a corrupt one.

For each chosen layer (each pass, and each position along ``seq_dim`` when given) the
corrupt run is recomputed with that activation taken from the clean run, and the metric
is read: ``recovered = (metric - corrupt) / (clean - corrupt)`` is 1 where the layer
alone carries the difference and 0 where it carries none. Each patched run is a
:meth:`~lens_train.ModelLog.replay_with` of one replayable corrupt capture: only the ops
downstream of the patch run again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capture.api import log_forward_pass
from ..capture.model_log import ModelLog
from ..errors import DifferentPathError, InvalidArgumentError
from .intervene import replay_with
from .targets import resolve_targets


@dataclass
class PatchResult:
    """The table of an activation-patching run: one row per (layer pass, position).

    ``rows`` hold ``layer``, ``position`` (None without ``seq_dim``), ``metric`` and
    ``recovered``; ``clean`` and ``corrupt`` are the metric of the two unpatched runs.

    Example:
        >>> result = PatchResult(clean=1.0, corrupt=0.0, rows=[
        ...     {"layer": "relu_1_2", "position": 0, "metric": 0.25, "recovered": 0.25},
        ...     {"layer": "relu_1_2", "position": 1, "metric": 0.75, "recovered": 0.75}])
        >>> result.layers, result.positions, result.matrix()
        (['relu_1_2'], [0, 1], [[0.25, 0.75]])
    """

    clean: float
    corrupt: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """The patched layer passes, in execution order."""
        return list(dict.fromkeys(r["layer"] for r in self.rows))

    @property
    def positions(self) -> list[int | None]:
        """The patched positions (``[None]`` without ``seq_dim``)."""
        return list(dict.fromkeys(r["position"] for r in self.rows))

    def matrix(self, value: str = "recovered") -> list[list[float]]:
        """``value`` ("recovered" or "metric") as a layers × positions grid."""
        cell = {(r["layer"], r["position"]): r[value] for r in self.rows}
        return [[cell.get((layer, p), math.nan) for p in self.positions] for layer in self.layers]

    def __str__(self) -> str:
        lines = [f"activation patching: metric clean {self.clean:.4g}, corrupt {self.corrupt:.4g}",
                 f"{'layer':30s} {'position':>8s} {'metric':>10s} {'recovered':>10s}"]
        for r in self.rows:
            pos = "-" if r["position"] is None else str(r["position"])
            lines.append(f"{r['layer']:30s} {pos:>8s} {r['metric']:10.4g} {r['recovered']:10.3f}")
        return "\n".join(lines)

    def heatmap(self, path: str | Path | None = None, title: str = "recovered fraction of the metric") -> Any:
        """Draw ``recovered`` as a layers × positions heat map (a matplotlib Figure; saved when ``path`` is given)."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        grid = self.matrix()
        fig, ax = plt.subplots(figsize=(1.2 + 0.5 * len(self.positions), 1.0 + 0.3 * len(self.layers)))
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1)
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=7)
        ax.set_xticks(range(len(self.positions)), ["all" if p is None else str(p) for p in self.positions], fontsize=7)
        ax.set_xlabel("position")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


def patch(model: nn.Module, clean: Any, corrupt: Any, layers: str | Sequence[str], metric: Callable[[Any], float],
          seq_dim: int | None = None, *, random_seed: int = 0, heatmap: str | Path | None = None) -> PatchResult:
    """Patch each layer's clean activation into the corrupt run and report how much of the metric comes back.

    Args:
        model: the model (left exactly as it was).
        clean, corrupt: two inputs (positional input, as for ``log_forward_pass``) that
            take the same path through the model.
        layers: selectors as for :func:`intervene` (module addresses, labels, globs); a
            layer that ran several times gives one row per pass.
        metric: ``metric(output) -> float`` on the model's output.
        seq_dim: patch one position at a time along this dim of each activation.
        random_seed: seed of both runs (dropout and other random ops match).
        heatmap: also draw the heat map to this file.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> result = lt.patch(model, torch.ones(1, 3), torch.zeros(1, 3), ["0", "1"], lambda out: out.sum().item())
        >>> [round(r["recovered"], 3) for r in result.rows]
        [1.0, 1.0]
    """
    if seq_dim is not None and (not isinstance(seq_dim, int) or isinstance(seq_dim, bool)):
        raise InvalidArgumentError(f"seq_dim must be an int (the dim of positions) or None, got {seq_dim!r}; "
                                   "e.g. seq_dim=1 for (batch, tokens, features) activations.")
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, (list, tuple)) or not layers or not all(isinstance(s, str) for s in layers):
        raise InvalidArgumentError(f"layers must be a selector or a list of selectors, got {layers!r:.60}; "
                                   "e.g. layers=['blocks.*.attn', 'blocks.*.mlp'].")
    if not callable(metric):
        raise InvalidArgumentError(f"metric must be a function output -> float, got {metric!r:.40}; "
                                   "e.g. metric=lambda out: out[0, 3].item().")
    clean_log = log_forward_pass(model, clean, random_seed=random_seed)
    corrupt_log = log_forward_pass(model, corrupt, random_seed=random_seed, replayable=True)
    _check_same_path(clean_log, corrupt_log)
    result = PatchResult(_score(metric, clean_log.output), _score(metric, corrupt_log.output))
    for label in _patched_labels(corrupt_log, list(layers)):
        source = clean_log[label].activation
        for position, edit in _edits(source, seq_dim, label):
            value = _score(metric, replay_with(corrupt_log, {label: edit}).output)
            result.rows.append({"layer": label, "position": position, "metric": value,
                                "recovered": _recovered(value, result.clean, result.corrupt)})
    if heatmap is not None:
        result.heatmap(heatmap)
    return result


def _patched_labels(log: ModelLog, selectors: list[str]) -> list[str]:
    labels: list[str] = []
    for t in resolve_targets(log, {s: "detach" for s in selectors}, "layers"):
        if t.record is not None:
            labels.append(t.label)
        else:
            labels.extend(log.modules[t.call[0]].calls[t.call[1] - 1]["outputs"])
    return list(dict.fromkeys(labels))


def _edits(source: torch.Tensor, seq_dim: int | None, label: str) -> list[tuple[int | None, Any]]:
    if seq_dim is None:
        return [(None, source)]
    if not -source.dim() <= seq_dim < source.dim():
        raise InvalidArgumentError(f"seq_dim={seq_dim} is out of range for {label!r} of shape {tuple(source.shape)}; "
                                   "choose the dim of positions in every patched layer, or patch fewer layers.")

    def at(p: int) -> Callable[[torch.Tensor], torch.Tensor]:
        index = torch.tensor([p], device=source.device)

        def swap(x: torch.Tensor) -> torch.Tensor:
            return x.index_copy(seq_dim, index, source.index_select(seq_dim, index))

        return swap

    return [(p, at(p)) for p in range(source.shape[seq_dim])]


def _check_same_path(clean: ModelLog, corrupt: ModelLog) -> None:
    for a, b in zip(clean.layers, corrupt.layers):
        if (a.layer_label, a.tensor_shape) != (b.layer_label, b.tensor_shape):
            raise DifferentPathError(
                f"The clean and corrupt inputs take different paths through the model: the clean run has "
                f"{a.layer_label} {a.tensor_shape} where the corrupt one has {b.layer_label} {b.tensor_shape}. "
                "Patch between inputs of the same shape that take the same branches."
            )
    if len(clean.layers) != len(corrupt.layers):
        raise DifferentPathError(f"The clean run has {len(clean.layers)} layers, the corrupt run {len(corrupt.layers)}: "
                                 "they take different paths. Patch between inputs that take the same branches.")


def _score(metric: Callable[[Any], float], output: Any) -> float:
    value = metric(output)
    if isinstance(value, torch.Tensor):
        value = value.item()
    return float(value)


def _recovered(value: float, clean: float, corrupt: float) -> float:
    return (value - corrupt) / (clean - corrupt) if clean != corrupt else math.nan
