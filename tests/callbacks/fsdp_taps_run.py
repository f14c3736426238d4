"""Run by test_fsdp.py as a script: two gloo ranks, a ``fully_shard``ed (FSDP2) model on CPU.

Usage: python fsdp_taps_run.py OUT_DIR. Each rank writes OUT_DIR/rank<r>.pt with the full
gradients of one loss computed through lens taps and through forward hooks, and the
accuracy of probes trained on the sharded model's taps.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import lens_train as lt  # noqa: E402


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _shard(model: nn.Sequential) -> nn.Sequential:
    from torch.distributed.fsdp import fully_shard

    for i in (0, 2, 4):
        fully_shard(model[i])
    fully_shard(model)
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _data(rank: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def grads_through_taps(x: torch.Tensor, y: torch.Tensor, head: dict) -> tuple[list, torch.Tensor]:
    model = _shard(_model())
    # Module-address taps ("2", "3"): op-label taps on a sharded model are the capture engine's part.
    aux = lt.AuxiliaryLoss({"2": lt.losses.l2_activation(), "3": lt.losses.deep_supervision(num_classes=3)},
                           weights={"2": 0.1, "3": 0.5})
    aux.setup(model, x)
    aux.terms[1].head.load_state_dict(head)
    taps = lt.Taps(model, aux.layers)
    with taps:
        out = model(x)
    loss = F.cross_entropy(out, y) + aux(taps, targets=y)[0]
    loss.backward()
    return [_full(p.grad) for p in model.parameters()], aux.terms[1].head.weight.grad


def grads_through_hooks(x: torch.Tensor, y: torch.Tensor, head: dict) -> tuple[list, torch.Tensor]:
    model = _shard(_model())
    seen: dict[str, torch.Tensor] = {}
    model[2].register_forward_hook(lambda m, i, o: seen.__setitem__("2", o))
    model[3].register_forward_hook(lambda m, i, o: seen.__setitem__("3", o))
    linear = nn.Linear(16, 3)
    linear.load_state_dict(head)
    out = model(x)
    loss = F.cross_entropy(out, y) + 0.1 * seen["2"].pow(2).mean() + 0.5 * F.cross_entropy(linear(seen["3"]), y)
    loss.backward()
    return [_full(p.grad) for p in model.parameters()], linear.weight.grad


def probe_accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
    model = _shard(_model())
    probes = lt.Probes(["3"], num_classes=3, lr=0.05)
    taps = lt.Taps(model, probes.layers)
    for _ in range(60):
        with taps, torch.no_grad():
            model(x)
        probes.update(taps, y)
    probes.evaluate(taps, y)
    return probes.compute("val")["3"]


def main(rank: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["LT_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        x, y = _data(rank)
        torch.manual_seed(1)
        head = nn.Linear(16, 3).state_dict()
        taps_grads, taps_head = grads_through_taps(x, y, head)
        hook_grads, hook_head = grads_through_hooks(x, y, head)
        result = {"taps": taps_grads, "hooks": hook_grads, "taps_head": taps_head, "hooks_head": hook_head,
                  "probe_acc": probe_accuracy(x, y)}
        torch.save(result, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


if __name__ == "__main__":
    os.environ["LT_PORT"] = _free_port()
    mp.spawn(main, args=(Path(sys.argv[1]),), nprocs=2, join=True)
