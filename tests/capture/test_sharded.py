"""Capture under torch's FSDP2 (``fully_shard``), two CPU processes over gloo."""

import json
from pathlib import Path

import pytest

from tests.multiprocess import run_script

SCRIPT = Path(__file__).with_name("fsdp_capture_run.py")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_labels_match_before_and_after_fully_shard(tmp_path):
    out = run_script(SCRIPT, tmp_path, timeout=240)
    result = json.loads((out / "result.json").read_text())
    assert result["after"] == result["before"]  # FSDP's all-gathers and views take no number
    assert result["sharding_ops"] > 0
    assert result["same_output"] and result["same_values"]
