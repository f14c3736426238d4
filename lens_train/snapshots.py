"""Activation snapshots on disk: the index, loading, linear CKA and the drift plot.

A snapshot directory (``<run>/snapshots``) holds one bundle per snapshot
(``epoch=003-step=000120/``), the reference batch the snapshots were taken on
(``reference.safetensors``) and ``index.json``, the ordered list of snapshots that
belong to the run. The index is the truth: after a resume it lists exactly the
snapshots of the checkpoint's history, which may live in an earlier run's directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .errors import BundleError, InvalidArgumentError

INDEX_NAME = "index.json"
# Where ActivationSnapshotCallback(keep_last=...) keeps dropped snapshots that a checkpoint still lists.
DROPPED_DIR = ".dropped"
INDEX_FORMAT = "lens_train.snapshots"
STATE_PREFIX = "ActivationSnapshotCallback"


@dataclass(frozen=True)
class Snapshot:
    """One activation snapshot: when it was taken and where its bundle lives.

    Example:
        >>> s = Snapshot(index=0, name="epoch=000-step=000010", epoch=0, step=10, path="/tmp/x")
        >>> s.name, s.step
        ('epoch=000-step=000010', 10)
    """

    index: int
    name: str
    epoch: int
    step: int
    path: str
    cka: dict[str, float] = field(default_factory=dict)

    def load(self, lazy: bool = True) -> Any:
        """The snapshot's :class:`~lens_train.ModelLog` (``lt.load`` of its bundle)."""
        from .bundle import load

        if not Path(self.path).exists():
            raise BundleError(
                f"Snapshot {self.name} is no longer on disk ({self.path}). ActivationSnapshotCallback(keep_last=...) "
                "deletes the snapshots it drops once no checkpoint lists them, and a later run in the same directory "
                "may have moved it to snapshots/aside/. List what exists with lt.load_snapshots(<run dir>), or keep "
                "every snapshot with keep_last=None."
            )
        return load(self.path, lazy=lazy)

    def activations(self) -> dict[str, torch.Tensor]:
        """``{layer label: activation}`` of every saved layer of the snapshot."""
        log = self.load(lazy=False)
        return {layer.layer_label: layer.activation for layer in log if layer.activation is not None}

    def to_json(self) -> dict[str, Any]:
        """The entry as stored in ``index.json`` and in the callback's state."""
        return {"index": self.index, "name": self.name, "epoch": self.epoch, "step": self.step,
                "path": self.path, "cka": dict(self.cka)}


def snapshot_name(epoch: int, step: int) -> str:
    """Directory name of a snapshot: sortable, and readable as epoch and step.

    Example:
        >>> snapshot_name(3, 120)
        'epoch=003-step=000120'
    """
    return f"epoch={epoch:03d}-step={step:06d}"


def read_index(directory: str | os.PathLike) -> list[Snapshot]:
    """The snapshots listed in ``directory/index.json`` (empty when there is no index)."""
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"Snapshot index {str(path)!r} is not valid JSON ({exc}). Delete it to start a new list.") from None
    if data.get("format") != INDEX_FORMAT:
        raise BundleError(f"{str(path)!r} is not a lens_train snapshot index (format={data.get('format')!r}).")
    return [entry_from_json(e, Path(directory)) for e in data["snapshots"]]


