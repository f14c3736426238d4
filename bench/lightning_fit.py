"""Lightning fit with the lens callbacks vs the same fit without them.

Run: .venv/bin/python bench/lightning_fit.py [--steps 200] [--rounds 3]

Measures (1) a fit of ``--steps`` steps of the 5-conv CNN with AuxiliaryLossCallback,
ProbeCallback and ActivationStatsCallback on, against the plain fit, as interleaved
rounds (median ratio, target <= 1.15x); (2) seconds per event of the graph logger
(capture in line, rendering in the background) and of the snapshot callback.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lens_train as lt  # noqa: E402
from models import CNN  # noqa: E402


class LitCNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = CNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def data(steps: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(steps * 8, 3, 32, 32, generator=g), torch.randint(0, 10, (steps * 8,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def lens_callbacks() -> list[pl.Callback]:
    layers = ["features.2", "features.6", "features.13"]
    return [lt.callbacks.AuxiliaryLossCallback({"features.6": lt.losses.deep_supervision(num_classes=10)}, weight=0.3),
            lt.callbacks.ProbeCallback(layers=layers, num_classes=10),
            lt.callbacks.ActivationStatsCallback(layers, every_n_steps=50)]


def fit_seconds(steps: int, callbacks: list[pl.Callback], root: str, val: DataLoader | None = None) -> float:
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, callbacks=callbacks, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=root, num_sanity_val_steps=0, limit_val_batches=1 if val else 0)
    loader = data(steps)
    start = time.perf_counter()
    trainer.fit(LitCNN(), loader, val)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        fit_seconds(10, [], root)  # warm-up
        ratios = []
        for _ in range(args.rounds):
            plain = fit_seconds(args.steps, [], root)
            lens = fit_seconds(args.steps, lens_callbacks(), root)
            ratios.append(lens / plain)
            print(f"plain {plain:.2f}s  lens {lens:.2f}s  ratio {lens / plain:.3f}")
        print(f"fit, {args.steps} steps, aux+probes+stats: median ratio {statistics.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target <= 1.15)")
        graph = lt.callbacks.GraphLoggerCallback(every_n_epochs=1)
        snap = lt.callbacks.ActivationSnapshotCallback(layers="all", every_n_steps=5)
        fit_seconds(20, [graph, snap], root, val=data(1))
        captures = [t["capture_s"] for t in graph.timings]
        renders = [t["render_s"] for t in graph.timings]
        print(f"graph logger: capture {statistics.median(captures):.3f}s in line, render "
              f"{statistics.median(renders):.3f}s in the background, per event ({len(graph.timings)} events)")
        print(f"snapshot (all layers, 8 examples, incl. CKA + plot): {statistics.median(snap.timings):.3f}s "
              f"per event ({len(snap.timings)} events)")


if __name__ == "__main__":
    main()
