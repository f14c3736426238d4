"""A faster engine must not change what a capture says: every zoo model's output, part by part.

The stored digests (``data/zoo_digest.json``) were made by the engine before the speed work
of issue 15; see ``output_digest.py`` for what each part covers and how to regenerate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .output_digest import zoo_digests

STORED = json.loads((Path(__file__).parent / "data" / "zoo_digest.json").read_text())


@pytest.mark.parametrize("chunk", range(4))
def test_capture_output_is_unchanged(chunk: int) -> None:
    names = sorted(STORED)[chunk::4]
    got = zoo_digests(names)
    changed = [f"{name}.{part}" for name in names for part, h in STORED[name].items() if got[name].get(part) != h]
    assert not changed, f"capture output changed for {changed[:20]} ({len(changed)} parts)"


def test_every_zoo_model_is_covered() -> None:
    from tests.zoo import ZOO

    assert set(ZOO) <= set(STORED)


def test_hooked_modules_give_the_same_output_as_wrapped_ones() -> None:
    # a global module hook makes every module take the hook path: its log must equal the stored one
    from torch import nn

    names = sorted(STORED)[::5]
    handle = nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)
    try:
        got = zoo_digests(names)
    finally:
        handle.remove()
    changed = [f"{name}.{part}" for name in names for part, h in STORED[name].items() if got[name].get(part) != h]
    assert not changed, f"capture output changed on the hook path for {changed[:20]} ({len(changed)} parts)"
