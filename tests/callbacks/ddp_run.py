"""Run by test_ddp.py as a script: Lightning's DDP launcher re-runs it once per rank.

Usage: python ddp_run.py OUT_DIR. Rank 0 saves the final weights of a run with the lens
callbacks and of the hand-written equivalent into OUT_DIR/weights.pt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lens_train as lt  # noqa: E402
from lens_train.callbacks import activation_snapshot  # noqa: E402
from tests.callbacks.lit_models import LitNet, loaders  # noqa: E402
from tests.callbacks.test_auxiliary_loss import HandAux, RecordInitial  # noqa: E402


def _refuse(*args: object, **kwargs: object) -> None:
    raise RuntimeError(f"rank {os.environ.get('LOCAL_RANK')} tried to write a snapshot")


def trainer(out: Path, name: str, callbacks: list) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, callbacks=callbacks,
                      logger=CSVLogger(out, name=name, version=0), enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      log_every_n_steps=1)


def main(out: Path) -> None:
    if os.environ.get("LOCAL_RANK", "0") != "0":
        activation_snapshot.save_bundle = _refuse
    train, val = loaders()
    torch.manual_seed(0)
    module = LitNet()
    start = {k: v.clone() for k, v in module.state_dict().items()}
    aux = lt.callbacks.AuxiliaryLossCallback({"layer1": lt.losses.deep_supervision(num_classes=3)}, weight=0.3)
    rec = RecordInitial(aux)
    probes = lt.callbacks.ProbeCallback(layers=["layer2"], num_classes=3, lr=0.05)
    snaps = lt.callbacks.ActivationSnapshotCallback(layers=["layer1"], every_n_steps=1)
    t = trainer(out, "lens", [aux, rec, probes, snaps])
    t.fit(module, train, val)
    hand = HandAux(lambda step: 0.3)
    hand.load_state_dict({**start, "aux_head.weight": rec.initial["terms.0.head.weight"],
                          "aux_head.bias": rec.initial["terms.0.head.bias"]})
    trainer(out, "hand", []).fit(hand, train, val)
    probe_w = torch.cat([probes.probes.heads["layer2"].body.weight.detach().flatten(),
                         probes.probes.heads["layer2"].norm.running_mean])
    gathered = t.strategy.all_gather(probe_w)
    if not t.is_global_zero:  # rank 1 takes no snapshots but reads the list rank 0 wrote
        torch.save([s.step for s in snaps.snapshots], out / "rank1_snapshots.pt")
    t.strategy.barrier()
    if t.is_global_zero:
        torch.save({"lens": module.state_dict(), "hand": hand.state_dict(), "head": aux.aux.state_dict(),
                    "probes_equal": bool(torch.allclose(gathered[0], gathered[1])),
                    "snapshots": [s.step for s in snaps.snapshots],
                    "rank1_snapshots": torch.load(out / "rank1_snapshots.pt")}, out / "weights.pt")
    # gloo's threads abort the interpreter at exit ("terminate called...") unless the group is closed
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
