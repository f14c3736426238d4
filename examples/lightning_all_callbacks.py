"""An ordinary LightningModule plus every lens callback; the module's code does not change.

A teacher is trained first, then the student gets: deep supervision on a middle block,
distillation from the teacher, linear probes on every block, activation snapshots each
epoch, the model graph, and activation statistics.

Run: python examples/lightning_all_callbacks.py [output_dir]
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.experiments import DigitsCNN, DigitsDataModule

out = Path(sys.argv[1] if len(sys.argv) > 1 else "example_outputs") / "lightning_run"


class LitClassifier(L.LightningModule):
    """Nothing here knows about lens_train."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.net = DigitsCNN(channels=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-3)


L.seed_everything(0)
data = DigitsDataModule(batch_size=64)
quiet = dict(enable_progress_bar=False, enable_model_summary=False, logger=False, enable_checkpointing=False)
teacher = LitClassifier([16, 32, 64])
L.Trainer(max_epochs=2, **quiet).fit(teacher, data)

callbacks = [
    lt.callbacks.AuxiliaryLossCallback({"blocks.1": lt.losses.deep_supervision(num_classes=10)}, weights={"blocks.1": 0.3}),
    lt.callbacks.DistillationCallback(teacher.net, pairs={"blocks.2": "blocks.2"}),
    lt.callbacks.ProbeCallback(layers=["blocks.0", "blocks.1", "blocks.2"], num_classes=10, pool="flatten", lr=0.01),
    lt.callbacks.ActivationSnapshotCallback(layers=["blocks.0", "blocks.1", "blocks.2"], every_n_epochs=1),
    lt.callbacks.GraphLoggerCallback(every_n_epochs=1, vis_fileformat="svg"),
    lt.callbacks.ActivationStatsCallback(layers=["blocks.0", "blocks.1", "blocks.2"], every_n_steps=10),
]
student = LitClassifier([8, 16, 32])
trainer = L.Trainer(max_epochs=3, callbacks=callbacks, default_root_dir=out, log_every_n_steps=5,
                    logger=L.pytorch.loggers.CSVLogger(out, name="", version=""), enable_progress_bar=False,
                    enable_model_summary=False)
trainer.fit(student, data)

metrics = trainer.callback_metrics
print("logged:", ", ".join(sorted(k for k in metrics if k.startswith(("aux/", "distill/", "probe/", "lens/")))))
print(f"val_acc {metrics['val_acc']:.3f}; probe val accuracy:",
      {layer: round(float(metrics[f"probe/{layer}/val_acc"]), 3) for layer in ("blocks.0", "blocks.1", "blocks.2")})

snapshots = lt.load_snapshots(out)
print("snapshots:", [s.name for s in snapshots])
print("drift (CKA with the previous snapshot):", {k: round(v, 3) for k, v in snapshots[-1].cka.items()})
print("graphs:", sorted(p.name for p in (out / "graphs").iterdir()))
