"""Module taps under nn.DataParallel: the replicas' outputs come back as one gathered value.

The machine has no GPUs, so ``nn.DataParallel``'s own ``forward`` runs with its
device-specific steps replaced by CPU equivalents: ``replicate`` builds per-replica
module copies exactly as torch does (``_replicate_for_data_parallel``: shared hooks,
parameters as non-leaf views of the originals), ``parallel_apply`` runs the replicas
in threads, last replica first (so arrival order is the reverse of replica order).
"""

from __future__ import annotations

import importlib
import threading

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.train.replicas import GatheredValue, ReplicaTracker
from lens_train.train.tap_values import ClonePolicy, TapValue

REPLICAS = 3


class Split(nn.Module):
    """A structured output: a dict holding a tensor and a tuple."""

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        return {"double": x * 2, "rest": (x + 1,)}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.Tanh()
        self.split = Split()
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        parts = self.split(h)
        return self.out(self.fc(parts["double"] + parts["rest"][0]))  # fc runs twice per replica


def _cpu_replicate(module: nn.Module, devices: list[int], detach: bool = False) -> list[nn.Module]:
    replicas = []
    for _ in devices:
        copies = {m: m._replicate_for_data_parallel() for m in module.modules()}
        for m, r in copies.items():
            r._modules = {k: copies[c] if c is not None else None for k, c in m._modules.items()}
            for k, p in m._parameters.items():
                setattr(r, k, p.view_as(p))
        replicas.append(copies[module])
    return replicas


def _cpu_parallel_apply(replicas: list[nn.Module], inputs: tuple, kwargs: tuple) -> list[torch.Tensor]:
    outs: list[torch.Tensor | None] = [None] * len(replicas)

    def work(i: int) -> None:
        outs[i] = replicas[i](*inputs[i], **kwargs[i])

    for i in reversed(range(len(replicas))):
        thread = threading.Thread(target=work, args=(i,))
        thread.start()
        thread.join()
    return outs


@pytest.fixture
def dp(monkeypatch: pytest.MonkeyPatch) -> nn.DataParallel:
    torch.manual_seed(0)
    wrapper = nn.DataParallel(Net())
    wrapper.device_ids, wrapper.output_device, wrapper.dim = list(range(REPLICAS)), 0, 0
    wrapper.src_device_obj = torch.device("cpu")
    wrapper.scatter = lambda inputs, kwargs, ids: (tuple((c,) for c in inputs[0].chunk(len(ids))), ({},) * len(ids))
    wrapper.parallel_apply = _cpu_parallel_apply
    wrapper.gather = lambda outputs, device: torch.cat(outputs)
    monkeypatch.setattr(importlib.import_module("torch.nn.parallel.data_parallel"), "replicate", _cpu_replicate)
    return wrapper


def _reference(net: Net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    h = net.act(net.fc(x))
    return {"fc:1": net.fc(x), "act": h, "fc:2": net.fc(h * 2 + h + 1)}


def test_module_taps_gather_the_replicas_in_batch_order(dp: nn.DataParallel) -> None:
    x = torch.randn(6, 4)
    taps = lt.Taps(dp, ["act", "fc", "split"])
    with taps:
        out = dp(x)
    net = dp.module
    ref = _reference(net, x)
    assert torch.allclose(out, net(x))
    assert taps.num_passes("act") == 1 and taps.num_passes("fc") == 2  # passes, not replicas
    assert torch.allclose(taps["act"], ref["act"]) and torch.allclose(taps["fc:2"], ref["fc:2"])
    parts = taps["split"]
    assert torch.allclose(parts["double"], ref["act"] * 2) and torch.allclose(parts["rest"][0], ref["act"] + 1)


def test_gradients_through_gathered_taps_equal_the_unreplicated_model(dp: nn.DataParallel) -> None:
    x = torch.randn(6, 4)
    taps = lt.Taps(dp, ["act"], save_gradients=True)
    with taps:
        out = dp(x)
    (out.sum() + taps["act"].pow(2).mean()).backward()
    got = [p.grad.clone() for p in dp.module.parameters()]
    dp.module.zero_grad()
    h = dp.module.act(dp.module.fc(x))
    h.retain_grad()
    a = h * 2
    out2 = dp.module.out(dp.module.fc(a + h + 1))
    (out2.sum() + h.pow(2).mean()).backward()
    for g, want in zip(got, [p.grad for p in dp.module.parameters()]):
        assert torch.allclose(g, want, atol=1e-6)
    assert torch.allclose(taps.grad("act"), h.grad, atol=1e-6)


def test_replicate_is_restored_and_single_device_is_unchanged(dp: nn.DataParallel) -> None:
    taps = lt.Taps(dp, ["act"])
    assert "replicate" in dp.__dict__
    taps.remove()
    assert "replicate" not in dp.__dict__
    plain = nn.DataParallel(Net())  # no GPU: DataParallel calls the module itself
    taps = lt.Taps(plain, ["act"])
    x = torch.randn(3, 4)
    with taps:
        plain(x)
    assert isinstance(taps._hooks.values[0][0], TapValue)
    assert torch.allclose(taps["act"], plain.module.act(plain.module.fc(x)))


def test_gathered_value_orders_parts_and_stacks_scalars() -> None:
    tracker = ReplicaTracker(nn.DataParallel(nn.Identity()))
    value = GatheredValue(tracker)
    for r in (2, 0, 1):
        value.add(r, TapValue((torch.full((1, 2), float(r)), torch.tensor(float(r))), clone=False, grad_box=False))
    rows, scalars = value.resolve(ClonePolicy("never"), "x")
    assert rows[:, 0].tolist() == [0.0, 1.0, 2.0] and scalars.tolist() == [0.0, 1.0, 2.0]
