"""Time drawing a ~5000-operation model: capture, DOT generation, and rendering.

Run: ``.venv/bin/python bench/render.py [--blocks 1000] [--format svg] [--out /tmp/render_bench]``.
Each block runs 5 ops (linear, gelu, linear, add, layer_norm) inside two nested
modules, so the default 1000 blocks give about 5000 operations and 2000 clusters.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

import lens_train as lt
from lens_train.viz.render import pick_binary

T = TypeVar("T")


class Block(nn.Module):
    """x + mlp(x), then LayerNorm."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.mlp(x))


class Deep(nn.Module):
    """``blocks`` residual blocks with distinct weights."""

    def __init__(self, blocks: int, d: int = 4) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(Block(d) for _ in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def _timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1000)
    parser.add_argument("--format", default="svg")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "lens_train_render_bench"))
    parser.add_argument("--skip-full", action="store_true", help="only time the collapsed and focused views")
    args = parser.parse_args()
    model = Deep(args.blocks)
    log, t_capture = _timed(lt.log_forward_pass, model, torch.randn(2, 4), layers_to_save=None)
    print(f"model: {log.num_operations} operations, {len(log)} tensors, {len(log.modules)} modules; "
          f"renderer: {pick_binary(args.format).kind}")
    print(f"capture (metadata only):        {t_capture:7.2f} s")
    views = [("nesting depth 1", {"vis_nesting_depth": 1}), ("nesting depth 2", {"vis_nesting_depth": 2}),
             ("module focus blocks.7", {"vis_module": "blocks.7"})]
    if not args.skip_full:
        views.insert(0, ("full unrolled", {}))
    for name, kw in views:
        source, t_dot = _timed(log.to_dot, **kw)
        path, t_render = _timed(log.render_graph, vis_outpath=os.path.join(args.out, name.replace(" ", "_")),
                                vis_fileformat=args.format, vis_save_only=True, **kw)
        print(f"{name:24s} DOT {t_dot:6.2f} s ({len(source) / 1e6:.1f} MB), render {t_render:7.2f} s -> {path}")


if __name__ == "__main__":
    main()
