"""LensModule: taps in the user's own steps; the supported path for manual optimization."""

from __future__ import annotations

import pickle
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.errors import InvalidArgumentError, TapError
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


def _tapped_clone(module: ManualLens, clone: ManualLens) -> None:
    """The clone's taps see the clone's own forward pass, and the original's still work."""
    x = torch.randn(4, 8)
    with clone.taps:
        clone.net(x)
    assert torch.allclose(clone.taps["layer1"], clone.net.layer1(x))
    with module.taps:
        module.net(2 * x)
    assert torch.allclose(module.taps["layer1"], module.net.layer1(2 * x))


def test_pickle_and_deepcopy_after_the_taps_ran(tmp_path):
    import copy

    module = ManualLens()
    fit(tmp_path, module, max_epochs=1)  # the taps ran in every step and hold hooks
    clone = pickle.loads(pickle.dumps(module))
    assert_same_weights(clone, module)
    _tapped_clone(module, clone)
    copied = copy.deepcopy(module)
    _tapped_clone(module, copied)
    torch.save(module, tmp_path / "module.pt")  # the common way to save a whole module
    assert_same_weights(torch.load(tmp_path / "module.pt", weights_only=False), module)


def test_pickling_inside_a_step_says_when_it_can():
    module = ManualLens()
    with module.taps, pytest.raises(TapError, match="inside a step.*after trainer.fit"):
        pickle.dumps(module)


class DeepSupervised(ManualLens):
    """A head-building loss, and no example input anywhere: the mixin builds the head from the first batch."""

    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.net = Net()
        self.automatic_optimization = False
        self.aux = lt.AuxiliaryLoss({"layer1": lt.losses.deep_supervision(num_classes=3)}, weight=0.5)
        self.configure_lens(self.aux.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_heads_are_built_before_configure_optimizers_like_the_callbacks_do(tmp_path):
    module = DeepSupervised()
    assert not module.aux.is_built
    seen = {}

    class Record(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen["head"] = pl_module.aux.terms[0].head.weight.detach().clone()
            seen["in_optimizer"] = any(p is pl_module.aux.terms[0].head.weight
                                       for g in trainer.optimizers[0].param_groups for p in g["params"])

    fit(tmp_path, module, [Record()], max_epochs=1)
    assert seen["in_optimizer"] and module.aux.terms[0].head.in_features == 16
    assert not torch.equal(seen["head"], module.aux.terms[0].head.weight)  # trained by the user's optimizer


def test_building_heads_without_a_forward_says_how(tmp_path):
    class NoForward(DeepSupervised):
        forward = pl.LightningModule.forward

    with pytest.raises(InvalidArgumentError, match=r"no forward method.*self.aux.setup\(self.net"):
        fit(tmp_path, NoForward(), max_epochs=1)
