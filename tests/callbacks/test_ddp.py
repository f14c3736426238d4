"""DDP on CPU (two processes, gloo): no deadlock, rank 0 alone writes, weights as hand-written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lens_train as lt
from tests.multiprocess import run_script

SCRIPT = Path(__file__).with_name("ddp_run.py")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ddp_aux_probes_snapshots(tmp_path):
    # strategy="ddp" re-runs the launching script once per rank, so it runs as a script,
    # not inside pytest's process.
    tmp_path = run_script(SCRIPT, tmp_path, timeout=280)
    result = torch.load(tmp_path / "weights.pt", weights_only=True)
    for key, value in result["hand"].items():
        if key.startswith("net."):
            assert torch.allclose(result["lens"][key], value, atol=1e-5), key
    assert torch.allclose(result["head"]["terms.0.head.weight"], result["hand"]["aux_head.weight"], atol=1e-5)
    assert result["probes_equal"]
    steps = [s.step for s in lt.load_snapshots(tmp_path / "lens")]
    assert steps == result["snapshots"] == result["rank1_snapshots"] == list(range(1, 5))
