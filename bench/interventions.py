"""Cost of editing an activation inside the training step: ``taps.edit`` vs a hand-written hook.

Run: .venv/bin/python bench/interventions.py [--repeats N]

One full step (forward, loss, backward, optimizer step) in train mode with one module's
output edited, on its own copy of the model per case, in interleaved rounds; the number
is the median over rounds of (``lt.Taps(edits=...)`` step time / hand-written forward hook
step time in the same round), with the interquartile range. The hook returns the same
expression (``lt.edits`` documents each), so both steps compute the same thing (checked
before timing). Target: <= 1.05x.

  mean     ``lt.edits.mean()``: ``x * 0 + x.mean(0, keepdim=True)``
  steer    a callable adding a fixed direction: ``x + v``
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lens_train as lt  # noqa: E402
from models import CNN, Encoder  # noqa: E402
from timing import interleaved_times, ratio_stats, setup  # noqa: E402
from train_step import step_fn  # noqa: E402

TARGET = 1.05
LAYER = {"transformer4": "blocks.2", "cnn5": "features.6"}


def edits(width: int) -> dict[str, tuple[object, object]]:
    """name -> (edit spec for taps.edit, the same expression for a forward hook)."""
    direction = torch.linspace(-1, 1, width)
    return {
        "mean": (lt.edits.mean(), lambda m, i, o: o * 0 + o.mean(0, keepdim=True)),
        "steer": (lambda x: x + direction, lambda m, i, o: o + direction),
    }


def with_edit(model, x, y, layer, spec):
    taps = lt.Taps(model, edits={layer: spec})
    inner = step_fn(model, x, y)

    def run() -> None:
        with taps:
            inner()

    return run


def with_hook(model, x, y, layer, hook):
    model.get_submodule(layer).register_forward_hook(hook)
    return step_fn(model, x, y)


def same_step(model, x, y, layer, spec, hook) -> bool:
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    torch.manual_seed(1)  # dropout draws the same masks in both
    with_edit(a, x, y, layer, spec)()
    torch.manual_seed(1)
    with_hook(b, x, y, layer, hook)()
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def measure(model, x, layer, spec, hook, repeats: int) -> tuple[float, float, float, float]:
    y = torch.randint(0, 10, (x.shape[0],))
    if not same_step(model, x, y, layer, spec, hook):
        raise SystemExit(f"taps.edit and the hook disagree on {layer}")
    cases = {"edit": with_edit(copy.deepcopy(model), x, y, layer, spec),
             "hook": with_hook(copy.deepcopy(model), x, y, layer, hook)}
    times = interleaved_times(cases, repeats)
    return statistics.median(times["hook"]) * 1e3, *ratio_stats(times["edit"], times["hook"])


def main() -> None:
    repeats = setup()
    models = {"transformer4": (Encoder(64, 4), torch.randn(8, 32, 64), 64),
              "cnn5": (CNN(), torch.randn(8, 3, 32, 32), 1)}
    for name, (model, x, width) in models.items():
        model.train()
        for kind, (spec, hook) in edits(width).items():
            hook_ms, med, lo, hi = measure(model, x, LAYER[name], spec, hook, repeats)
            verdict = "OK" if med <= TARGET else "MISS"
            print(f"{name} {LAYER[name]} {kind:5s}: hook step {hook_ms:6.2f} ms, taps.edit {med:5.3f}x "
                  f"[IQR {lo:.3f}-{hi:.3f}]  target <= {TARGET}x {verdict}")


if __name__ == "__main__":
    main()
