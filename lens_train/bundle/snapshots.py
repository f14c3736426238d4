"""Activation snapshots on disk: the index, loading, linear CKA and the drift plot.

A snapshot directory (``<run>/snapshots``) holds one bundle per snapshot
(``epoch003-step000120/``; older runs wrote ``epoch=003-step=000120/``), the reference batch the snapshots were taken on
(``reference.safetensors``) and ``index.json``, the ordered list of snapshots that
belong to the run. The index is the truth: after a resume it lists exactly the
snapshots of the checkpoint's history, which may live in an earlier run's directory.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import BundleError, CheckpointError, InvalidArgumentError
from .checkpoint import read_checkpoint
from ..arguments import fail
from .files import as_path, write_atomic

INDEX_NAME = "index.json"
# Where ActivationSnapshotCallback(keep_last=...) keeps dropped snapshots that a checkpoint still lists.
DROPPED_DIR = ".dropped"
INDEX_FORMAT = "lens_train.snapshots"
STATE_PREFIX = "ActivationSnapshotCallback"
_NAME = re.compile(r"epoch=?\d+-step=?\d+\Z")  # old runs wrote "epoch=003-step=000120"


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
        from .api import load

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
    """Directory name of a snapshot: sortable, readable as epoch and step, and free of ``=`` (which
    Hydra's override grammar rejects in a value).

    Example:
        >>> snapshot_name(3, 120)
        'epoch003-step000120'
    """
    return f"epoch{epoch:03d}-step{step:06d}"


def read_index(directory: str | os.PathLike) -> list[Snapshot]:
    """The snapshots listed in ``directory/index.json`` (empty when there is no index).

    Every entry must name a snapshot under the directory's log root (:func:`log_root`).
    """
    path = Path(directory) / INDEX_NAME
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"Snapshot index {str(path)!r} is not valid JSON ({exc}). Delete it to start a new list.") from None
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise BundleError(f"{str(path)!r} is not a lens_train snapshot index (format={found!r}).")
    if not isinstance(data.get("snapshots"), list):
        raise BundleError(f"{str(path)!r} has no 'snapshots' list.")
    return [entry_from_json(e, Path(directory), f"{path}, entry {i}") for i, e in enumerate(data["snapshots"])]


def log_root(directory: str | os.PathLike) -> Path:
    """The folder of runs a snapshot directory belongs to: two levels up (``<runs>/<run>/snapshots``).

    An index may list snapshots of other runs only under this folder (a resumed run lists
    the earlier run's snapshots), stored relative to the snapshot directory.

    Example:
        >>> log_root("/logs/lightning_logs/version_1/snapshots").as_posix()
        '/logs/lightning_logs'
    """
    return Path(os.path.abspath(directory)).parent.parent


def write_index(directory: str | os.PathLike, snapshots: Sequence[Snapshot], reference: str | None) -> Path:
    """Atomically write ``index.json``, each path relative to ``directory`` (and under its log root)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for snap in snapshots:
        entry = snap.to_json()
        entry["path"] = stored_path(snap.path, directory)
        entries.append(entry)
    ref = stored_path(reference, directory) if reference else None
    data = {"format": INDEX_FORMAT, "version": 2, "reference": ref, "snapshots": entries}
    write_atomic(directory / INDEX_NAME, json.dumps(data, indent=1).encode())
    return directory / INDEX_NAME


def stored_path(path: str | os.PathLike, directory: Path) -> str:
    """``path`` relative to ``directory``, as an index stores it; it must lie under the log root.

    Example:
        >>> stored_path("/runs/v0/snapshots/epoch=000-step=000003", Path("/runs/v1/snapshots"))
        '../../v0/snapshots/epoch=000-step=000003'
    """
    target, here = Path(path).resolve(), directory.resolve()
    if not _under(target, log_root(here)):
        raise BundleError(
            f"Snapshot {str(path)!r} is outside the log root {str(log_root(here))!r} of {str(directory)!r}: an index "
            "lists only snapshots of runs in the same folder of runs."
        )
    return Path(os.path.relpath(target, here)).as_posix()


def confined_path(stored: Any, directory: Path, where: str) -> Path:
    """The path an index entry names, which must stay under the log root of ``directory``."""
    if not isinstance(stored, str) or not stored or "\0" in stored:
        raise BundleError(f"{where}: 'path' must be a non-empty string, got {stored!r}.")
    full = Path(os.path.normpath(os.path.join(os.path.abspath(directory), stored)))
    if not _under(full, log_root(directory)):
        raise BundleError(
            f"{where}: path {stored!r} leads outside the log root {str(log_root(directory))!r}; an index may only list "
            "snapshots of runs in the same folder of runs, stored relative to the snapshot directory."
        )
    return full


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def entry_from_json(entry: Any, directory: Path | None = None, where: str = "snapshot entry") -> Snapshot:
    """A :class:`Snapshot` from its stored form, every field checked.

    With ``directory`` (an index), the path is relative to it and confined to its log
    root; without (a checkpoint's callback state), it is the path as recorded.

    Example:
        >>> entry_from_json({"index": 0, "name": "epoch=000-step=000002", "epoch": 0, "step": 2,
        ...                  "path": "epoch=000-step=000002"}, Path("/r/v0/snapshots")).path
        '/r/v0/snapshots/epoch=000-step=000002'
    """
    if not isinstance(entry, Mapping):
        raise BundleError(f"{where} is not an object: {type(entry).__name__}.")
    ints = {k: entry.get(k) for k in ("index", "epoch", "step")}
    name, cka = entry.get("name"), entry.get("cka") or {}
    if not all(type(v) is int and v >= 0 for v in ints.values()) or not isinstance(name, str) or not _NAME.match(name):
        raise BundleError(f"{where}: needs int index/epoch/step >= 0 and a name like 'epoch000-step000010', "
                          f"got {dict(ints, name=name)!r}.")
    if not isinstance(cka, Mapping) or not all(isinstance(k, str) and type(v) in (int, float) for k, v in cka.items()):
        raise BundleError(f"{where}: 'cka' must map layer names to numbers.")
    if directory is not None:
        path = confined_path(entry.get("path"), directory, where)
    elif isinstance(entry.get("path"), str):
        path = Path(entry["path"])
    else:
        raise BundleError(f"{where}: 'path' must be a string, got {entry.get('path')!r}.")
    if path.name != name:
        raise BundleError(f"{where}: path {str(path)!r} does not end in the snapshot's name {name!r}.")
    return Snapshot(index=ints["index"], name=name, epoch=ints["epoch"], step=ints["step"], path=str(path),
                    cka={k: float(v) for k, v in cka.items()})


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
    path = as_path(run_dir_or_checkpoint, "run_dir_or_checkpoint", "lt.load_snapshots('logs/run') or "
                   "lt.load_snapshots('checkpoints/last.ckpt')")
    if state_key is not None and not isinstance(state_key, str):
        fail("state_key", state_key, "a callback state key (str) or None",
             "lt.load_snapshots(ckpt, state_key=\"ActivationSnapshotCallback{'layers': 'all', ...}\")", wrong_type=True)
    if path.is_file():
        return _from_checkpoint(path, state_key)
    if not path.is_dir():
        raise InvalidArgumentError(
            f"load_snapshots needs a run directory or a .ckpt file; run_dir_or_checkpoint={str(path)!r} does not exist. "
            "Example: lt.load_snapshots('lightning_logs/version_0') or lt.load_snapshots('checkpoints/last.ckpt')."
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
    entries = state.get("snapshots") if isinstance(state, dict) else None
    if not isinstance(entries, list):
        raise CheckpointError(f"Checkpoint {str(path)!r}: the state of {keys[0]} has no 'snapshots' list.")
    return [_where_now(entry_from_json(e, where=f"{path}, {keys[0]} entry {i}")) for i, e in enumerate(entries)]


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
    return {entry["path"] for key, state in states.items() if str(key).startswith(STATE_PREFIX) and isinstance(state, dict)
            for entry in state.get("snapshots") or [] if isinstance(entry, dict) and isinstance(entry.get("path"), str)}


def _checkpoint_callback_states(path: Path) -> dict[str, Any]:
    # memory-mapped: the model weights are not read, only the small callback states
    states = read_checkpoint(path).get("callbacks", {})
    if not isinstance(states, dict):
        raise CheckpointError(f"Checkpoint {str(path)!r} has a malformed 'callbacks' entry ({type(states).__name__}).")
    return states


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


_DRIFT_FLOOR = 1e-7


def cka_text(value: float) -> str:
    """A CKA value as a heat-map cell shows it: 3 decimals, or ``1-2e-05`` when that would read 1.000.

    Example:
        >>> cka_text(0.9443), cka_text(0.99998)
        ('0.944', '1-2e-05')
    """
    gap = 1.0 - value
    return f"{value:.3f}" if gap >= 5e-4 else f"1-{max(gap, _DRIFT_FLOOR):.0e}"


def drift_norm(drift: Sequence[Sequence[float]]) -> Any:
    """A logarithmic colour scale spanning the finite drift values (``1 - CKA``) of the table.

    Example:
        >>> norm = drift_norm([[1e-4, 1e-2]])
        >>> round(norm.vmin, 6), round(norm.vmax, 6)
        (0.0001, 0.01)
    """
    from matplotlib.colors import LogNorm

    finite = [v for row in drift for v in row if v == v]
    low, high = min(finite, default=1e-3), max(finite, default=1e-1)
    if high <= low * 1.01:  # one value, or all equal: give the scale some width around it
        low, high = low / 3, high * 3
    return LogNorm(vmin=low, vmax=high)


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

    fig = Figure(figsize=(3.0 + 0.75 * len(names), 2.0 + 0.35 * len(layers)), layout="constrained")
    ax = fig.add_subplot()
    # CKA between consecutive snapshots climbs from ~0.9 to 0.99999 as training settles: on a
    # linear scale every cell is the same colour. The colour is the drift 1 - CKA on a log
    # scale, whose range is the data's own, and each cell prints its CKA.
    drift = [[max(1.0 - v, _DRIFT_FLOOR) if v == v else float("nan") for v in row] for row in table]
    norm = drift_norm(drift)
    cmap = "magma_r"
    image = ax.imshow(drift, norm=norm, cmap=cmap, aspect="auto")
    if len(layers) * len(names) <= 400:
        for i, row in enumerate(table):
            for j, v in enumerate(row):
                if v == v:
                    dark = norm(drift[i][j]) > 0.55
                    ax.text(j, i, cka_text(v), ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    ax.set_yticks(range(len(layers)), labels=layers, fontsize=8)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right", fontsize=7)
    ax.set_title("linear CKA with the previous snapshot", fontsize=9)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("drift: 1 - CKA (log scale)", fontsize=8)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = io.BytesIO()
    fig.savefig(image, dpi=100, format=out.suffix.lstrip(".") or "png")
    write_atomic(out, image.getvalue(), durable=False)  # never through a link planted in the snapshot dir
    return out
