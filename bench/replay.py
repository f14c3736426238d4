"""Cost of ``log.replay_with`` against a plain forward pass, and against a full ``lt.intervene``.

Run: .venv/bin/python bench/replay.py [--repeats N]

transformer24 (issue 15's fixed config) in train mode with autograd on, one thread, one
process. A replayable capture is made once; then, interleaved in rounds, a plain forward,
``log.replay_with`` of one edit in the last block, and a full ``lt.intervene`` with the same
edit are timed; medians over rounds. The replayed output is checked against the full
rerun first. Target (issue 16): replay_with <= 0.3x a plain forward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
import lens_train as lt  # noqa: E402
from models import issue15_models  # noqa: E402
from timing import interleaved_times  # noqa: E402

TARGET = 0.3
EDITS = {
    "mlp act, zero": ("blocks.23.mlp.1", "zero"),
    "mlp output, x2": ("blocks.23.mlp", lambda t: t * 2),
    "attn output, mean": ("blocks.23.attn", "mean"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, x = issue15_models()["transformer24"]
    log = lt.log_forward_pass(model, x, random_seed=0, replayable=True)
    print(f"transformer24, train mode, {len(log)} layers; repeats={args.repeats}; torch {torch.__version__}")
    print(f"{'edit':22s} {'plain ms':>9s} {'replay ms':>10s} {'replay x':>9s} {'rerun x':>8s} {'speed-up':>9s}  target")
    for name, (selector, edit) in EDITS.items():
        replayed = log.replay_with({selector: edit})
        full = lt.intervene(model, x, edits={selector: edit}, random_seed=0)
        assert torch.allclose(replayed.output, full.output.detach(), rtol=1e-5, atol=1e-6), name
        times = interleaved_times({"plain": lambda: model(x), "replay": lambda: log.replay_with({selector: edit}),
                                   "rerun": lambda: lt.intervene(model, x, edits={selector: edit}, random_seed=0)},
                                  args.repeats)
        plain, replay, rerun = (statistics.median(times[k]) for k in ("plain", "replay", "rerun"))
        verdict = "OK" if replay / plain <= TARGET else "MISS"
        print(f"{name:22s} {plain * 1e3:9.2f} {replay * 1e3:10.2f} {replay / plain:9.2f} {rerun / plain:8.2f} "
              f"{rerun / replay:8.1f}x  <={TARGET} {verdict}")


if __name__ == "__main__":
    main()
