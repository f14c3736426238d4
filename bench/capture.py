"""Capture overhead: log_forward_pass vs a plain forward, side by side in one process.

Run: .venv/bin/python bench/capture.py [--repeats N]
Models run in their default train mode with autograd on, as during training.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lens_train as lt  # noqa: E402
from models import bench_models, structure_models  # noqa: E402
from timing import interleaved  # noqa: E402

from lens_train.capture.api import record_forward  # noqa: E402
from lens_train.capture.build import build_log  # noqa: E402
from lens_train.capture.recorder import CapturePlan  # noqa: E402

TARGETS = {"transformer4 (d=64)": 3.0, "cnn5": 1.5, "lstm3x20": 4.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"{'model':24s} {'ops':>6s} {'plain ms':>9s} {'all x':>7s} {'meta x':>7s} {'us/op':>7s} target")
    per_op = {}
    for name, (model, x) in bench_models().items():
        log = lt.log_forward_pass(model, x, layers_to_save=None, random_seed=0)
        n = len(log)
        for _ in range(2):
            model(x), lt.log_forward_pass(model, x, random_seed=0)
        t = interleaved({
            "plain": lambda: model(x),
            "all": lambda: lt.log_forward_pass(model, x, layers_to_save="all", random_seed=0),
            "meta": lambda: lt.log_forward_pass(model, x, layers_to_save=None, random_seed=0),
        }, args.repeats)
        per_op[name] = (t["all"] - t["plain"]) / n * 1e6
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target}x {'OK' if t['all'] / t['plain'] <= target else 'MISS'}"
        print(f"{name:24s} {n:6d} {t['plain'] * 1e3:9.2f} {t['all'] / t['plain']:7.2f} {t['meta'] / t['plain']:7.2f} {per_op[name]:7.1f} {verdict}")
    ratio = per_op["transformer24 (d=32)"] / per_op["transformer4 (d=64)"]
    print(f"per-op capture cost, 24-block vs 4-block: {ratio:.2f}x (target <= 1.3x) {'OK' if ratio <= 1.3 else 'MISS'}")
    post_processing(args.repeats)
    validation_time(args.repeats)


def post_processing(repeats: int) -> None:
    """Time of turning raw records into a log (labels, passes, structure), per op: must stay flat."""
    print(f"\n{'post-processing':24s} {'ops':>6s} {'ms':>9s} {'us/op':>7s} {'passes':>7s}")
    for name, (model, x) in structure_models().items():
        plan = CapturePlan(save="none")
        recorder, _, _ = record_forward(model, x, None, plan, 0)
        times = []
        gc.disable()  # as in a real capture
        try:
            for _ in range(max(3, repeats // 3)):
                t0 = time.perf_counter()
                log = build_log(recorder, model, {})
                times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
        best, n = min(times), len(recorder.records)
        print(f"{name:24s} {n:6d} {best * 1e3:9.2f} {best / n * 1e6:7.2f} {log.structure['max_passes']:7d}")


def validation_time(repeats: int) -> None:
    """lt.validate_model_activations on the 4-block transformer (target: well under a second)."""
    model, x = bench_models()["transformer4 (d=64)"]
    lt.validate_model_activations(model, x, random_seed=0)
    times = []
    for _ in range(max(3, repeats // 3)):
        t0 = time.perf_counter()
        ok = lt.validate_model_activations(model, x, random_seed=0)
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    print(f"\nvalidate_model_activations, transformer4 (d=64): {t:.3f}s, valid={ok} (target < 1 s) {'OK' if t < 1 else 'MISS'}")


if __name__ == "__main__":
    main()
