"""LensModule: taps in the user's own steps; the supported path for manual optimization."""

from __future__ import annotations

import pickle
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.errors import TapError
from tests.callbacks.lit_models import LitNet, Net, assert_same_weights, fit


class ManualLens(lt.LensModule, pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = Net()
        self.automatic_optimization = False
        self.aux = lt.AuxiliaryLoss({"layer1": lt.losses.l1_activity()}, weight=0.1)
        self.configure_lens(self.aux.layers)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        total, _ = self.aux(self.taps, targets=y)
        opt.zero_grad()
        self.manual_backward(loss + total)
        opt.step()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class ManualHand(ManualLens):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        x, y = batch
        h1 = self.net.layer1(x)
        loss = F.cross_entropy(self.net.head(self.net.layer2(h1)), y) + 0.1 * h1.abs().mean()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()


def test_manual_optimization_with_taps_equals_hand_written(tmp_path):
    torch.manual_seed(0)
    a = ManualLens()
    b = ManualHand()
    b.load_state_dict(a.state_dict())
    fit(tmp_path / "a", a)
    fit(tmp_path / "b", b)
    assert_same_weights(a, b)


def test_taps_without_configuration_say_how():
    class Plain(lt.LensModule, LitNet):
        pass

    with pytest.raises(TapError, match="configure_lens"):
        Plain().taps


def test_picklable_until_first_use_then_taps_work_in_the_copy():
    module = ManualLens()
    clone = pickle.loads(pickle.dumps(module))  # ddp_spawn pickles the module before fit
    x = torch.randn(4, 8)
    with clone.taps:
        clone.net(x)
    assert clone.taps["layer1"].shape == (4, 16)
    assert torch.allclose(clone.taps["layer1"], clone.net.layer1(x))
