"""Capture overhead (issue 15): log_forward_pass against a plain forward of the same model.

Run: .venv/bin/python bench/capture.py [--repeats N] [--runs K] [--hf all]

Every ratio is to the plain forward of the same model in the same mode, timed interleaved in
one process on one thread, medians. Rows: train mode with autograd on (the targets), eval mode
with autograd on, and eval under ``torch.no_grad`` (information only: there some layers run one
fused op, e.g. ``nn.MultiheadAttention``'s fast path). Columns:

- ops: layer passes in the log; plain ms: the plain forward;
- full x: ``layers_to_save="all"``; meta x: ``layers_to_save=None`` (metadata only);
- read x: full capture, then a first read of every layer (a capture fills a layer's fields when
  one is first read: this is the whole cost for a user who reads them all; information only);
- us/op: our overhead per op, (full - plain) / ops;
- floor: the same for a null ``TorchFunctionMode`` that only calls each op (same model, same run).

With ``--runs K`` (K > 1) each figure prints its median over the runs and [min..max] across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]

import torch  # noqa: E402
from capture_parts import (  # noqa: E402
    Case,
    capture_memory,
    measure_row,
    post_processing,
    validation_ratio,
)
from models import issue15_models  # noqa: E402

from lens_train.capture import recorder  # noqa: E402

TARGETS = {"transformer4": 2.0, "transformer24": 2.5, "cnn5": 1.4, "lstm_loop": 2.0}
META_TARGETS = {"transformer4": 1.6}
FLAT_TARGET = 1.3  # per-op cost of transformer24 / transformer4 ("flat from 4 to 24 blocks")
HF_MEDIAN, HF_MAX = 3.0, 5.0
VALIDATE_TARGETS = {"train": 10.0, "eval": 15.0}
HF_DEFAULT = ("gpt2", "llama", "qwen2", "gemma", "bert", "distilbert", "t5", "bart", "vit", "convnext")
MODES = ("train", "eval", "no_grad")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    cases = core_cases(device, args.batch) + hf_cases(args.hf, device)
    rows: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    checks: dict[str, list[float]] = defaultdict(list)
    for run in range(args.runs):
        for case in cases:
            for mode in MODES:
                print(f"run {run + 1}/{args.runs}: {case.name} {mode}", file=sys.stderr, flush=True)
                rows[case.name, mode].append(measure_row(case, mode, args.repeats))
        t4 = cases[0]
        for mode in ("train", "eval"):
            checks[f"validate {mode}"].append(validation_ratio(t4, mode, max(3, args.repeats // 3)))
    print_device(device, args)
    print_rows(cases, rows)
    print_summary(cases, rows, checks)
    print_memory(cases[:4], device)
    if not args.skip_post:
        post_processing(max(3, args.repeats // 3))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=15, help="interleaved rounds per row (medians)")
    ap.add_argument("--runs", type=int, default=1, help="whole measurements; K > 1 prints [min..max] of each figure")
    ap.add_argument("--hf", default="default", help="'default' (10 architectures), 'all', 'none', or names a,b,c")
    ap.add_argument("--device", default="cpu", help="cpu (the targets) or cuda (informative; synchronized timing)")
    ap.add_argument("--batch", type=int, default=None, help="override the batch size of the four fixed models")
    ap.add_argument("--skip-post", action="store_true", help="skip the post-processing section")
    return ap.parse_args()


def core_cases(device: torch.device, batch: int | None) -> list[Case]:
    """transformer4, transformer24, cnn5, lstm_loop: fixed configs, in this order."""
    return [Case(name, model.to(device), (x.to(device),), {}) for name, (model, x) in issue15_models(batch).items()]


def hf_cases(choice: str, device: torch.device) -> list[Case]:
    """Tiny Hugging Face architectures from configs (tests/zoo/hf_architectures.py)."""
    if choice == "none":
        return []
    from tests.zoo.hf_architectures import HF_ARCHS, build_hf

    names = list(HF_ARCHS) if choice == "all" else HF_DEFAULT if choice == "default" else choice.split(",")
    unknown = [n for n in names if n not in HF_ARCHS]
    if unknown:
        raise SystemExit(f"unknown --hf architectures {unknown}; choose from {sorted(HF_ARCHS)}")
    cases = []
    for name in names:
        model, args, kwargs = build_hf(name)
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        cases.append(Case(f"hf:{name}", model.to(device), tuple(map(move, args)),
                          {k: move(v) for k, v in kwargs.items()}))
    return cases


def cell(values: list[float], fmt: str = "{:.2f}") -> str:
    """Median of the runs, with [min..max] when there are several."""
    text = fmt.format(statistics.median(values))
    return text if len(values) == 1 else f"{text} [{fmt.format(min(values))}..{fmt.format(max(values))}]"


def verdict(value: float, limit: float, label: str) -> str:
    return f"{label}<={limit} {'OK' if value <= limit else 'MISS'}"


def target_text(name: str, mode: str, full: float, meta: float) -> str:
    if mode == "no_grad":
        return "information only"
    limit = TARGETS.get(name, HF_MAX if name.startswith("hf:") else None)
    parts = [verdict(full, limit, "full")] if limit is not None else []
    if name in META_TARGETS:
        parts.append(verdict(meta, META_TARGETS[name], "meta"))
    return "; ".join(parts)


def print_device(device: torch.device, args: argparse.Namespace) -> None:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU, 1 thread"
    hot = "on" if recorder._hotpath is not None else "off (LENS_TRAIN_PURE_PYTHON, or not built)"
    print(f"\ncapture overhead on {where}; torch {torch.__version__}; C hot path {hot}; repeats={args.repeats}, "
          f"runs={args.runs}")


def print_rows(cases: list[Case], rows: dict) -> None:
    wide = 8 if len(next(iter(rows.values()))) == 1 else 20
    print(f"{'model':16s} {'mode':8s} {'ops':>5s} {'plain ms':>{wide}s} {'full x':>{wide}s} {'meta x':>{wide}s} "
          f"{'read x':>{wide}s} {'us/op':>{wide}s} {'floor':>{wide}s}  target")
    for case in cases:
        for mode in MODES:
            runs = rows[case.name, mode]
            col = lambda key: [r[key] for r in runs]  # noqa: E731
            full, meta = statistics.median(col("full_x")), statistics.median(col("meta_x"))
            print(f"{case.name:16s} {mode:8s} {int(runs[0]['ops']):5d} {cell(col('plain_ms')):>{wide}s} "
                  f"{cell(col('full_x')):>{wide}s} {cell(col('meta_x')):>{wide}s} {cell(col('read_x')):>{wide}s} "
                  f"{cell(col('us_op'), '{:.1f}'):>{wide}s} {cell(col('floor_us_op'), '{:.1f}'):>{wide}s}  "
                  f"{target_text(case.name, mode, full, meta)}")


def print_summary(cases: list[Case], rows: dict, checks: dict) -> None:
    """The targets that span rows: flat per-op cost, the HF sweep, validation."""
    per_op = lambda name: [r["us_op"] for r in rows[name, "train"]]  # noqa: E731
    floor = lambda name: [r["floor_us_op"] for r in rows[name, "train"]]  # noqa: E731
    flat = [b / a for a, b in zip(per_op("transformer4"), per_op("transformer24"))]
    flat_floor = [b / a for a, b in zip(floor("transformer4"), floor("transformer24"))]
    print(f"\nper-op cost transformer24 / transformer4 (train): {cell(flat)} (floor {cell(flat_floor)}) "
          f"{verdict(statistics.median(flat), FLAT_TARGET, 'flat')}")
    hf = [c.name for c in cases if c.name.startswith("hf:")]
    if hf:
        medians = [statistics.median([r["full_x"] for r in rows[n, "train"]][i] for n in hf)
                   for i in range(len(rows[hf[0], "train"]))]
        worst = [max(rows[n, "train"][i]["full_x"] for n in hf) for i in range(len(medians))]
        print(f"HF sweep ({len(hf)} architectures, train, full): median {cell(medians)} "
              f"{verdict(statistics.median(medians), HF_MEDIAN, 'median')}; worst {cell(worst)} "
              f"{verdict(statistics.median(worst), HF_MAX, 'max')}")
    for mode, limit in VALIDATE_TARGETS.items():
        values = checks[f"validate {mode}"]
        print(f"validate_model_activations, transformer4, {mode}: {cell(values)}x a plain forward "
              f"{verdict(statistics.median(values), limit, 'x')}")


def print_memory(cases: list[Case], device: torch.device) -> None:
    """Peak live allocations of a full capture vs plain peak + saved activations, + 10%."""
    tool = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "torch.profiler(profile_memory=True)"
    print(f"\npeak live allocations, train mode ({tool}); saved = distinct storages of the saved activations;\n"
          f"limit = (plain peak + saved) * 1.1")
    print(f"{'model':16s} {'plain MB':>9s} {'saved MB':>9s} {'capture MB':>11s} {'limit MB':>9s}  target")
    for case in cases:
        plain, saved, peak = capture_memory(case, device)
        limit = (plain + saved) * 1.1
        print(f"{case.name:16s} {plain / 2**20:9.2f} {saved / 2**20:9.2f} {peak / 2**20:11.2f} {limit / 2**20:9.2f}  "
              f"{'OK' if peak <= limit else 'MISS'}")


if __name__ == "__main__":
    main()
