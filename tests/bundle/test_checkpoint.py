"""lens_train.bundle.checkpoint: checkpoints are read without running a line of code from them."""

from __future__ import annotations

import io
import os
import types
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

import lens_train as lt
from lens_train.bundle.checkpoint import SafeCheckpointIO, Unloaded, read_checkpoint
from lens_train.bundle.snapshots import Snapshot, checkpoint_snapshot_paths
from lens_train.callbacks import ActivationSnapshotCallback
from lens_train.errors import CheckpointError, ConfigError


class _Reduce:
    """Pickles as ``fn(*args)``: what a crafted checkpoint asks the unpickler to call."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple:
        return self.fn, self.args


def _payloads(marker: Path) -> dict[str, Any]:
    """Objects whose unpickling would write ``marker`` if anything they name were called."""
    nested = io.BytesIO()
    torch.save({"x": _Reduce(os.system, f"touch {marker}")}, nested)
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "exec": _Reduce(exec, f"open({str(marker)!r}, 'w').write('ran')"),
        "eval": _Reduce(eval, f"open({str(marker)!r}, 'w').write('ran')"),
        "nested torch.load": _Reduce(torch.storage._load_from_bytes, nested.getvalue()),
        "tensor rebuild calling os.system": _Reduce(torch._tensor._rebuild_from_type_v2, os.system, torch.Tensor,
                                                    (f"touch {marker}",), {}),
    }


def _checkpoint(path: Path, hyper_parameters: Any, snapshot_paths: list[str] = ()) -> Path:
    entries = [Snapshot(i, Path(p).name, 0, i, p).to_json() for i, p in enumerate(snapshot_paths)]
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "hyper_parameters": hyper_parameters,
                "callbacks": {"ActivationSnapshotCallback{'layers': 'all'}": {"snapshots": entries}}}, path)
    return path


@pytest.mark.parametrize("kind", list(_payloads(Path("unused"))))
def test_a_malicious_checkpoint_executes_nothing(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "marker"
    ckpt = _checkpoint(tmp_path / "evil.ckpt", {"cfg": _payloads(marker)[kind]}, [str(tmp_path / "epoch=000-step=000001")])
    readers = {
        "read_checkpoint": lambda: read_checkpoint(ckpt)["state_dict"]["w"].tolist(),
        "SafeCheckpointIO": lambda: SafeCheckpointIO().load_checkpoint(ckpt)["state_dict"]["w"].tolist(),
        "load_snapshots": lambda: [s.step for s in lt.load_snapshots(ckpt)],
        "checkpoint_snapshot_paths": lambda: sorted(checkpoint_snapshot_paths(ckpt)),
    }
    got = {name: read() for name, read in readers.items()}
    assert not marker.exists(), f"{kind}: unpickling ran code"
    assert got == {"read_checkpoint": [0.0, 1.0, 2.0], "SafeCheckpointIO": [0.0, 1.0, 2.0], "load_snapshots": [0],
                   "checkpoint_snapshot_paths": [str(tmp_path / "epoch=000-step=000001")]}
    assert isinstance(read_checkpoint(ckpt)["hyper_parameters"]["cfg"], Unloaded)


def test_hydra_config_hyper_parameters_become_placeholders(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"lr": 0.1, "layers": [1, 2]})
    ckpt = _checkpoint(tmp_path / "hydra.ckpt", cfg, [str(tmp_path / "epoch=000-step=000002")])
    with pytest.raises(Exception):  # what the plain safe loader does with it
        torch.load(ckpt, weights_only=True)
    loaded = read_checkpoint(ckpt)
    assert isinstance(loaded["hyper_parameters"], Unloaded) and "DictConfig" in loaded["hyper_parameters"].global_name
    assert [s.step for s in lt.load_snapshots(ckpt)] == [0]


def test_parameters_and_tensor_subclass_state_load(tmp_path: Path) -> None:
    p = torch.nn.Parameter(torch.ones(2, 2))
    sparse = torch.eye(3).to_sparse()
    torch.save({"p": p, "sparse": sparse, "sizes": torch.Size([2, 3]), "dtype": torch.bfloat16, "s": {1, 2}}, tmp_path / "x.pt")
    got = read_checkpoint(tmp_path / "x.pt")
    assert isinstance(got["p"], torch.nn.Parameter) and torch.equal(got["p"], p)
    assert torch.equal(got["sparse"].to_dense(), torch.eye(3))
    assert (got["sizes"], got["dtype"], got["s"]) == (torch.Size([2, 3]), torch.bfloat16, {1, 2})


@pytest.mark.parametrize("content", [b"not a checkpoint", b"PK\x03\x04 cut zip", None])
def test_unreadable_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "bad.ckpt"
    if content is not None:
        path.write_bytes(content)
    for read in (read_checkpoint, lt.load_snapshots, checkpoint_snapshot_paths):
        with pytest.raises((CheckpointError, lt.errors.InvalidArgumentError), match="bad.ckpt"):
            read(path)


def test_a_broken_pickle_inside_a_valid_zip_is_a_checkpoint_error(tmp_path: Path) -> None:
    import zipfile

    good = _checkpoint(tmp_path / "good.ckpt", {})
    bad = tmp_path / "bad.ckpt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 2] if item.filename.endswith("data.pkl") else data)
    with pytest.raises(CheckpointError, match="bad.ckpt.*cannot be read"):
        read_checkpoint(bad)


def test_trust_unpickles_in_full_and_warns(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path / "mine.ckpt", {"when": types.SimpleNamespace(a=1)})
    with pytest.warns(UserWarning, match="can run any code"):
        loaded = read_checkpoint(ckpt, trust=True)
    assert loaded["hyper_parameters"]["when"].a == 1


class _FakeTrainer:
    checkpoint_callbacks: list[Any]


def test_snapshot_pruning_keeps_everything_when_a_checkpoint_is_unreadable(tmp_path: Path) -> None:
    cb = ActivationSnapshotCallback(layers="all")
    cb.directory = tmp_path / "snapshots"
    dropped = cb.directory / ".dropped" / "epoch=000-step=000001"
    dropped.mkdir(parents=True)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "last.ckpt").write_bytes(b"garbage")
    trainer = _FakeTrainer()
    trainer.checkpoint_callbacks = [types.SimpleNamespace(dirpath=str(tmp_path / "ckpt"))]
    cb._trainer = weakref.ref(trainer)
    with pytest.warns(UserWarning, match="Keeping every snapshot.*last.ckpt"):
        cb._prune_dropped()
    assert dropped.is_dir()


# -- the lens-train command -----------------------------------------------------------------
def _teacher_cfg(trust: bool = False, channels: tuple[int, ...] = (4, 8, 16)) -> Any:
    return OmegaConf.create({"trust_checkpoint": trust, "model": {
        "_target_": "lens_train.experiments.Classifier", "num_classes": 10,
        "net": {"_target_": "lens_train.experiments.DigitsCNN", "channels": list(channels), "num_classes": 10}}})


def _teacher_checkpoint(path: Path, marker: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    from hydra.utils import instantiate

    teacher = instantiate(_teacher_cfg().model)
    torch.save({"state_dict": teacher.state_dict(), "hyper_parameters": {"net": _Reduce(os.system, f"touch {marker}")}}, path)
    return path, teacher.state_dict()


def test_the_teacher_checkpoint_gives_weights_and_runs_nothing(tmp_path: Path) -> None:
    from lens_train.experiments.run import load_teacher

    marker = tmp_path / "marker"
    path, weights = _teacher_checkpoint(tmp_path / "teacher.ckpt", marker)
    teacher = load_teacher(_teacher_cfg(), path)
    assert not marker.exists()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in weights.items())
    with pytest.raises(ConfigError, match="do not fit teacher.model.*trust_checkpoint=true"):
        load_teacher(_teacher_cfg(channels=(8, 8, 8)), path)


def test_trust_checkpoint_true_warns_before_a_full_unpickle(tmp_path: Path) -> None:
    from lens_train.experiments.run import load_teacher

    path, _ = _teacher_checkpoint(tmp_path / "teacher.ckpt", tmp_path / "marker")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(Exception):  # Lightning unpickles it: the call in the file is made
            with pytest.warns(UserWarning, match="trust_checkpoint=true: unpickling"):
                load_teacher(_teacher_cfg(trust=True), path)
    assert (tmp_path / "marker").exists()  # what the opt-in means, hence the warning


def test_trainers_of_the_command_read_checkpoints_safely(tmp_path: Path) -> None:
    from lens_train.experiments.run import make_trainer

    cfg = OmegaConf.create({"trainer": {"_target_": "lightning.Trainer", "max_epochs": 1, "accelerator": "cpu"}})
    trainer = make_trainer(cfg, tmp_path, [])
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_nothing_else_in_the_package_unpickles_or_evaluates() -> None:
    """torch.load, pickle loading, eval, exec and yaml.load appear only in the restricted reader."""
    import re

    root = Path(lt.__file__).parent
    unsafe = re.compile(r"torch\.load\(|pickle\.loads?\(|(?<![.\w])eval\(|(?<![.\w])exec\(|yaml\.(unsafe_)?load\(|Unpickler\(")
    found = {str(p.relative_to(root)): [line.strip() for line in p.read_text().splitlines() if unsafe.search(line)]
             for p in root.rglob("*.py")}
    found = {k: v for k, v in found.items() if v}
    assert set(found) == {"bundle/checkpoint.py"}, found
    code = [line for line in found["bundle/checkpoint.py"] if "``" not in line and not line.startswith(">>>")]
    assert code == ["class _RestrictedUnpickler(pickle.Unpickler):", "return _RestrictedUnpickler(file, **kwargs).load()",
                    'ckpt = torch.load(file, map_location="cpu", weights_only=False, mmap=mmap,'], code  # restricted module