def write_index(directory: str | os.PathLike, snapshots: Sequence[Snapshot], reference: str | None) -> Path:
    """Atomically write ``index.json`` (paths inside ``directory`` stored relative)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for snap in snapshots:
        entry = snap.to_json()
        entry["path"] = _relative_if_inside(Path(snap.path), directory)
        entries.append(entry)
    ref = _relative_if_inside(Path(reference), directory) if reference else None
    data = {"format": INDEX_FORMAT, "version": 1, "reference": ref, "snapshots": entries}
    tmp = directory / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, directory / INDEX_NAME)
    return directory / INDEX_NAME


def entry_from_json(entry: Mapping[str, Any], directory: Path | None = None) -> Snapshot:
    """A :class:`Snapshot` from its stored form; relative paths are resolved against ``directory``."""
    path = Path(entry["path"])
    if not path.is_absolute() and directory is not None:
        path = directory / path
    return Snapshot(index=int(entry["index"]), name=str(entry["name"]), epoch=int(entry["epoch"]),
                    step=int(entry["step"]), path=str(path), cka=dict(entry.get("cka") or {}))


def _relative_if_inside(path: Path, directory: Path) -> str:
    try:
        return path.resolve().relative_to(directory.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def load_snapshots(run_dir_or_checkpoint: str | os.PathLike, state_key: str | None = None) -> list[Snapshot]:
    """The activation snapshots of a run, in the order they were taken.

    Args:
        run_dir_or_checkpoint: a run directory (searched for ``snapshots/index.json``), a
            snapshot directory, or a Lightning ``.ckpt`` file (the list as of that checkpoint).
        state_key: which ``ActivationSnapshotCallback`` of a checkpoint, when it holds several.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = write_index(d, [Snapshot(0, "epoch=000-step=000005", 0, 5, d + "/epoch=000-step=000005")], None)
        >>> [s.step for s in load_snapshots(d)]
        [5]
    """
    path = Path(run_dir_or_checkpoint)
    if path.is_file():
        return _from_checkpoint(path, state_key)
    if not path.is_dir():
        raise InvalidArgumentError(
            f"load_snapshots needs a run directory or a .ckpt file; {str(path)!r} does not exist."
        )
    indexes = [path / INDEX_NAME] if (path / INDEX_NAME).is_file() else sorted(path.rglob(INDEX_NAME))
    indexes = [p for p in indexes if _is_snapshot_index(p)]
    if not indexes:
        raise InvalidArgumentError(
            f"No snapshot index under {str(path)!r}. Snapshots are written by "
            "lt.callbacks.ActivationSnapshotCallback into <log_dir>/snapshots/index.json."
        )
    if len(indexes) > 1:
        listed = ", ".join(repr(str(p.parent)) for p in indexes)
        raise InvalidArgumentError(f"{str(path)!r} holds several snapshot directories: {listed}. Pass one of them.")
    return read_index(indexes[0].parent)


def _is_snapshot_index(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == INDEX_FORMAT
    except (OSError, ValueError):
        return False


def _from_checkpoint(path: Path, state_key: str | None) -> list[Snapshot]:
    states = _checkpoint_callback_states(path)
    keys = [k for k in states if str(k).startswith(STATE_PREFIX)]
    if state_key is not None:
        keys = [k for k in keys if k == state_key]
    if len(keys) != 1:
        found = [k for k in states if str(k).startswith(STATE_PREFIX)]
        raise InvalidArgumentError(
            f"Checkpoint {str(path)!r} holds {len(found)} snapshot callback states ({found}); "
            "pass state_key= to pick one." if found else
            f"Checkpoint {str(path)!r} has no ActivationSnapshotCallback state."
        )
    state = states[keys[0]]
    return [_where_now(entry_from_json(e)) for e in state["snapshots"]]


def _where_now(snap: Snapshot) -> Snapshot:
    """``snap`` at its path, or in the ``.dropped/`` folder where ``keep_last`` moved it since."""
    path = Path(snap.path)
    dropped = path.parent / DROPPED_DIR / snap.name
    if not path.exists() and dropped.exists():
        return replace(snap, path=str(dropped))
    return snap


def checkpoint_snapshot_paths(path: str | os.PathLike) -> set[str]:
    """The paths of every snapshot that a Lightning checkpoint's snapshot callbacks list.

    Example:
        >>> import tempfile
        >>> ckpt = tempfile.mkdtemp() + "/a.ckpt"
        >>> entry = Snapshot(0, "epoch=000-step=000004", 0, 4, "/run/snapshots/epoch=000-step=000004").to_json()
        >>> torch.save({"callbacks": {"ActivationSnapshotCallback{}": {"snapshots": [entry]}}}, ckpt)
        >>> checkpoint_snapshot_paths(ckpt)
        {'/run/snapshots/epoch=000-step=000004'}
    """
    states = _checkpoint_callback_states(Path(path))
    return {str(entry["path"]) for key, state in states.items() if str(key).startswith(STATE_PREFIX)
            for entry in (state or {}).get("snapshots", [])}


def _checkpoint_callback_states(path: Path) -> dict[str, Any]:
    # mmap: the model weights are not read, only the small callback states.
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        # The user's own checkpoint may hold pickled hyperparameters that the safe
        # loader refuses (Lightning itself loads it this way when resuming), or be in
        # the legacy format that cannot be memory-mapped.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return dict(ckpt.get("callbacks", {}))


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centered kernel alignment of two activations of the same examples.

    Each is flattened to ``(examples, features)``; the value is in [0, 1], 1 for
    representations equal up to rotation and isotropic scaling (Kornblith et al., 2019).

    Example:
        >>> x = torch.randn(16, 5)
        >>> round(linear_cka(x, 3 * x), 6), linear_cka(x, torch.randn(16, 7)) < 1
        (1.0, True)
    """
    if x.shape[0] != y.shape[0]:
        raise InvalidArgumentError(
            f"linear_cka needs the same examples in both: got {x.shape[0]} and {y.shape[0]} rows."
        )
    kx, ky = _centered_gram(x), _centered_gram(y)
    denom = kx.norm() * ky.norm()
    if denom == 0:
        return 1.0 if torch.equal(kx, ky) else 0.0
    return float((kx * ky).sum() / denom)


