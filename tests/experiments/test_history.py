"""MetricsHistory against what a real Trainer logged."""

import csv

import lightning as L
import pytest

from lens_train.experiments import Classifier, DigitsMLP, MetricsHistory, SyntheticDataModule


def test_history_matches_the_csv_logger(tmp_path) -> None:
    history = MetricsHistory()
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="")
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, callbacks=[history], logger=logger, log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Classifier(DigitsMLP(hidden=[8, 8])), SyntheticDataModule(num_samples=200, batch_size=16))
    assert [r["epoch"] for r in history.epochs] == [0.0, 1.0]
    assert [r["step"] for r in history.steps] == [1, 2, 3, 4, 5, 6]
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    step_losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert history.series("train/loss", per="step")[1] == pytest.approx(step_losses)
    val_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert history.series("val/acc")[1] == pytest.approx(val_acc)
    assert "train/loss" in history.keys() and "train/loss_epoch" not in history.keys()
    assert history.last()["epoch"] == 1.0
