"""ActivationStatsCallback: statistics equal to those computed from forward/backward hooks."""

from __future__ import annotations

import csv
from typing import Any

import pytest
import torch

from lens_train.callbacks import ActivationStatsCallback
from lens_train.callbacks.activation_stats import activation_stats, dead_fraction
from lens_train.errors import InvalidArgumentError
from tests.callbacks.lit_models import LitNet, fit


def test_logged_stats_equal_hook_values(tmp_path):
    module = LitNet()
    seen: dict[int, dict[str, torch.Tensor]] = {}
    step = {"n": 0}

    def keep(_m: Any, _i: Any, out: torch.Tensor) -> None:
        seen.setdefault(step["n"], {})["act"] = out.detach().clone()
        out.register_hook(lambda g: seen[step["n"]].__setitem__("grad", g.detach().clone()))

    module.net.layer2.register_forward_hook(keep)

    class Count(__import__("lightning.pytorch").pytorch.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            step["n"] = trainer.global_step

    cb = ActivationStatsCallback(["layer2"], every_n_steps=3, save_gradients=True)
    fit(tmp_path, module, [cb, Count()], max_epochs=2, val_check_interval=1.0, limit_val_batches=0)
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    by_step: dict[int, dict[str, str]] = {}
    for r in rows:  # activation and gradient statistics are logged at the same step, maybe in two rows
        if any(k.startswith("stats/") and v for k, v in r.items()):
            by_step.setdefault(int(r["step"]), {}).update({k: v for k, v in r.items() if v})
    assert sorted(by_step) == [0, 3, 6]
    for s, row in by_step.items():
        expected = activation_stats(seen[s]["act"])
        for stat, value in expected.items():
            assert float(row[f"stats/layer2/{stat}"]) == pytest.approx(value, rel=1e-5, abs=1e-7)
        assert float(row["stats/layer2/grad_norm"]) == pytest.approx(activation_stats(seen[s]["grad"])["norm"], rel=1e-5)


def test_dead_fraction_counts_units_dead_on_every_example():
    t = torch.tensor([[0.0, 1.0, -2.0, 0.0], [0.0, 0.0, -1.0, 3.0]])
    assert float(dead_fraction(t)) == 0.5


def test_unknown_stat_names_the_closest():
    with pytest.raises(InvalidArgumentError, match="'dead_fraction'"):
        ActivationStatsCallback(["layer1"], stats=("dead_frac",))
    with pytest.raises(InvalidArgumentError, match="every_n_steps must be a positive int, got 0"):
        ActivationStatsCallback(["layer1"], every_n_steps=0)


def test_stats_reach_callback_metrics_and_early_stopping(tmp_path):
    # EarlyStopping and ModelCheckpoint read trainer.callback_metrics; stats/* must be there.
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    module = LitNet()
    cb = ActivationStatsCallback(["layer2"], every_n_steps=1, stats=("mean", "norm"))
    stop = EarlyStopping(monitor="stats/layer2/norm", mode="max", patience=0, stopping_threshold=0.0,
                         check_on_train_epoch_end=True)
    best = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="stats/layer2/mean", mode="max")
    trainer = fit(tmp_path, module, [cb, stop, best], max_epochs=5, limit_val_batches=0, enable_checkpointing=True)
    assert {"stats/layer2/mean", "stats/layer2/norm"} <= set(trainer.callback_metrics)
    assert trainer.current_epoch == 1  # the norm is above the threshold: stopped after the first epoch
    assert best.best_model_path and best.best_model_score is not None
