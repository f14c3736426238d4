"""The sweep as a table: ``python -m tests.zoo.hf_sweep_report [name ...]``.

Runs the checks of ``test_hf_sweep.py`` on each architecture (and validation on the zoo's
long-tail models) and prints one markdown row per model: ops, capture ok, valid, labels
identical across modes, tap gradients equal, capture/plain time ratio, capture overhead
per op and seconds taken,
then the first failure of each check that failed.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import time
from collections.abc import Callable

import torch

import lens_train as lt

from . import ZOO, build
from . import test_hf_sweep as sweep
from .hf_architectures import HF_ARCHS, build_hf


def _check(fn: Callable[[], object]) -> tuple[str, str]:
    """Run one check: ("yes", "") or ("NO", the reason)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            result = fn()
    except BaseException as exc:  # noqa: BLE001 - a report lists failures, it does not stop at one
        return "NO", f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
    if result is False:
        return "NO", " ".join(line.strip() for line in out.getvalue().splitlines()[2:])[:400]
    return "yes", ""


def _ratio(model: torch.nn.Module, args: tuple, kwargs: dict, repeats: int = 9) -> tuple[int, float, float]:
    """(ops, median capture time / median plain forward time, capture overhead in us per op),
    after one warm-up of each."""
    plain, captured, ops = [], [], 0
    for _ in range(repeats + 1):
        start = time.perf_counter()
        sweep._plain(model, args, kwargs)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        ops = len(lt.log_forward_pass(model, args, kwargs, layers_to_save="all", random_seed=0))
        captured.append(time.perf_counter() - start)
    capture, forward = statistics.median(captured[1:]), statistics.median(plain[1:])
    return ops, capture / forward, (capture - forward) / ops * 1e6


def _validate(model: torch.nn.Module, args: tuple, kwargs: dict) -> bool:
    return lt.validate_model_activations(model, args, kwargs, verbose=True, random_seed=0)


def arch_row(name: str) -> tuple[str, list[str]]:
    """One table row for architecture ``name`` and its failure notes."""
    start = time.perf_counter()
    model, args, kwargs = build_hf(name)
    ops, ratio, per_op = _ratio(model, args, kwargs)
    checks = {
        "capture": _check(lambda: sweep.test_capture_equals_plain_forward(name)),
        "valid": _check(lambda: _validate(*build_hf(name))),
        "labels": _check(lambda: sweep.test_labels_identical_in_train_and_eval_mode(name)),
        "taps": _check(lambda: sweep.test_tap_gradients_equal_forward_hooks(name)),
    }
    labels = checks["labels"][0] + (" (named diff)" if HF_ARCHS[name].train_only_ops else "")
    cells = [name, HF_ARCHS[name].family, str(ops), checks["capture"][0], checks["valid"][0], labels,
             checks["taps"][0], f"{ratio:.1f}", f"{per_op:.0f}", f"{time.perf_counter() - start:.1f}"]
    notes = [f"- {name} / {check}: {why}" for check, (_, why) in checks.items() if why]
    return "| " + " | ".join(cells) + " |", notes


def zoo_row(name: str) -> tuple[str, list[str]]:
    """One table row (capture, validation) for zoo entry ``name``."""
    start = time.perf_counter()
    capture = _check(lambda: len(lt.log_forward_pass(*build(name), random_seed=0)))
    valid = _check(lambda: _validate(*build(name)))
    notes = [f"- {name} / {check}: {why}" for check, (_, why) in (("capture", capture), ("valid", valid)) if why]
    return f"| {name} | {capture[0]} | {valid[0]} | {time.perf_counter() - start:.1f} |", notes


def main(names: list[str]) -> None:
    """Print the tables for ``names`` (default: every architecture and every long-tail zoo model)."""
    archs = [n for n in names if n in HF_ARCHS] or ([] if names else sorted(HF_ARCHS))
    tail = [n for n in names if n in ZOO] or ([] if names else sorted(n for n in ZOO if n.startswith("long_tail")))
    notes: list[str] = []
    torch.set_num_threads(1)  # as in test_hf_sweep.py: tiny models, shared cores
    start = time.perf_counter()
    print("| architecture | family | ops | capture ok | valid | labels train=eval | tap grads = hooks | capture/plain | us/op | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in archs:
        row, more = arch_row(name)
        print(row, flush=True)
        notes += more
    print("\n| zoo model | capture ok | valid | s |\n|---|---|---|---|")
    for name in tail:
        row, more = zoo_row(name)
        print(row, flush=True)
        notes += more
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n\nfailures:\n" + "\n".join(notes))


if __name__ == "__main__":
    main(sys.argv[1:])