def _centered_gram(x: torch.Tensor) -> torch.Tensor:
    # The Gram form costs O(n^2 p): cheap for a reference batch of wide activations.
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    flat = flat - flat.mean(dim=0, keepdim=True)
    return flat @ flat.T


def drift_table(snapshots: Sequence[Snapshot]) -> tuple[list[str], list[str], list[list[float]]]:
    """``(layers, snapshot names, cka[layer][i])`` of CKA with each snapshot's predecessor.

    Example:
        >>> a = Snapshot(0, "s0", 0, 1, "p0")
        >>> b = Snapshot(1, "s1", 1, 2, "p1", cka={"fc": 0.9})
        >>> drift_table([a, b])
        (['fc'], ['s1'], [[0.9]])
    """
    later = [s for s in snapshots if s.cka]
    layers = list(dict.fromkeys(layer for s in later for layer in s.cka))
    table = [[s.cka.get(layer, float("nan")) for s in later] for layer in layers]
    return layers, [s.name for s in later], table


def plot_drift(snapshots: Sequence[Snapshot], path: str | os.PathLike) -> Path | None:
    """Save a heatmap of CKA between consecutive snapshots (layers x snapshots) to ``path``.

    Returns ``None`` (nothing written) when there is nothing to plot yet.

    Example:
        >>> import tempfile
        >>> snaps = [Snapshot(0, "s0", 0, 1, "p"), Snapshot(1, "s1", 1, 2, "p", cka={"fc": 0.8})]
        >>> plot_drift(snaps, tempfile.mkdtemp() + "/drift.png").name
        'drift.png'
    """
    layers, names, table = drift_table(snapshots)
    if not layers:
        return None
    # A bare Figure (no pyplot) leaves the user's backend and global state alone.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.5 + 0.5 * len(names), 2.0 + 0.3 * len(layers)), layout="constrained")
    ax = fig.add_subplot()
    # CKA between consecutive snapshots is usually close to 1: scale the colours to the
    # observed range so that drift stays visible, and print each value in its cell.
    finite = [v for row in table for v in row if v == v]
    low = min(finite, default=0.0)
    image = ax.imshow(table, vmin=min(low, 0.999), vmax=1.0, cmap="viridis", aspect="auto")
    if len(layers) * len(names) <= 400:
        for i, row in enumerate(table):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=5,
                            color="white" if v < (low + 1) / 2 else "black")
    ax.set_yticks(range(len(layers)), labels=layers, fontsize=7)
    ax.set_xticks(range(len(names)), labels=names, rotation=60, ha="right", fontsize=7)
    ax.set_title("linear CKA with the previous snapshot", fontsize=8)
    fig.colorbar(image, ax=ax)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
