"""Measurements behind bench/capture.py: timed rows, validation, memory, post-processing."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from timing import interleaved
from torch._C._profiler import _EventType
from torch.overrides import TorchFunctionMode

import lens_train as lt
from lens_train.capture.api import record_forward
from lens_train.capture.build import build_log
from lens_train.capture.recorder import CapturePlan


class NullMode(TorchFunctionMode):
    """The floor: a function mode that only calls each op."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        return func(*args, **(kwargs or {}))


@dataclass
class Case:
    """A model with its positional and keyword inputs."""

    name: str
    model: torch.nn.Module
    args: tuple
    kwargs: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return any(isinstance(a, torch.Tensor) and a.is_cuda for a in (*self.args, *self.kwargs.values()))

    def plain(self) -> Any:
        return self.model(*self.args, **self.kwargs)

    def null(self) -> Any:
        with NullMode():
            return self.model(*self.args, **self.kwargs)

    def capture(self, save: str | None) -> lt.ModelLog:
        return lt.log_forward_pass(self.model, self.args, self.kwargs, layers_to_save=save, random_seed=0)

    def validate(self) -> bool:
        return lt.validate_model_activations(self.model, self.args, self.kwargs, random_seed=0)


def _timed(case: Case, fn: Any) -> Any:
    """``fn`` followed by a device synchronization when the case runs on CUDA."""
    if not case.cuda:
        return fn
    return lambda: (fn(), torch.cuda.synchronize())


@contextlib.contextmanager
def mode_context(case: Case, mode: str) -> Any:
    """``train``: train mode, autograd on; ``eval``: eval mode, autograd on; ``no_grad``: eval under no_grad."""
    was_training = case.model.training
    case.model.train(mode == "train")
    try:
        with torch.no_grad() if mode == "no_grad" else contextlib.nullcontext():
            yield
    finally:
        case.model.train(was_training)


def measure_row(case: Case, mode: str, repeats: int) -> dict[str, float]:
    """Plain, full capture, metadata-only capture and null mode, interleaved: medians and ratios."""
    with mode_context(case, mode):
        ops = len(case.capture(None))
        fns = {
            "plain": _timed(case, case.plain),
            "full": _timed(case, lambda: case.capture("all")),
            "meta": _timed(case, lambda: case.capture(None)),
            "null": _timed(case, case.null),
            "read": _timed(case, lambda: read_every_layer(case.capture("all"))),
        }
        for fn in fns.values():
            fn(), fn()
        t = interleaved(fns, repeats)
    plain = t["plain"]
    return {
        "ops": ops, "plain_ms": plain * 1e3, "full_x": t["full"] / plain, "meta_x": t["meta"] / plain,
        "read_x": t["read"] / plain,
        "us_op": (t["full"] - plain) / ops * 1e6, "floor_us_op": (t["null"] - plain) / ops * 1e6,
    }


def read_every_layer(log: lt.ModelLog) -> None:
    """Read a field of every layer: a capture fills each layer's fields on first read, and this pays for all."""
    for layer in log.layers:
        layer.parent_layers  # noqa: B018


def validation_ratio(case: Case, mode: str, repeats: int) -> float:
    """``validate_model_activations`` time over the plain forward's, in ``mode`` (autograd on)."""
    with mode_context(case, mode):
        fns = {"plain": _timed(case, case.plain), "validate": _timed(case, case.validate)}
        for fn in fns.values():
            fn()
        t = interleaved(fns, repeats)
    return t["validate"] / t["plain"]


def _profiled_peak(fn: Any) -> tuple[int, Any]:
    """Peak of live CPU allocations made while ``fn`` runs (the profiler's allocation events), and its result."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            sizes.append((node.start_time_ns, node.extra_fields.alloc_size))
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak, result


def _cuda_peak(fn: Any) -> tuple[int, Any]:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, result


def capture_memory(case: Case, device: torch.device) -> tuple[int, int, int]:
    """(plain forward's peak, saved activations' distinct storage bytes, full capture's peak), in train mode."""
    peak_of = _cuda_peak if device.type == "cuda" else _profiled_peak
    with mode_context(case, "train"):
        case.plain(), case.capture("all")
        gc.collect()
        plain, out = peak_of(case.plain)
        del out
        gc.collect()
        peak, log = peak_of(lambda: case.capture("all"))
    return plain, saved_storage_bytes(log), peak


def saved_storage_bytes(log: lt.ModelLog) -> int:
    """Bytes of the distinct storages behind the saved activations (views of one tensor count once)."""
    storages = {}
    for layer in log:
        act = layer.activation if layer.is_saved else None
        if isinstance(act, torch.Tensor):
            storage = act.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def post_processing(repeats: int) -> None:
    """Time of turning raw records into a log (labels, passes, structure), per op: must stay flat."""
    from models import structure_models

    print(f"\n{'post-processing':24s} {'ops':>6s} {'ms':>9s} {'us/op':>7s} {'+read us/op':>12s} {'passes':>7s}")
    for name, (model, x) in structure_models().items():
        recorder, _, _ = record_forward(model, x, None, CapturePlan(save="none"), 0)
        times, reads = [], []
        gc.disable()  # as in a real capture
        try:
            for _ in range(repeats):
                t0 = time.perf_counter()
                log = build_log(recorder, model, {})
                t1 = time.perf_counter()
                read_every_layer(log)  # the fields each layer fills on first read
                times.append(t1 - t0)
                reads.append(time.perf_counter() - t0)
        finally:
            gc.enable()
        best, n = min(times), len(recorder.records)
        print(f"{name:24s} {n:6d} {best * 1e3:9.2f} {best / n * 1e6:7.2f} {min(reads) / n * 1e6:12.2f} "
              f"{log.structure['max_passes']:7d}")
