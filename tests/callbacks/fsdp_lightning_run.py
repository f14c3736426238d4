"""Run by test_fsdp.py as a script: the lens callbacks under Lightning's ModelParallelStrategy (FSDP2).

Usage: python fsdp_lightning_run.py OUT_DIR [snapshots]. Lightning re-runs the script once per
rank (two CPU processes over gloo); rank 0 writes OUT_DIR/result.pt with what the callbacks
logged. With ``snapshots``, the run adds an ActivationSnapshotCallback, which must refuse the
sharded model on every rank (its rank-zero forward pass would wait forever); rank 0 writes
the error to OUT_DIR/error.txt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lens_train as lt  # noqa: E402
from tests.callbacks.lit_models import LitNet, Net, loaders  # noqa: E402


class ShardedLitNet(LitNet):
    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for block in (self.net.layer1, self.net.layer2):
            fully_shard(block, mesh=mesh)
        fully_shard(self.net, mesh=mesh)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # foreach kernels refuse a param group mixing DTensors with plain tensors: the heads
        # must come in a group of their own.
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, foreach=True)


def main(out: Path, snapshots: bool = False) -> None:
    train, val = loaders()
    torch.manual_seed(0)
    teacher = Net().eval()
    callbacks = [
        lt.callbacks.AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)}, weight=0.3),
        lt.callbacks.ProbeCallback(layers=["layer2"], num_classes=3, lr=0.05),
        lt.callbacks.ActivationStatsCallback(["layer1"], every_n_steps=1),
        lt.callbacks.DistillationCallback(teacher, pairs={"layer2": "layer2"}),
    ]
    if snapshots:
        callbacks.append(lt.callbacks.ActivationSnapshotCallback(layers=["layer1"], every_n_steps=2))
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=3, callbacks=callbacks,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, log_every_n_steps=1)
    try:
        trainer.fit(ShardedLitNet(), train, val)
    except lt.errors.InvalidArgumentError as err:
        if trainer.is_global_zero:
            (out / "error.txt").write_text(str(err))
        _close()
        return
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.is_global_zero:
        torch.save({"metrics": metrics, "head_trained": bool(callbacks[0].trained)}, out / "result.pt")
    _close()


def _close() -> None:
    # gloo's threads abort the interpreter at exit unless the group is closed
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), snapshots="snapshots" in sys.argv[2:])
