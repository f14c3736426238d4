"""Run by test_auxiliary.py as a script: two gloo ranks, a tapped layer skipped on one.

Usage: python ddp_skip_run.py OUT_DIR [plain-zero] (writes OUT_DIR/result.pt). Rank 0 never runs the tapped layer
(``missing="skip"``), rank 1 does; DDP wraps the model and the auxiliary head together
(as the Lightning callbacks do) without ``find_unused_parameters``. With the head-touching
zero term every step completes and the heads stay equal on both ranks; ``plain-zero``
replaces that term by a plain zero, which leaves the head unused on rank 0.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lens_train as lt  # noqa: E402
from lens_train.train import auxiliary  # noqa: E402


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.extra, self.out = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, use_extra: bool) -> torch.Tensor:
        h = self.fc(x)
        return self.out(self.extra(h) if use_extra else h)


class Both(nn.Module):
    def __init__(self, model: nn.Module, aux: nn.Module) -> None:
        super().__init__()
        self.model, self.aux = model, aux

    def forward(self, x: torch.Tensor, use_extra: bool) -> torch.Tensor:
        return self.model(x, use_extra)


def run(rank: int, init: str, out: str, plain_zero: bool) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20))
    if plain_zero:
        auxiliary._zero_term = lambda term, device: torch.zeros(())
    torch.manual_seed(0)
    model, x, y = Branchy(), torch.randn(8, 4), torch.randint(0, 3, (8,))
    aux = lt.AuxiliaryLoss({"extra": lt.losses.deep_supervision(3)}, model=model, example_input=(x, True))
    ddp = nn.parallel.DistributedDataParallel(Both(model, aux))
    taps = lt.Taps(ddp, aux.layers, missing="skip")
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for _ in range(3):
        with taps:
            logits = ddp(x, use_extra=rank == 1)
        loss = F.cross_entropy(logits, y) + aux(taps, targets=y)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    weights = [torch.zeros_like(aux.terms[0].head.weight) for _ in range(2)]
    dist.all_gather(weights, aux.terms[0].head.weight.detach().contiguous())
    if rank == 0:
        torch.save({"heads_equal": torch.equal(*weights)}, out)
    # Gloo's worker thread frees a finished all_gather (Python-owned tensors: it needs the GIL)
    # after the call returns; freeing DDP's reducer joins that thread while holding the GIL, so
    # the two could deadlock at exit. A barrier is queued behind the all_gather on the same
    # thread, so once it returns the all_gather is gone; then the reducer goes first.
    dist.barrier()
    del ddp, opt
    dist.destroy_process_group()


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    target = out_dir / "result.pt"
    init = f"file://{out_dir / 'rendezvous'}"
    mp.spawn(run, args=(init, str(target), len(sys.argv) > 2), nprocs=2)
