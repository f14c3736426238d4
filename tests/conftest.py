"""Shared pytest configuration."""

import os
import sys
from pathlib import Path

# The Hugging Face architectures of the test suite are built from configs with random weights:
# nothing may be downloaded (set before transformers is first imported).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

# The suite's tensors are tiny: with several intra-op threads on a busy 2-core machine, OpenMP
# spin-waiting made forward/backward passes 10-50x slower than on one thread.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
