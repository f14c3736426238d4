"""Every callback on one module: one tap capture per step, and the aux loss still exact."""

from __future__ import annotations

import torch

import lens_train as lt
from lens_train.callbacks import (
    ActivationSnapshotCallback,
    ActivationStatsCallback,
    AuxiliaryLossCallback,
    DistillationCallback,
    GraphLoggerCallback,
    ProbeCallback,
)
from lens_train.callbacks import _session
from tests.callbacks.lit_models import LitNet, Net, fit


def test_all_callbacks_share_one_capture(tmp_path, monkeypatch):
    built = []
    real = _session.Taps

    def counting(*args, **kwargs):
        taps = real(*args, **kwargs)
        built.append(taps)
        return taps

    monkeypatch.setattr(_session, "Taps", counting)
    teacher = Net()
    callbacks = [
        AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)}, weight=0.3),
        DistillationCallback(teacher, pairs={"layer2": "layer2"}),
        ProbeCallback(layers=["layer1", "layer2"], num_classes=3),
        ActivationStatsCallback(["layer1", "head"], every_n_steps=2),
        ActivationSnapshotCallback(layers=["layer2"], every_n_epochs=1),
        GraphLoggerCallback(every_n_epochs=1),
    ]
    module = LitNet()
    t = fit(tmp_path, module, callbacks, max_epochs=2)
    assert len(built) == 1
    assert [str(k) for k in built[0].keys()] == ["layer1", "layer2", "head"]
    logged = set(t.logged_metrics)
    assert {"aux/layer1", "distill/layer2", "probe/layer1/val_acc", "val/aux/layer1", "lens/total_loss"} <= logged
    assert len(lt.load_snapshots(tmp_path)) == 2
    assert "training_step" not in module.__dict__
    assert not any(m._forward_hooks for m in module.modules())
    assert torch.isfinite(t.logged_metrics["lens/total_loss"])


def test_no_lens_work_during_the_sanity_check(tmp_path):
    calls = []
    cb = AuxiliaryLossCallback({"layer1": lt.losses.l1_activity()})
    original = cb.eval_step
    cb.eval_step = lambda ctx: calls.append(ctx.trainer.sanity_checking) or original(ctx)  # type: ignore[method-assign]
    fit(tmp_path, LitNet(), [cb], max_epochs=1, num_sanity_val_steps=2)
    assert calls and not any(calls)
