"""PNG plots of a run: training curves and probe accuracy per layer over epochs.

Each ``plot_*`` function takes plain numbers (so it can be tested and reused outside
the experiments) and writes one PNG; :func:`write_plots` pulls the numbers out of a
:class:`~lens_train.experiments.history.MetricsHistory`. The representational-drift
heat map is drawn by ``ActivationSnapshotCallback`` itself (``snapshots/drift.png``). Figures are built with
``matplotlib.figure.Figure`` directly: no pyplot state, no display needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .history import MetricsHistory

_PROBE_KEY = re.compile(r"^probe/(?P<layer>.+)/(?P<split>val|train)_acc$")


def _figure(width: float, height: float, ncols: int = 1):  # noqa: ANN202 - matplotlib types are optional
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_training_curves(losses: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                         accuracies: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path) -> Path:
    """Loss curves (left, per step) and accuracy curves (right, per epoch) in one PNG.

    Args:
        losses: name -> ``(steps, values)``; auxiliary terms are drawn dashed.
        accuracies: name -> ``(epochs, values)``.
        path: the PNG to write.

    Example:
        >>> import tempfile, os
        >>> out = plot_training_curves({"train/loss": ([0, 1, 2], [2.3, 1.1, 0.6])},
        ...                            {"val/acc": ([0, 1], [0.5, 0.9])}, tempfile.mkdtemp() + "/curves.png")
        >>> os.path.getsize(out) > 1000
        True
    """
    fig, (ax_loss, ax_acc) = _figure(10, 4, ncols=2)
    for name, (x, y) in losses.items():
        style = "-" if name.startswith(("train/", "val/")) else "--"
        ax_loss.plot(x, y, label=name, linestyle=style, marker="o" if name.startswith("val/") else None, linewidth=1.2)
    ax_loss.set(xlabel="step", ylabel="loss", title="Losses (task and auxiliary terms)")
    if losses and all(min(y, default=1.0) > 0 for _, y in losses.values()):
        ax_loss.set_yscale("log")
    for name, (x, y) in accuracies.items():
        ax_acc.plot(x, y, marker="o", label=name)
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_probe_accuracy(epochs: Sequence[float], accuracy: Mapping[str, Sequence[float]], path: str | Path,
                        title: str = "Linear probe accuracy per layer") -> Path:
    """One line per layer: probe (validation) accuracy over epochs.

    Example:
        >>> import tempfile, os
        >>> out = plot_probe_accuracy([0, 1], {"blocks.0": [0.6, 0.7], "blocks.1": [0.7, 0.9]},
        ...                           tempfile.mkdtemp() + "/probes.png")
        >>> os.path.getsize(out) > 1000
        True
    """
    fig, (ax,) = _figure(6, 4)
    for layer, values in accuracy.items():
        ax.plot(list(epochs)[: len(values)], values, marker="o", label=layer)
    ax.set(xlabel="epoch", ylabel="probe accuracy", title=title, ylim=(0, 1.02))
    if accuracy:
        ax.legend(fontsize=8, title="layer")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def probe_table(history: MetricsHistory, split: str = "val") -> tuple[list[float], dict[str, list[float]]]:
    """``(epochs, {layer: accuracy per epoch})`` from ``probe/<layer>/<split>_acc`` metrics.

    Example:
        >>> h = MetricsHistory()
        >>> h.epochs = [{"epoch": 0.0, "step": 9.0, "probe/blocks.0/val_acc": 0.5}]
        >>> probe_table(h)
        ([0.0], {'blocks.0': [0.5]})
    """
    epochs = [r["epoch"] for r in history.epochs]
    table: dict[str, list[float]] = {}
    for key in history.keys():
        match = _PROBE_KEY.match(key)
        if match and match["split"] == split:
            table[match["layer"]] = [r.get(key, float("nan")) for r in history.epochs]
    return epochs, table


def write_plots(history: MetricsHistory, out_dir: str | Path) -> dict[str, Path]:
    """Write every plot the history has data for into ``out_dir``; returns name -> path.

    Example:
        >>> import tempfile
        >>> h = MetricsHistory()
        >>> h.steps = [{"step": 1.0, "train/loss": 2.0}, {"step": 2.0, "train/loss": 1.0}]
        >>> h.epochs = [{"epoch": 0.0, "step": 2.0, "val/acc": 0.8}]
        >>> sorted(write_plots(h, tempfile.mkdtemp()))
        ['training_curves']
    """
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    losses = {k: history.series(k, per="step") for k in history.keys(per="step")}
    val_loss = history.series("val/loss")
    if val_loss[0]:
        losses["val/loss"] = ([r["step"] for r in history.epochs if "val/loss" in r], val_loss[1])
    accuracies = {k: history.series(k) for k in ("train/acc", "val/acc") if history.series(k)[0]}
    if losses or accuracies:
        written["training_curves"] = plot_training_curves(losses, accuracies, out_dir / "training_curves.png")
    epochs, probes = probe_table(history)
    if probes:
        written["probe_accuracy"] = plot_probe_accuracy(epochs, probes, out_dir / "probe_accuracy.png")
    if (out_dir / "importance.png").is_file():  # drawn by CausalImportanceCallback during the run
        written["importance"] = out_dir / "importance.png"
    return written
