"""Sharded training on CPU (two gloo processes): FSDP2's fully_shard and Lightning's ModelParallelStrategy."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.multiprocess import run_script


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_taps_and_auxiliary_loss_on_a_fully_sharded_model_equal_forward_hooks(tmp_path):
    out = run_script(Path(__file__).with_name("fsdp_taps_run.py"), tmp_path, timeout=180)
    for rank in (0, 1):
        result = torch.load(out / f"rank{rank}.pt", weights_only=True)
        assert len(result["taps"]) == len(result["hooks"]) == 6
        for through_taps, through_hooks in zip(result["taps"], result["hooks"]):
            assert torch.allclose(through_taps, through_hooks, atol=1e-6)
        assert torch.allclose(result["taps_head"], result["hooks_head"], atol=1e-6)
        assert result["probe_acc"] > 0.9  # probes trained on the sharded model's taps


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_lens_callbacks_run_under_model_parallel_strategy(tmp_path):
    out = run_script(Path(__file__).with_name("fsdp_lightning_run.py"), tmp_path, timeout=240)
    result = torch.load(out / "result.pt", weights_only=True)
    metrics = result["metrics"]
    for key in ("aux/layer1", "val/aux/layer1/acc", "distill/layer2", "stats/layer1/norm",
                "probe/layer2/train_acc", "probe/layer2/val_loss", "lens/total_loss"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert result["head_trained"]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_rank_zero_snapshots_refuse_a_sharded_model_instead_of_hanging(tmp_path):
    out = run_script(Path(__file__).with_name("fsdp_lightning_run.py"), tmp_path, "snapshots", timeout=240)
    text = (out / "error.txt").read_text()
    assert "ActivationSnapshotCallback runs an extra forward pass on rank zero alone" in text
    assert not (out / "result.pt").exists()
