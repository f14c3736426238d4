"""Bundle speed: lt.save / lt.load against safetensors on the same tensors, and lazy opening.

Run: .venv/bin/python bench/bundle.py [--mb 500] [--layers 5000] [--repeats 3] [--dir /tmp]

Compares, on one log of about ``--mb`` MB of float32/bfloat16 activations:
- ``lt.save`` (checksums, fsync, atomic rename) against ``safetensors.torch.save_file``
  of the same tensors, with and without an fsync of its file;
- ``lt.load`` (eager: reads and verifies every byte) against ``load_file`` followed by
  reading every byte (``clone`` of each tensor; a bare ``load_file`` only memory-maps);
and the time ``lt.load(path, lazy=True)`` takes on a bundle of ``--layers`` layers.
Targets: save and load within 1.3x of safetensors; lazy open well under a second.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import lens_train as lt  # noqa: E402
from lens_train.bundle.metadata import tensor_key  # noqa: E402


class Chain(nn.Module):
    """``n`` elementwise ops on one large tensor (every other one in bfloat16)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            x = (x * 1.001) if i % 4 else (x.bfloat16() * 1.001).float()
        return x


def big_log(mb: int) -> lt.ModelLog:
    per_tensor = 4 << 20
    x = torch.randn(per_tensor // 4)
    return lt.log_forward_pass(Chain(max(1, mb * (1 << 20) // per_tensor * 4 // 5)), x, random_seed=0)


def unique_tensors(log: lt.ModelLog) -> dict[str, torch.Tensor]:
    seen, out = set(), {}
    for layer in log:
        t = layer.activation
        if t is not None and tensor_key(t) not in seen:
            seen.add(tensor_key(t))
            out[layer.layer_label] = t
    return out


def timed(fn) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def fresh(path: str) -> str:
    """Remove ``path`` (untimed) so every save writes new files, as lt.save always does."""
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)
    return path


def save_file_fsync(tensors: dict[str, torch.Tensor], path: str) -> None:
    save_file(tensors, path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def read_every_byte(path: str) -> None:
    for t in load_file(path).values():
        t.clone()


def bench_big(mb: int, repeats: int, root: Path) -> None:
    log = big_log(mb)
    tensors = unique_tensors(log)
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"big bundle: {len(log)} layers, {len(tensors)} tensors, {nbytes / 2**20:.0f} MB")
    ours, ref = str(root / "bundle"), str(root / "ref.safetensors")
    saves = {
        "lt.save": lambda: lt.save(log, ours),
        "save_file": lambda: save_file(tensors, ref),
        "save_file+fsync": lambda: save_file_fsync(tensors, ref),
    }
    loads = {
        "lt.load": lambda: lt.load(ours),
        "load_file+read": lambda: read_every_byte(ref),
        "load_file (bare)": lambda: load_file(ref),
    }
    times: dict[str, list[float]] = {k: [] for k in (*saves, *loads)}
    for _ in range(repeats):
        for name, fn in saves.items():
            fresh(ours if name == "lt.save" else ref)
            times[name].append(timed(fn))
        for name, fn in loads.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, t in med.items():
        print(f"  {name:18s} {t * 1e3:8.1f} ms  {nbytes / 2**20 / t:7.0f} MB/s")
    print(f"  save ratio: {med['lt.save'] / med['save_file']:.2f}x save_file, "
          f"{med['lt.save'] / med['save_file+fsync']:.2f}x save_file+fsync (target 1.3x)")
    print(f"  load ratio: {med['lt.load'] / med['load_file+read']:.2f}x load_file+read (target 1.3x)")


class Ops(nn.Module):
    """``n`` small ops in a row."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.n):
            x = x + 1 if i % 2 else x * 0.5
        return x


def bench_lazy(layers: int, repeats: int, root: Path) -> None:
    log = lt.log_forward_pass(Ops(layers - 2), torch.randn(4, 8), random_seed=0)
    path = root / "many"
    t_save = timed(lambda: lt.save(log, path))
    t_open = statistics.median(timed(lambda: lt.load(path, lazy=True)) for _ in range(repeats))
    lazy = lt.load(path, lazy=True)
    t_one = statistics.median(timed(lambda: lazy.layers[len(lazy) // 2]._materialize(lazy.layers[0])) for _ in range(repeats))
    t_eager = timed(lambda: lt.load(path))
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"{len(log)}-layer bundle ({size:.1f} MB): save {t_save * 1e3:.0f} ms, lazy open {t_open * 1e3:.0f} ms "
          f"(target well under 1 s), one materialize {t_one * 1e3:.2f} ms, eager load {t_eager * 1e3:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--layers", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lens-bench-", dir=args.dir))
    try:
        bench_big(args.mb, args.repeats, root)
        bench_lazy(args.layers, args.repeats, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
