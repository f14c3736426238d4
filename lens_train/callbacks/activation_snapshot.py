"""``ActivationSnapshotCallback``: activations on a fixed batch, kept in step with checkpoints."""

from __future__ import annotations

import os
import re
import shutil
import time
import weakref
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from ..bundle.api import save as save_bundle
from ..capture.api import log_forward_pass
from ..arguments import check_bool, check_names, fail
from ..bundle.snapshots import (Snapshot, checkpoint_snapshot_paths, entry_from_json, linear_cka, log_root, plot_drift,
                                read_index, snapshot_name, write_index)
from ..errors import CheckpointError, InvalidArgumentError
from ..train.selection import ModuleIndex
from ._base import LensCallback
from ._images import log_image
from ._reference import load_reference, save_reference
from ._shared import BatchGetter, first_batch, model_inputs, quiet_forward, refuse_sharded, run_dir

# Older runs named snapshots with "=" (epoch=003-step=000120); both forms are recognised.
_SNAPSHOT_DIR = re.compile(r"epoch=?\d+-step=?(\d+)\Z")
DROPPED = ".dropped"


class ActivationSnapshotCallback(LensCallback):
    """Save the chosen layers' activations on one fixed reference batch, periodically.

    Each snapshot is a bundle (``lt.load`` reads it) in ``<log_dir>/snapshots/epochEEE-stepSSSSSS/``,
    taken on rank zero from the unwrapped module in eval mode, under ``no_grad`` and a
    forked RNG, with buffers restored. The reference batch (by default the first validation
    batch, else the first training batch) is stored once as ``snapshots/reference.safetensors``
    so every snapshot sees the same input. Between consecutive snapshots the per-layer linear
    CKA is logged (``drift/cka/<layer>``) and drawn in ``snapshots/drift.png``, which also goes to
    every logger that takes images (``lens/drift``).

    The snapshot list lives in the callback's checkpoint state. Resuming from a checkpoint
    restores exactly the snapshots taken up to it, also when the resumed run writes to a new
    log dir (the index then points at the earlier files); snapshots a crashed run took after
    that checkpoint are moved to ``snapshots/aside/`` and numbering continues. With
    ``keep_last``, a dropped snapshot waits in ``snapshots/.dropped/`` while a checkpoint in
    a ``ModelCheckpoint`` directory still lists it, so resuming from any of those
    checkpoints, older ones included, finds every snapshot it lists.
    ``lt.load_snapshots(run_dir_or_checkpoint)`` lists them in order.

    Args:
        layers: ``"all"`` or a list of module addresses (a unique suffix works: ``"layer2"``)
            and op labels, as ``lt.log_forward_pass(layers_to_save=...)``.
        every_n_epochs: snapshot after every this many epochs (default 1 when
            ``every_n_steps`` is not given).
        every_n_steps: snapshot every this many optimizer steps instead.
        reference_batch: the model input to use (a tensor, tuple or dict of tensors, or the
            path of a ``.safetensors`` file written by a previous run).
        keep_last: keep only this many snapshots on disk (None: all).
        drift: log CKA drift between consecutive snapshots and plot it.
        dirname: folder under the log dir.
        batch_to_input: how to find the model input in a batch.

    Example:
        >>> cb = ActivationSnapshotCallback(layers=["layer1", "layer2"], every_n_steps=100, keep_last=5)
        >>> cb.every_n_steps, cb.every_n_epochs, cb.snapshots
        (100, None, [])
    """

    def __init__(self, layers: str | list[str] = "all", every_n_epochs: int | None = None,
                 every_n_steps: int | None = None, reference_batch: Any = None, keep_last: int | None = None,
                 drift: bool = True, dirname: str = "snapshots", batch_to_input: BatchGetter = None) -> None:
        super().__init__(batch_to_input=batch_to_input)
        if every_n_epochs is not None and every_n_steps is not None:
            raise InvalidArgumentError(
                f"Pass every_n_epochs or every_n_steps, not both (got {every_n_epochs!r} and {every_n_steps!r})."
            )
        _check_positive("every_n_epochs", every_n_epochs)
        _check_positive("every_n_steps", every_n_steps)
        _check_positive("keep_last", keep_last)
        check_names("layers", layers, "ActivationSnapshotCallback(layers=['layer1', 'layer2'])")
        check_bool("drift", drift, "ActivationSnapshotCallback(drift=False)")
        if not isinstance(dirname, str) or not dirname or Path(dirname).is_absolute() or ".." in Path(dirname).parts:
            fail("dirname", dirname, "a folder name inside the log dir (relative, without '..')",
                 "ActivationSnapshotCallback(dirname='snapshots')")
        self.layers = layers if layers == "all" else list(layers)
        self.every_n_epochs = every_n_epochs if every_n_epochs or every_n_steps else 1
        self.every_n_steps = every_n_steps
        self.reference_batch = reference_batch
        self.keep_last = keep_last
        self.drift = drift
        self.dirname = dirname
        self._snapshots: list[Snapshot] = []
        self.directory: Path | None = None
        self.reference_path: str | None = None
        self.timings: list[float] = []
        self._next_index = 0
        self._restored: dict[str, Any] | None = None
        self._reference: Any = None
        self._previous: dict[str, torch.Tensor] | None = None
        self._is_zero = True
        self._fitting = True
        self._trainer: weakref.ref[pl.Trainer] | None = None
        self._listed: dict[Path, tuple[tuple[int, int], set[str]]] = {}
        self._wanted: dict[str, str] = {}

    @property
    def snapshots(self) -> list[Snapshot]:
        """The snapshots of the run so far, in order.

        Rank zero takes them; on the other ranks this reads the index rank zero wrote
        into the shared run directory, so every rank sees the same list.
        """
        if self._is_zero or self.directory is None:
            return self._snapshots
        return read_index(self.directory)

    @snapshots.setter
    def snapshots(self, value: list[Snapshot]) -> None:
        self._snapshots = value

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, every_n_epochs=self.every_n_epochs,
                                        every_n_steps=self.every_n_steps, dirname=self.dirname)

    # -- hooks ----------------------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"
        if not self._fitting:
            return
        self.directory = run_dir(trainer) / self.dirname  # every rank: log_dir broadcasts
        self._is_zero = trainer.is_global_zero
        self._trainer = weakref.ref(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._prune_dropped()  # checkpoints that top-k removed after the last save

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        refuse_sharded(self, trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After Lightning restored the loops, so global_step is the checkpoint's step.
        if self._restored is None:
            return
        self._run_restore(trainer)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not trainer.is_global_zero or not self._due(trainer):
            return
        self._run_snapshot(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        self._prune_dropped()
        return {"version": 1, "directory": str(self.directory) if self.directory else None,
                "reference": self.reference_path, "next_index": self._next_index,
                "snapshots": [s.to_json() for s in self.snapshots]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._fitting:
            return  # trainer.test(ckpt_path=...) takes no snapshots and must not rewind the list
        self._restored = dict(state_dict)
        self.snapshots = self._inside_log_root([entry_from_json(e) for e in state_dict["snapshots"]])
        self._next_index = int(state_dict["next_index"])
        reference = state_dict["reference"]
        self.reference_path = reference if isinstance(reference, str) and self._in_root(reference) else None

    def _in_root(self, path: str) -> bool:
        return self.directory is None or log_root(self.directory.resolve()) in Path(path).resolve().parents

    def _inside_log_root(self, snapshots: list[Snapshot]) -> list[Snapshot]:
        """The checkpoint's snapshots this run may list and move: those under its log root."""
        outside = [s for s in snapshots if not self._in_root(s.path)]
        if outside:
            rank_zero_warn(f"Not listing {len(outside)} snapshot(s) of the checkpoint outside the log root "
                           f"{log_root(self.directory.resolve())}: {', '.join(s.path for s in outside[:3])}")
        return [s for s in snapshots if s not in outside]

    # -- when -----------------------------------------------------------------------------
    def _due(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step
        if self.snapshots and self.snapshots[-1].step == step:
            return False  # gradient accumulation: several batches share one step
        if self.every_n_steps:
            return step > 0 and step % self.every_n_steps == 0
        # The end of the epoch's last batch comes before any checkpoint of that epoch
        # (ModelCheckpoint saves in on_validation_end / on_train_epoch_end), so every
        # checkpoint lists the snapshots taken before it.
        return bool(trainer.is_last_batch) and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # -- taking one -----------------------------------------------------------------------
    def _run_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Snapshot:
        start = time.perf_counter()
        assert self.directory is not None, "setup() sets the directory"
        name = snapshot_name(trainer.current_epoch, trainer.global_step)
        log = self.capture(trainer, pl_module)
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_bundle(log, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        current = _named_activations(log, self._wanted)
        snap = Snapshot(self._next_index, name, trainer.current_epoch, trainer.global_step, str(final),
                        self._cka(current) if self.drift else {})
        self._next_index += 1
        self.snapshots.append(snap)
        self._previous = current
        self._keep_last()
        self._write_index()
        self._log_drift(pl_module, snap)
        self.timings.append(time.perf_counter() - start)
        return snap

    def capture(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        """One quiet forward pass of the unwrapped module on the reference batch."""
        reference = move_data_to_device(self._reference_input(trainer), pl_module.device)
        args, kwargs = model_inputs(pl_module, reference)
        with quiet_forward(pl_module):
            return log_forward_pass(pl_module, args, kwargs, layers_to_save=self._selection(pl_module), random_seed=0)

    def _selection(self, pl_module: pl.LightningModule) -> Any:
        if self.layers == "all":
            return "all"
        index = ModuleIndex(pl_module)
        self._wanted = {index.find(name) or name: name for name in self.layers}
        return list(self._wanted)

    def _reference_input(self, trainer: pl.Trainer) -> Any:
        if self._reference is not None:
            return self._reference
        assert self.directory is not None
        if self.reference_path and Path(self.reference_path).is_file():
            self._reference = load_reference(self.reference_path)
            return self._reference
        value = self.reference_batch
        if isinstance(value, (str, os.PathLike)):
            value = load_reference(value)
        if value is None:
            value = self._first_input(trainer)
        self.reference_path = str(save_reference(value, self.directory / "reference.safetensors"))
        self._reference = load_reference(self.reference_path)
        return self._reference

    def _first_input(self, trainer: pl.Trainer) -> Any:
        for stage in ("val", "train"):
            batch = first_batch(trainer, stage)
            if batch is not None:
                return self.batch_input(batch)
        raise InvalidArgumentError(
            "ActivationSnapshotCallback found no validation or training batch for its reference input. "
            "Pass reference_batch=torch.tensor(...) (the model input)."
        )

    def _cka(self, current: dict[str, torch.Tensor]) -> dict[str, float]:
        previous = self._previous
        if previous is None and self.snapshots:
            previous = self._previous = _load_activations(self.snapshots[-1], self._wanted)
        if not previous:
            return {}
        return {k: linear_cka(previous[k], v) for k, v in current.items()
                if k in previous and previous[k].shape == v.shape and v.dim() > 0}

    def _log_drift(self, pl_module: pl.LightningModule, snap: Snapshot) -> None:
        if snap.cka:
            pl_module.log_dict({f"drift/cka/{k}": v for k, v in snap.cka.items()}, on_step=True, on_epoch=False,
                               rank_zero_only=True)
            png = plot_drift(self.snapshots, self.directory / "drift.png")
            if png is not None and self._trainer is not None and (trainer := self._trainer()) is not None:
                log_image(trainer.loggers, "lens/drift", png, step=snap.step)

    def _write_index(self) -> None:
        write_index(self.directory, self.snapshots, self.reference_path)

    # -- keeping the list and the files consistent --------------------------------------
    def _keep_last(self) -> None:
        # Dropped snapshots wait in .dropped/ while a checkpoint lists them, so resuming
        # from that checkpoint can still bring them back.
        while self.keep_last and len(self.snapshots) > self.keep_last:
            old = self.snapshots.pop(0)
            target = Path(old.path).parent / DROPPED / old.name
            if Path(old.path).exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(target, ignore_errors=True)
                os.replace(old.path, target)

    def _prune_dropped(self) -> None:
        dropped = self.directory / DROPPED if self.directory is not None else None
        if not self._is_zero or dropped is None or not dropped.is_dir():
            return
        try:
            listed = self._listed_by_checkpoints()
        except CheckpointError as exc:
            rank_zero_warn(f"Keeping every snapshot in {dropped}: a checkpoint that may list them cannot be read ({exc})")
            return
        for path in dropped.iterdir():
            if path.name not in listed:
                shutil.rmtree(path, ignore_errors=True)

    def _listed_by_checkpoints(self) -> set[str]:
        """Names of this directory's snapshots listed by a checkpoint file that still exists."""
        trainer = self._trainer() if self._trainer is not None else None
        folders = {Path(cb.dirpath) for cb in (trainer.checkpoint_callbacks if trainer else []) if cb.dirpath}
        here, names = self.directory.resolve(), set()
        for path in (p for folder in folders if folder.is_dir() for p in folder.glob("*.ckpt")):
            stat = path.stat()
            key = (stat.st_mtime_ns, stat.st_size)
            if self._listed.get(path, (None,))[0] != key:  # each checkpoint file is read once
                self._listed[path] = (key, checkpoint_snapshot_paths(path))
            names |= {Path(p).name for p in self._listed[path][1] if Path(p).parent.resolve() == here}
        return names

    def _run_restore(self, trainer: pl.Trainer) -> None:
        state, self._restored = self._restored, None
        self._previous = None
        if not trainer.is_global_zero or self.directory is None:
            return
        for snap in self.snapshots:
            _bring_back(snap)
        if state["directory"] and Path(state["directory"]).resolve() == self.directory.resolve():
            self._move_aside(trainer.global_step)
        if self.snapshots or self.reference_path:
            self._write_index()

    def _move_aside(self, step: int) -> None:
        listed = {Path(s.path).name for s in self.snapshots}
        later = [p for p in self.directory.iterdir() if p.is_dir() and _SNAPSHOT_DIR.match(p.name) and p.name not in listed]
        if (self.directory / DROPPED).is_dir():  # dropped by keep_last after the checkpoint
            later += [p for p in (self.directory / DROPPED).iterdir()
                      if (match := _SNAPSHOT_DIR.match(p.name)) and int(match[1]) > step]
        if not later:
            return
        aside = _fresh(self.directory / "aside" / f"after-step{step:06d}")
        aside.mkdir(parents=True)
        for path in sorted(later):
            os.replace(path, aside / path.name)
        rank_zero_warn(
            f"Resumed at step {step}: moved {len(later)} snapshot(s) taken after that checkpoint "
            f"({', '.join(sorted(p.name for p in later))}) to {aside}."
        )


def _check_positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidArgumentError(f"{name} must be a positive int or None, got {value!r}. Example: {name}=10.")


def _bring_back(snap: Snapshot) -> None:
    path = Path(snap.path)
    dropped = path.parent / DROPPED / snap.name
    if not path.exists() and dropped.exists():
        os.replace(dropped, path)
    elif not path.exists():
        rank_zero_warn(f"Snapshot {snap.name} listed in the checkpoint is missing from {path.parent}.")


def _fresh(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{n}")
        n += 1
    return candidate


def _named_activations(log: Any, wanted: dict[str, str]) -> dict[str, torch.Tensor]:
    """Saved float activations, named as the user asked (``layer2``) where a module was asked for."""
    out: dict[str, torch.Tensor] = {}
    for layer in log:
        act = layer.activation
        if not isinstance(act, torch.Tensor) or not act.is_floating_point():
            continue
        name = layer.layer_label
        for entry in layer.module_outputs:
            address, _, num = entry.rpartition(":")
            if address in wanted:
                calls = log.modules[address].num_passes
                name = wanted[address] + (f":{num}" if calls > 1 else "")
                break
        out[name] = act.detach().float().cpu()
    return out


def _load_activations(snap: Snapshot, wanted: dict[str, str]) -> dict[str, torch.Tensor] | None:
    if not Path(snap.path).exists():
        return None
    return _named_activations(snap.load(lazy=False), wanted)
