"""ActivationSnapshotCallback: values, files, and consistency with checkpoints on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import lens_train as lt
from lens_train.callbacks import ActivationSnapshotCallback, GraphLoggerCallback, ProbeCallback
from lens_train.errors import InvalidArgumentError
from tests.callbacks.lit_models import LitNet, assert_same_weights, fit, loaders, trainer


def test_snapshot_equals_eval_forward_of_the_reference_batch(tmp_path):
    module = LitNet(batchnorm=True)
    cb = ActivationSnapshotCallback(layers=["layer1", "net.layer2"])
    fit(tmp_path, module, [cb], max_epochs=1)
    (snap,) = lt.load_snapshots(tmp_path)
    assert (snap.epoch, snap.step, snap.index) == (0, 4, 0)
    reference = next(iter(loaders()[1]))[0]  # the first validation batch
    module.eval()
    with torch.no_grad():
        h1 = module.net.layer1(reference)
        h2 = module.net.layer2(h1)
    log = snap.load(lazy=False)
    assert torch.allclose(log["net.layer1"].activation, h1, atol=1e-6)
    assert torch.allclose(log["net.layer2"].activation, h2, atol=1e-6)
    assert Path(cb.reference_path).name == "reference.safetensors"


@pytest.mark.slow
def test_extra_passes_leave_training_untouched(tmp_path):
    torch.manual_seed(0)
    a = LitNet(batchnorm=True, dropout=0.3)
    b = LitNet(batchnorm=True, dropout=0.3)
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    fit(tmp_path / "a", a, [ActivationSnapshotCallback(every_n_steps=1), GraphLoggerCallback(background=False)])
    torch.manual_seed(1)
    fit(tmp_path / "b", b)
    assert_same_weights(a, b)  # buffers (BatchNorm statistics) included


def test_layout_drift_metrics_and_plot(tmp_path):
    cb = ActivationSnapshotCallback(layers=["layer1", "layer2"], every_n_steps=2)
    t = fit(tmp_path, LitNet(), [cb], max_epochs=2)
    snaps = lt.load_snapshots(tmp_path)
    assert [s.name for s in snaps] == [f"epoch{(s - 1) // 4:03d}-step{s:06d}" for s in (2, 4, 6, 8)]
    assert snaps[0].cka == {} and set(snaps[1].cka) == {"layer1", "layer2"}
    a, b = snaps[2].activations(), snaps[3].activations()
    expected = lt.bundle.snapshots.linear_cka(a["relu_2_4"], b["relu_2_4"])
    assert snaps[3].cka["layer2"] == pytest.approx(expected, rel=1e-6)
    assert float(t.logged_metrics["drift/cka/layer2"]) == pytest.approx(expected, rel=1e-5)
    assert (cb.directory / "drift.png").stat().st_size > 0


def test_keep_last_keeps_only_the_newest(tmp_path):
    cb = ActivationSnapshotCallback(layers=["layer1"], every_n_steps=1, keep_last=2)
    fit(tmp_path, LitNet(), [cb], max_epochs=1)
    assert [s.step for s in lt.load_snapshots(tmp_path)] == [3, 4]
    on_disk = sorted(p.name for p in cb.directory.iterdir() if p.name.startswith("epoch"))
    assert on_disk == ["epoch000-step000003", "epoch000-step000004"]


class Crash(pl.Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _run(root: Path, version: int, extra: list, ckpt: str | None = None, max_epochs: int = 3) -> tuple:
    snap = ActivationSnapshotCallback(layers=["layer1", "layer2"], every_n_steps=3)
    probes = ProbeCallback(layers=["layer1"], num_classes=3, lr=0.05)
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=-1, every_n_epochs=1)
    t = trainer(root, [snap, probes, checkpoint, *extra], max_epochs=max_epochs, enable_checkpointing=True,
                logger=CSVLogger(root, name="run", version=version))
    train, val = loaders()
    torch.manual_seed(0)
    module = LitNet()
    t.fit(module, train, val, ckpt_path=ckpt)
    return module, snap, probes


def _assert_same_run(a: tuple, b: tuple) -> None:
    (ma, sa, pa), (mb, sb, pb) = a, b
    assert_same_weights(ma, mb)
    assert [(s.index, s.name) for s in sa.snapshots] == [(s.index, s.name) for s in sb.snapshots]
    for x, y in zip(sa.snapshots, sb.snapshots):
        for layer, value in x.activations().items():
            assert torch.allclose(value, y.activations()[layer], atol=1e-6)
    state_a, state_b = pa.state_dict()["probes"], pb.state_dict()["probes"]
    for k, v in state_a["heads"].items():
        assert torch.allclose(v, state_b["heads"][k], atol=1e-6)
    assert state_a["optimizer"]["state"][0]["step"] == state_b["optimizer"]["state"][0]["step"]


@pytest.mark.slow
def test_resume_after_crash_gives_the_uninterrupted_snapshots_and_probes(tmp_path):
    straight = _run(tmp_path / "straight", 0, [])
    root = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(root, 0, [Crash(at_step=10)])
    snapdir = root / "run" / "version_0" / "snapshots"
    assert [s.step for s in lt.load_snapshots(snapdir)] == [3, 6, 9]  # 9 came after the last checkpoint (step 8)
    assert [s.step for s in lt.load_snapshots(root / "ckpt" / "last.ckpt")] == [3, 6]
    with pytest.warns(UserWarning, match="moved 1 snapshot"):
        resumed = _run(root, 0, [], ckpt=str(root / "ckpt" / "last.ckpt"))
    _assert_same_run(straight, resumed)
    assert [s.step for s in lt.load_snapshots(snapdir)] == [3, 6, 9, 12]
    aside = snapdir / "aside" / "after-step000008"
    assert [p.name for p in aside.iterdir()] == ["epoch002-step000009"]


@pytest.mark.slow
def test_resume_into_a_new_run_dir_points_at_the_earlier_snapshots(tmp_path):
    root = tmp_path / "run"
    with pytest.raises(RuntimeError):
        _run(root, 0, [Crash(at_step=10)])
    resumed = _run(root, 1, [], ckpt=str(root / "ckpt" / "last.ckpt"))
    new_dir = root / "run" / "version_1" / "snapshots"
    old_dir = root / "run" / "version_0" / "snapshots"
    snaps = lt.load_snapshots(new_dir)
    assert [s.step for s in snaps] == [3, 6, 9, 12]
    assert [Path(s.path).parent for s in snaps] == [old_dir, old_dir, new_dir, new_dir]
    index = json.loads((new_dir / "index.json").read_text())
    assert index["snapshots"][0]["path"] == "../../version_0/snapshots/epoch000-step000003"  # same log root
    assert [s.step for s in resumed[1].snapshots] == [3, 6, 9, 12]
    assert [s.index for s in snaps] == [0, 1, 2, 3]


def test_load_snapshots_errors(tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        lt.load_snapshots(tmp_path / "nope")
    with pytest.raises(InvalidArgumentError, match="No snapshot index"):
        lt.load_snapshots(tmp_path)


def test_constructor_validation():
    with pytest.raises(InvalidArgumentError, match="not both"):
        ActivationSnapshotCallback(every_n_epochs=1, every_n_steps=5)
    with pytest.raises(InvalidArgumentError, match="every_n_steps must be a positive int or None, got 0"):
        ActivationSnapshotCallback(every_n_steps=0)
    with pytest.raises(InvalidArgumentError, match="layers must be 'all'"):
        ActivationSnapshotCallback(layers="layer1")


class ListedAtStart(pl.Callback):
    """Which snapshots the callback lists, and whether their files exist, when training (re)starts."""

    def __init__(self, snap: ActivationSnapshotCallback) -> None:
        self.snap, self.seen = snap, []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = [(s.step, Path(s.path).is_dir()) for s in self.snap.snapshots]


def _keep_last_run(root: Path, ckpt: str | None = None) -> tuple[ActivationSnapshotCallback, ListedAtStart]:
    snap = ActivationSnapshotCallback(layers=["layer1"], every_n_steps=1, keep_last=2)
    listed = ListedAtStart(snap)
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    t = trainer(root, [snap, listed, checkpoint], max_epochs=3, enable_checkpointing=True,
                logger=CSVLogger(root, name="run", version=0))
    torch.manual_seed(0)
    t.fit(LitNet(), *loaders(), ckpt_path=ckpt)
    return snap, listed


@pytest.mark.slow
def test_keep_last_resume_from_an_older_checkpoint_finds_its_snapshots(tmp_path):
    snap, _ = _keep_last_run(tmp_path)
    assert [s.step for s in snap.snapshots] == [11, 12]
    # Checkpoints at steps 4 and 8 list [3, 4] and [7, 8]: those wait in .dropped, the rest is gone.
    dropped = snap.directory / ".dropped"
    assert sorted(int(p.name[-6:]) for p in dropped.iterdir()) == [3, 4, 7, 8]
    straight = [(s.name, s.cka) for s in snap.snapshots]
    with pytest.warns(UserWarning, match=r"moved 4 snapshot"):
        resumed, listed = _keep_last_run(tmp_path, ckpt=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"))
    assert listed.seen == [(3, True), (4, True)]
    assert [(s.name, s.cka) for s in resumed.snapshots] == straight
    aside = snap.directory / "aside" / "after-step000004"
    assert sorted(int(p.name[-6:]) for p in aside.iterdir()) == [7, 8, 11, 12]  # the abandoned run's
    assert sorted(int(p.name[-6:]) for p in dropped.iterdir()) == [3, 4, 7, 8]


def test_snapshot_names_have_no_equals_and_old_names_are_still_recognised():
    from lens_train.callbacks.activation_snapshot import _SNAPSHOT_DIR
    from lens_train.bundle.snapshots import snapshot_name

    assert snapshot_name(3, 120) == "epoch003-step000120"
    assert _SNAPSHOT_DIR.match("epoch003-step000120")[1] == _SNAPSHOT_DIR.match("epoch=003-step=000120")[1] == "000120"


def test_load_snapshots_of_an_old_checkpoint_finds_those_keep_last_dropped(tmp_path):
    import shutil

    from lens_train.errors import BundleError

    snap, _ = _keep_last_run(tmp_path)
    old = lt.load_snapshots(tmp_path / "ckpt" / "epoch=0-step=4.ckpt")
    assert [s.step for s in old] == [3, 4] and all("/.dropped/" in s.path for s in old)
    assert old[1].activations().keys() == snap.snapshots[-1].activations().keys()
    shutil.rmtree(old[0].path)  # gone for good
    gone = lt.load_snapshots(tmp_path / "ckpt" / "epoch=0-step=4.ckpt")[0]
    with pytest.raises(BundleError, match=r"no longer on disk.*keep_last"):
        gone.activations()
