"""Pictures go to every Lightning logger that takes images: TensorBoard, W&B, MLflow (and files)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.loggers import Logger
from matplotlib.figure import Figure

from lens_train.callbacks import ActivationSnapshotCallback, GraphLoggerCallback
from lens_train.callbacks._images import accepts_images, log_image, read_png
from tests.callbacks.lit_models import LitNet, fit


def _png(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    Figure(figsize=(2, 1)).savefig(path, dpi=20)
    return path


class _Quiet(Logger):
    """A Lightning logger that records nothing (the fakes add the image API under test)."""

    name, version = "fake", 0

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        return None

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


class FakeWandb(_Quiet):
    """The part of ``WandbLogger`` that images use."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict[str, Any]] = []

    def log_image(self, key: str, images: list, step: int | None = None, **kwargs: Any) -> None:
        self.calls.append({"key": key, "images": images, "step": step})


class FakeMlflow(_Quiet):
    """The part of ``MLFlowLogger`` that images use: a run id and a client with ``log_artifact``."""

    run_id = "run-1"

    def __init__(self) -> None:
        super().__init__()
        self.artifacts: list[tuple[str, str, str | None]] = []
        outer = self

        class Client:
            def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
                outer.artifacts.append((run_id, local_path, artifact_path))

        self._client = Client()

    @property
    def experiment(self) -> Any:
        return self._client


def test_each_logger_kind_gets_the_image_its_way(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    png = _png(tmp_path)
    wandb, mlflow = FakeWandb(), FakeMlflow()
    board = TensorBoardLogger(tmp_path, name="tb")
    used = log_image([CSVLogger(tmp_path), wandb, mlflow, board], "lens/drift", png, step=7)
    assert used == ["FakeWandb", "FakeMlflow", "TensorBoardLogger"]
    assert wandb.calls == [{"key": "lens/drift", "images": [str(png)], "step": 7}]
    assert mlflow.artifacts == [("run-1", str(png), "lens")]
    assert not accepts_images(CSVLogger(tmp_path)) and accepts_images(board)
    assert read_png(png).shape == (20, 40, 3)


def _events(directory: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory), size_guidance={"images": 0})
    events.Reload()
    return events


def test_graph_and_drift_reach_tensorboard_wandb_and_mlflow_fakes(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    wandb, mlflow = FakeWandb(), FakeMlflow()
    board = TensorBoardLogger(tmp_path, name="tb")
    callbacks = [GraphLoggerCallback(every_n_epochs=1, background=False),
                 ActivationSnapshotCallback(layers=["layer1"], every_n_epochs=1)]
    fit(tmp_path, LitNet(), callbacks, max_epochs=2, logger=[board, wandb, mlflow])
    events = _events(tmp_path / "tb" / "version_0")
    assert len(events.Images("lens/graph")) == 3 and len(events.Images("lens/drift")) == 1
    assert [c["key"] for c in wandb.calls] == ["lens/graph", "lens/graph", "lens/drift", "lens/graph"]
    assert [Path(a[1]).name for a in mlflow.artifacts] == ["step000000.png", "epoch000.png", "drift.png", "epoch001.png"]
    assert all(Path(a[1]).is_file() for a in mlflow.artifacts)


@pytest.mark.slow
def test_wandb_offline_run_holds_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="lens-train-test")
    fit(tmp_path, LitNet(), [GraphLoggerCallback(every_n_epochs=0, background=False)], max_epochs=1, logger=logger)
    logger.experiment.finish()
    images = list((tmp_path / "wandb").glob("offline-run-*/files/media/images/lens/graph_*.png"))
    assert len(images) == 1 and images[0].stat().st_size > 1000


@pytest.mark.slow
def test_mlflow_local_store_holds_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database; a folder is enough here
    logger = MLFlowLogger(experiment_name="images", tracking_uri=f"file:{tmp_path / 'mlruns'}")
    fit(tmp_path, LitNet(), [GraphLoggerCallback(every_n_epochs=0, background=False)], max_epochs=1, logger=logger)
    stored = list((tmp_path / "mlruns").rglob("artifacts/lens/step000000.png"))
    assert len(stored) == 1 and stored[0].stat().st_size > 1000
