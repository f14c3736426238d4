"""AuxiliaryLoss: weights, schedules, heads, optimizer check, skipped terms, effect on training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens_train as lt
from tests.multiprocess import run_script
from lens_train.errors import InvalidArgumentError
from lens_train.train import schedules


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def test_terms_equal_manual_math() -> None:
    model, x, y = _mlp(), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    aux = lt.AuxiliaryLoss({"1": lt.losses.deep_supervision(3), "3": lt.losses.l1_activity()},
                           weights={"1": 0.3, "3": 0.01}, weight=2.0, schedule=schedules.linear_warmup(10),
                           model=model, example_input=x)
    taps = lt.Taps(model, aux.layers)
    with taps:
        model(x)
    total, terms = aux(taps, targets=y, step=5)
    h1 = model[1](model[0](x))
    h3 = model[3](model[2](h1))
    ce = F.cross_entropy(aux.terms[0].head(h1), y)
    assert torch.allclose(terms["1"], 2.0 * 0.5 * 0.3 * ce)
    assert torch.allclose(terms["3"], 2.0 * 0.5 * 0.01 * h3.abs().mean())
    assert torch.allclose(total, terms["1"] + terms["3"])
    with pytest.raises(InvalidArgumentError, match="step=global_step"):
        aux(taps, targets=y)


def test_heads_need_setup_and_an_optimizer() -> None:
    model, x = _mlp(), torch.randn(2, 4)
    aux = lt.AuxiliaryLoss({"1": lt.losses.deep_supervision(3)})
    taps = lt.Taps(model, aux.layers)
    with taps:
        model(x)
    with pytest.raises(InvalidArgumentError, match=r"aux.setup\(model, example_input\)"):
        aux(taps, targets=torch.tensor([0, 1]))
    with pytest.raises(InvalidArgumentError, match=r"\['1'\] are not built"):  # no heads yet: nothing to find missing
        aux.check_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    aux.setup(model, x)
    assert [tuple(p.shape) for p in aux.parameters()] == [(3, 8), (3,)]
    assert set(aux.state_dict()) == {"terms.0.head.weight", "terms.0.head.bias"}
    with pytest.raises(InvalidArgumentError, match=r"\['1'\].*aux.parameters\(\)"):
        aux.check_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
    aux.check_optimizer(torch.optim.SGD([*model.parameters(), *aux.parameters()], lr=0.1))


def test_skipped_term_is_a_zero_that_touches_the_head() -> None:
    model, x = _mlp(), torch.randn(2, 4)
    aux = lt.AuxiliaryLoss({"1": lt.losses.deep_supervision(3), "3": lambda a, t: a.sum()}, model=model, example_input=x)
    taps = lt.Taps(model, aux.layers, missing="skip")
    with taps:
        model[0](x)  # only part of the model runs
    total, terms = aux(taps, targets=torch.tensor([0, 1]))
    assert float(total.detach()) == 0.0
    total.backward()
    assert aux.terms[0].head.weight.grad is not None and not aux.terms[0].head.weight.grad.any()


def test_select_picks_an_element_of_a_structured_output() -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x * 2, x * 3

    model = nn.Sequential(Two())
    aux = lt.AuxiliaryLoss({"0": lt.losses.l2_activation()}, select=1)
    taps = lt.Taps(model, aux.layers)
    with taps:
        model(torch.ones(2))
    total, _ = aux(taps)
    assert float(total) == 9.0


def test_deep_supervision_changes_training() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    results = []
    for use_aux in (False, True):
        model = _mlp()
        aux = lt.AuxiliaryLoss({"1": lt.losses.deep_supervision(3)}, weights={"1": 1.0}, model=model, example_input=x)
        opt = torch.optim.SGD([*model.parameters(), *aux.parameters()], lr=0.1)
        aux.check_optimizer(opt)
        taps = lt.Taps(model, aux.layers)
        for _ in range(30):
            with taps:
                out = model(x)
            loss = F.cross_entropy(out, y)
            if use_aux:
                loss = loss + aux(taps, targets=y)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        results.append(torch.cat([p.detach().flatten() for p in model[0].parameters()]))
    assert (results[0] - results[1]).abs().max() > 1e-2


def test_per_layer_schedules_follow_the_explicit_step() -> None:
    model, x, y = _mlp().double(), torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    aux = lt.AuxiliaryLoss({"1": lt.losses.deep_supervision(3), "3": lt.losses.l2_activation()},
                           schedule={"1": schedules.cosine_decay(10, warmup=2)}, model=model, example_input=x)
    assert aux.terms[0].head.weight.dtype == torch.float64  # heads take the activation's dtype
    taps = lt.Taps(model, aux.layers)
    with taps:
        model(x)
    base = {k: v.detach() for k, v in aux(taps, targets=y, step=2)[1].items()}
    for step, factor in [(0, 0.0), (1, 0.5), (7, 0.5), (12, 0.0), (500, 0.0)]:
        _, terms = aux(taps, targets=y, step=step)
        assert torch.allclose(terms["1"], base["1"] * factor) and torch.equal(terms["3"], base["3"])
    with pytest.raises(InvalidArgumentError, match="step=global_step"):
        aux(taps, targets=y)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_skipped_term_keeps_the_ddp_reducer_working(tmp_path: Path) -> None:
    # Two gloo ranks; the tapped layer runs on rank 1 only. With a plain zero instead of the
    # head-touching one (`ddp_skip_run.py OUT plain-zero`) DDP fails at the second step.
    out = run_script(Path(__file__).with_name("ddp_skip_run.py"), tmp_path, timeout=140)
    assert torch.load(out / "result.pt")["heads_equal"]


class _TupleOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(4, 6, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(x)[0]


def test_structured_output_without_select_names_select() -> None:
    model, x = _TupleOut(), torch.randn(2, 5, 4)
    with pytest.raises(InvalidArgumentError, match=r"'gru' outputs a tuple.*select=\{'gru': 0\}"):
        lt.AuxiliaryLoss({"gru": lt.losses.deep_supervision(num_classes=3)}, model=model, example_input=x)
    aux = lt.AuxiliaryLoss({"gru": lt.losses.l1_activity()})
    taps = lt.Taps(model, ["gru"])
    with taps:
        model(x)
    with pytest.raises(InvalidArgumentError, match="L1Activity cannot use it"):
        aux(taps)
    picked = lt.AuxiliaryLoss({"gru": lt.losses.l1_activity()}, select={"gru": 0})
    total, _ = picked(taps)
    assert torch.allclose(total, taps["gru"][0].abs().mean())


def test_several_terms_on_one_layer_equal_the_hand_written_sum() -> None:
    torch.manual_seed(0)
    model, x, y = _mlp(), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    ds = lt.losses.deep_supervision(3)
    aux = lt.AuxiliaryLoss({"1": [ds, lt.losses.l1_activity()], "3": "l2_activation"},
                           weights={"1": [0.5, 0.1]}, model=model, example_input=x)
    taps = lt.Taps(model, aux.layers)
    with taps:
        model(x)
    total, terms = aux(taps, targets=y)
    assert list(terms) == ["1/deep_supervision", "1/l1_activity", "3"]
    h1, h3 = taps["1"], taps["3"]
    expected = 0.5 * F.cross_entropy(ds.head(h1), y) + 0.1 * h1.abs().mean() + h3.pow(2).mean()
    assert torch.allclose(total, expected)
    with pytest.raises(InvalidArgumentError, match=r"weights\['1'\] lists 3 weights for 2 terms"):
        lt.AuxiliaryLoss({"1": [lt.losses.l1_activity(), "l2_activation"]}, weights={"1": [1.0, 2.0, 3.0]})


@pytest.mark.parametrize(("loss", "match"), [
    ("deep_supervision", r"'deep_supervision' needs arguments.*lt.losses.deep_supervision\(num_classes=10\)"),
    ("mse", r"'mse' is a distillation loss.*lt.Distillation"),
    (lt.losses.kd_kl(), r"lt.losses.KDKL is a distillation loss"),
    ("l1", r"unknown auxiliary loss 'l1'.*'l1_activity'"),
])
def test_misnamed_auxiliary_losses_say_what_to_write(loss: object, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        lt.AuxiliaryLoss({"stage1": loss})


class _Recurrent(nn.Module):
    """One cell applied three times: a layer with three passes per step."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.cell = nn.Linear(4, 8), nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x))
        for _ in range(3):
            h = torch.tanh(self.cell(h))
        return h


@pytest.mark.parametrize("passes", ["stack", "list"])
def test_deep_supervision_on_every_pass_with_stacked_taps(passes: str) -> None:
    torch.manual_seed(0)
    model, x, y = _Recurrent(), torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    ds = lt.losses.deep_supervision(3)
    aux = lt.AuxiliaryLoss({"cell": ds}, model=model, example_input=x)
    taps = lt.Taps(model, aux.layers, passes=passes)
    outs = []
    model.cell.register_forward_hook(lambda m, i, o: outs.append(o))
    with taps:
        model(x)
    total, _ = aux(taps, targets=y)
    # Each pass is scored against the step's targets: the mean over the three passes.
    expected = torch.stack([F.cross_entropy(ds.head(o), y) for o in outs]).mean()
    assert torch.allclose(total, expected)
    per_pass = torch.stack([y, y.flip(0), y])  # one set of targets per pass
    total, _ = aux(taps, targets=per_pass)
    assert torch.allclose(total, torch.stack([F.cross_entropy(ds.head(o), t) for o, t in zip(outs, per_pass)]).mean())
    with pytest.raises(InvalidArgumentError, match=r"ran 3 times \(batch 5\).*targets have shape \(4,\)"):
        aux(taps, targets=y[:4])
