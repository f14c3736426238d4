"""Inspection between a forward pass and its backward never changes that backward."""

import os

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.callbacks._shared import quiet_forward
from lens_train.train.taps import tap_example


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
                         nn.Flatten(), nn.Linear(64, 3))


def _graph(net, x, tmp_path):
    return lt.show_model_graph(net, x, vis_outpath=os.path.join(tmp_path, "g"), vis_save_only=True)


def _quiet(net, x, tmp_path):
    with quiet_forward(net):
        net(x)


INSPECTIONS = {
    "log_forward_pass": lambda net, x, tmp: lt.log_forward_pass(net, x),
    "validate_model_activations": lambda net, x, tmp: lt.validate_model_activations(net, x),
    "get_nodes": lambda net, x, tmp: lt.get_nodes(net, x),
    "Taps": lambda net, x, tmp: lt.Taps(net, ["relu_1", "2"], example_input=x).remove(),
    "Extract": lambda net, x, tmp: lt.Extract(net, x, node_in="conv2d_1", node_out="linear_1"),
    "show_model_graph": _graph,
    "tap_example": lambda net, x, tmp: tap_example(net, ["4"], x),
    "callback side pass": _quiet,
    "fastlog.record": lambda net, x, tmp: lt.fastlog.record(net, x, keep_op=lambda op: op.layer_type == "relu"),
}


def _grads_and_state(net: nn.Module, x: torch.Tensor, inspect=None, tmp=None):
    out = net(x)
    if inspect is not None:
        inspect(net, x, tmp)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    return grads, {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", list(INSPECTIONS))
def test_inspection_between_forward_and_backward(name, mode, tmp_path):
    x = torch.randn(2, 3, 8, 8)
    reference_net, net = _net(), _net()
    getattr(reference_net, mode)()
    getattr(net, mode)()
    buffers = [id(b) for b in net.buffers()]
    want, want_state = _grads_and_state(reference_net, x)
    got, got_state = _grads_and_state(net, x, INSPECTIONS[name], str(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert all(torch.equal(want_state[k], got_state[k]) for k in want_state)
    assert [id(b) for b in net.buffers()] == buffers and net.training == (mode == "train")


def test_shared_buffer_stays_shared_during_a_side_pass():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Module(), nn.Module()
            table = torch.arange(4.0)
            self.a.register_buffer("t", table)
            self.b.register_buffer("t", table)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            assert self.a.t is self.b.t
            self.a.t.add_(1)
            return x * self.b.t

    model = Shared()
    log = lt.log_forward_pass(model, torch.ones(4))
    assert torch.equal(log[-1].activation, torch.arange(1.0, 5.0))
    assert torch.equal(model.a.t, torch.arange(4.0)) and model.a.t is model.b.t
