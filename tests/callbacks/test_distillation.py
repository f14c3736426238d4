"""DistillationCallback against a hand-written distillation step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

import lens_train as lt
from lens_train.callbacks import DistillationCallback
from lens_train.errors import InvalidArgumentError
from tests.callbacks.lit_models import LitNet, Net, assert_same_weights, fit, weights


class HandKD(LitNet):
    """FitNet hint layer1 -> teacher layer2 through a linear adapter, plus KL on logits."""

    def __init__(self, teacher: torch.nn.Module) -> None:
        super().__init__()
        self.teacher = [teacher]  # a list: not a submodule
        self.adapter = torch.nn.Linear(16, 12)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        h1 = self.net.layer1(x)
        out = self.net.head(self.net.layer2(h1))
        with torch.no_grad():
            teacher = self.teacher[0]
            t2 = teacher.layer2(teacher.layer1(x))
            t_out = teacher.head(t2)
        hint = F.mse_loss(self.adapter(h1), t2)
        kl = lt.losses.kd_kl(2.0)(out, t_out)
        return F.cross_entropy(out, y) + 0.5 * hint + 0.2 * kl


def test_final_weights_equal_hand_written_distillation(tmp_path):
    torch.manual_seed(0)
    teacher = Net().eval()
    module = LitNet()
    start = weights(module)
    cb = DistillationCallback(teacher, pairs={"layer1": "layer2"}, logits_loss=lt.losses.kd_kl(2.0),
                              weights={"layer1": 0.5, "logits": 0.2})
    initial: dict[str, torch.Tensor] = {}


    class Rec(pl.Callback):
        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            initial.update({k: v.clone() for k, v in cb.kd.adapters[0].state_dict().items()})

    t = fit(tmp_path / "cb", module, [cb, Rec()])
    assert {"distill/layer1", "distill/logits", "val/distill/logits"} <= set(t.logged_metrics)
    # given back as found: eval mode, parameters still requiring grad
    assert all(p.requires_grad for p in teacher.parameters()) and not teacher.training
    hand = HandKD(teacher)
    hand.load_state_dict({**start, **{f"adapter.{k.removeprefix('proj.')}": v for k, v in initial.items()}})
    fit(tmp_path / "hand", hand)
    assert_same_weights(module.net, hand.net, atol=1e-5)
    assert torch.allclose(cb.kd.adapters[0].proj.weight, hand.adapter.weight, atol=1e-5)
    assert set(cb.state_dict()["kd"]) >= {"adapters.0.proj.weight", "adapters.0.proj.bias"}


def test_constructor_validation():
    with pytest.raises(InvalidArgumentError, match="teacher must be an nn.Module"):
        DistillationCallback("teacher.ckpt", pairs={"a": "b"})  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="pairs"):
        DistillationCallback(Net())


@pytest.mark.parametrize("fail", [False, True])
def test_teacher_given_back_as_found(tmp_path, fail):
    teacher = Net(dropout=0.1).train()
    teacher.layer1[0].weight.requires_grad_(False)  # a user's partly frozen teacher
    found = ([m.training for m in teacher.modules()], [p.requires_grad for p in teacher.parameters()])
    cb = DistillationCallback(teacher, pairs={"layer1": "layer2"})
    seen = {}

    class Check(pl.Callback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            seen["during"] = (teacher.training, any(p.requires_grad for p in teacher.parameters()))
            if fail:
                raise RuntimeError("boom")

    if fail:
        with pytest.raises(RuntimeError, match="boom"):
            fit(tmp_path, LitNet(), [cb, Check()])
    else:
        fit(tmp_path, LitNet(), [cb, Check()])
    assert seen["during"] == (False, False)  # frozen and in eval mode while distilling
    assert ([m.training for m in teacher.modules()], [p.requires_grad for p in teacher.parameters()]) == found
