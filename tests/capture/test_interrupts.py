"""A Ctrl-C at any moment leaves nothing installed, and still stops the run.

A trace function raises a real SIGINT at the Nth executed line of lens_train, and of the
torch hook and function-mode code it calls, for N across the whole call (densely at the
start and the end, where hooks and modes are installed and removed).

Each scenario runs in its own process (``python test_interrupts.py SCENARIO``): a
KeyboardInterrupt raised from inside a trace function can leave CPython's "exception being
handled" state set (``sys.exc_info()`` then reports a stale StopIteration), which would
leak into later tests.
"""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lens_train as lt

_WATCHED = ("lens_train", "torch/nn/modules/module.py", "torch/overrides.py", "torch/utils/hooks.py",
            "torch/random.py", "contextlib.py")
_FROM_NUMPY = torch.from_numpy


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell, self.norm, self.head = nn.Linear(6, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = torch.relu(self.norm(self.cell(x)))
        return self.head(x + torch.from_numpy(np.ones(6, dtype=np.float32)))


def _watched(code) -> bool:
    name = code.co_filename.replace("\\", "/")
    return any(part in name for part in _WATCHED) and "test_interrupts" not in name


def _run(fn, fire_at: int | None) -> tuple[int, bool]:
    """Run ``fn`` raising SIGINT at watched line ``fire_at``: (lines seen, whether KeyboardInterrupt came out)."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count == fire_at:
                sys.settrace(None)
                signal.raise_signal(signal.SIGINT)
                return None
        return local

    def tracer(frame, event, arg):
        return local if _watched(frame.f_code) else None

    interrupted = False
    sys.settrace(tracer)
    try:
        fn()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        sys.settrace(None)
    return count, interrupted


def _installed(model: nn.Module) -> list[str]:
    found = []
    for address, m in model.named_modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            found.append(f"hooks on {address or 'root'}")
    if torch._C._len_torch_function_stack():
        found.append("a function mode on torch's stack")
    if torch.from_numpy is not _FROM_NUMPY:
        found.append("torch.from_numpy patched")
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        found.append("a SIGINT handler")
    return found


def _tapped_step(model: nn.Module, x: torch.Tensor):
    taps = lt.Taps(model, ["relu_1", "norm"], example_input=x)
    try:
        with taps:
            model(x).sum()
    finally:
        taps.remove()


SCENARIOS = {
    "capture": lambda m, x: lt.log_forward_pass(m, x),
    "validation": lambda m, x: lt.validate_model_activations(m, x),
    "taps construction": lambda m, x: lt.Taps(m, ["relu_1", "norm"], example_input=x).remove(),
    "tapped step": _tapped_step,
}


def _fire_points(total: int, edge: int = 120, middle: int = 40) -> list[int]:
    stride = max(1, (total - 2 * edge) // middle)
    points = {*range(1, min(edge, total) + 1), *range(max(1, total - edge), total + 1), *range(edge, total, stride)}
    return sorted(points)


def check(name: str) -> dict:
    """Interrupt scenario ``name`` at every fire point; what was left installed or swallowed."""
    torch.manual_seed(0)
    model, x = Net().train(), torch.randn(4, 6)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    fn = SCENARIOS[name]
    fn(model, x)  # first calls learn things (thin functions) and run more lines
    total, _ = _run(lambda: fn(model, x), None)
    leftovers, not_raised = {}, []
    for n in _fire_points(total):
        seen, interrupted = _run(lambda: fn(model, x), n)
        if seen >= n and not interrupted:
            not_raised.append(n)
        found = _installed(model)
        if found:
            leftovers[n] = found
            break
    changed = name != "tapped step" and not all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())
    lt.log_forward_pass(model, x)  # and the process is healthy afterwards
    torch.nn.init.kaiming_uniform_(torch.empty(3, 3))
    return {"total": total, "leftovers": {str(k): v for k, v in leftovers.items()}, "not_raised": not_raised,
            "buffers_changed": changed}


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_interrupt_at_any_line_leaves_nothing_installed(name):
    proc = subprocess.run([sys.executable, __file__, name], capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["total"] > 200
    assert not result["leftovers"], f"an interrupt of {result['total']} lines left {result['leftovers']}"
    assert not result["not_raised"], f"the interrupt was swallowed at lines {result['not_raised'][:10]}"
    # a tapped step is a real training forward (BatchNorm statistics update); inspections change nothing
    assert not result["buffers_changed"]


def check_pop_mode_window() -> dict:
    """Interrupt torch's ``handle_torch_function`` just before it pushes the popped mode back."""
    import contextlib
    import gc

    torch.manual_seed(0)
    model, x = Net().train(), torch.randn(4, 6)
    fired = []

    def pops_the_mode(frame) -> bool:  # (a helper, so no frame of the trace function holds the generator)
        gen = getattr(frame.f_locals.get("self"), "gen", None)
        return getattr(gen, "gi_code", None) is not None and gen.gi_code.co_name == "_pop_mode_temporarily"

    def local(frame, event, arg):
        if event == "line" and not fired and pops_the_mode(frame):
            fired.append(frame.f_lineno)
            sys.settrace(None)
            signal.raise_signal(signal.SIGINT)
        return local

    def tracer(frame, event, arg):
        return local if frame.f_code is contextlib._GeneratorContextManager.__exit__.__code__ else None

    results = {}
    for name in ("capture", "tapped step"):
        fired.clear()
        sys.settrace(tracer)
        try:
            SCENARIOS[name](model, x)
        except KeyboardInterrupt:
            pass
        finally:
            sys.settrace(None)
        gc.collect()  # frees the traceback's frames, where torch's suspended block would push the mode back
        results[name] = {"fired": bool(fired), "left": _installed(model)}
    return results


@pytest.mark.slow
def test_interrupt_while_torch_pops_the_mode_leaves_no_mode_behind():
    proc = subprocess.run([sys.executable, __file__, "--pop-mode-window"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, result in results.items():
        assert result["fired"] and not result["left"], (name, result)


if __name__ == "__main__":
    print(json.dumps(check_pop_mode_window() if sys.argv[1] == "--pop-mode-window" else check(sys.argv[1])))
