"""fastlog overhead and memory.

Run: .venv/bin/python bench/fastlog.py [--repeats N] [--rollouts N]

1. Keeping the 4 ReLU outputs of the 4-block transformer (train mode, autograd on)
   vs a plain forward (target: within 2x).
2. 1000 rollouts of a small policy network recorded to disk: memory must stay flat
   (live Python heap growth over the second half of the rollouts, measured with tracemalloc).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lens_train as lt  # noqa: E402
from models import Encoder  # noqa: E402
from timing import interleaved  # noqa: E402


def bench_transformer(repeats: int) -> None:
    torch.manual_seed(0)
    model, x = Encoder(64, 4), torch.randn(8, 32, 64)
    keep = lambda ctx: ctx.kind == "op" and ctx.layer_type == "relu"  # noqa: E731
    rec = lt.fastlog.record(model, x, keep_op=keep)
    assert len(rec) == 4, rec.labels
    events = len(lt.fastlog.dry_run(model, x))
    recorder = lt.fastlog.Recorder(model, keep_op=keep)

    def in_recorder() -> None:
        with recorder:
            model(x)

    for _ in range(3):
        model(x), lt.fastlog.record(model, x, keep_op=keep)
    t = interleaved({"plain": lambda: model(x), "record": lambda: lt.fastlog.record(model, x, keep_op=keep),
                     "recorder": in_recorder}, repeats)
    ratio = t["record"] / t["plain"]
    print(f"transformer4 (d=64), {events} events, keep 4 ReLUs: plain {t['plain'] * 1e3:.2f} ms, "
          f"record {t['record'] * 1e3:.2f} ms ({ratio:.2f}x), inside a Recorder {t['recorder'] / t['plain']:.2f}x "
          f"(target <= 2x) {'OK' if ratio <= 2 else 'MISS'}")


def bench_rollouts(n: int) -> None:
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))
    keep = lambda ctx: ctx.kind == "module" and ctx.module_class in ("Tanh", "Linear")  # noqa: E731
    with tempfile.TemporaryDirectory() as d:
        tracemalloc.start()
        marks = {}
        t0 = time.perf_counter()
        with lt.fastlog.Recorder(policy, keep_op=keep, storage="disk", path=d) as recorder:
            obs = torch.randn(1, 16)
            for i in range(n):
                action = policy(obs)
                obs = torch.tanh(obs + 0.1 * action.detach().sum())  # the environment step
                if i + 1 in (n // 2, n):
                    gc.collect()  # count live memory only, not cyclic garbage awaiting a collection
                    marks[i + 1] = tracemalloc.get_traced_memory()[0]
        elapsed = time.perf_counter() - t0
        tracemalloc.stop()
        rec = lt.fastlog.recover(d)
        growth = marks[n] - marks[n // 2]
        print(f"{n} policy rollouts to disk: {elapsed / n * 1e3:.2f} ms/rollout, {len(rec.rollouts)} committed, "
              f"live Python heap at rollout {n // 2}: {marks[n // 2] / 1024:.0f} KB, at {n}: {marks[n] / 1024:.0f} KB "
              f"(growth {growth / 1024:.1f} KB, target < 32 KB) {'OK' if growth < 32 * 1024 else 'MISS'}")
        assert len(rec.rollouts) == n and not rec.lost
        assert torch.equal(rec[n - 1]["4:1"], rec[n - 1]["4:1"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rollouts", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    bench_transformer(args.repeats)
    bench_rollouts(args.rollouts)


if __name__ == "__main__":
    main()
