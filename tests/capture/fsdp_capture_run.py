"""Two CPU processes over gloo: a model captured before and after torch's ``fully_shard``.

Run as ``python fsdp_capture_run.py OUT``; rank 0 writes ``OUT/result.json``.
"""

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for block in self.blocks:
            h = h + block(h)
        return self.head(h)


def _layout(log):
    return [[layer.layer_label, layer.layer_type, list(layer.tensor_shape), layer.containing_modules] for layer in log.layers]


def run(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.fsdp import fully_shard

        import lens_train as lt

        torch.manual_seed(0)
        model, x = Net(), torch.randn(4, 6)
        before = lt.log_forward_pass(model, x)
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        after = lt.log_forward_pass(model, x)
        if rank == 0:
            result = {
                "before": _layout(before), "after": _layout(after), "sharding_ops": after.meta["sharding_ops"],
                "same_output": bool(torch.allclose(before.output, after.output, atol=1e-6)),
                "same_values": all(torch.allclose(a.activation, b.activation, atol=1e-6)
                                   for a, b in zip(before.layers, after.layers)),
            }
            with open(os.path.join(out, "result.json"), "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(run, args=(2, free_port, sys.argv[1]), nprocs=2)
