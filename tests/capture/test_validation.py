"""validate_model_activations: passes on faithful logs, fails (without raising) on wrong ones."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.capture import validation
from lens_train.capture.recorder import Recorder
from lens_train.errors import UnsupportedModelError

from bench.models import Encoder


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        return self.drop(h) * 2 + torch.zeros_like(h)


def test_valid_model_passes_and_reports(capsys: pytest.CaptureFixture) -> None:
    assert lt.validate_model_activations(Small().train(), torch.randn(3, 4), verbose=True, random_seed=3)
    out = capsys.readouterr().out
    assert "PASSED" in out and "replayed 6 ops" in out and "zeros_like x1" in out


def test_corrupted_activation_is_found(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    original = validation.record_forward

    def corrupting_record(*args):  # noqa: ANN002, ANN202 - the capture validation replays, one saved value changed
        recorder, output, elapsed = original(*args)
        rec = next(r for r in recorder.records if r.func_name == "relu")
        rec.activation = rec.activation + 1.0
        return recorder, output, elapsed

    monkeypatch.setattr(validation, "record_forward", corrupting_record)
    assert lt.validate_model_activations(Small(), torch.randn(3, 4), verbose=True) is False
    out = capsys.readouterr().out
    assert "FAILED" in out
    assert "first failing op: relu_1_2: re-running relu from its parents' saved values gives different values" in out


def test_wrong_parent_link_is_found(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    original = Recorder._template

    def wrong_template(self, args, kwargs):  # noqa: ANN001
        args_t, kwargs_t = original(self, args, kwargs)
        if args_t and isinstance(args_t[0], validation.TensorArg) and args_t[0].record_index:
            args_t = (validation.TensorArg(0), *args_t[1:])  # point every op at the input
        return args_t, kwargs_t

    monkeypatch.setattr(Recorder, "_template", wrong_template)
    assert lt.validate_model_activations(Small().eval(), torch.randn(3, 4), verbose=True) is False
    assert "different values" in capsys.readouterr().out


def test_output_that_a_plain_forward_does_not_reproduce(capsys: pytest.CaptureFixture) -> None:
    class PythonRandom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * random.random()  # randomness lens_train cannot seed

    assert lt.validate_model_activations(PythonRandom(), torch.randn(3), verbose=True) is False
    assert "differs from a plain forward pass with the same seed" in capsys.readouterr().out


def test_op_ignoring_its_input_is_a_flat_link_not_a_failure(capsys: pytest.CaptureFixture) -> None:
    class IgnoresInput(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.add(x, y, alpha=0)  # y never matters: nothing there can be wrong

    assert lt.validate_model_activations(IgnoresInput(), (torch.randn(3), torch.randn(3)), verbose=True)
    out = capsys.readouterr().out
    assert "1 parent links proven by perturbation, 1 flat" in out and "add x1" in out


def test_flat_links_are_reported_by_op(capsys: pytest.CaptureFixture) -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            big = torch.isfinite(x)  # True for any finite stand-in: flat on the whole range
            zeros = torch.zeros_like(x)  # shape only
            picked = x.new_tensor([0, 0]).long()
            return torch.where(big, x, zeros) + x[picked].sum() + (x * zeros).sum() + x[:0].sum()

    assert lt.validate_model_activations(Flat(), torch.randn(3), verbose=True)
    out = capsys.readouterr().out
    for op in ("isfinite x1", "zeros_like x1", "where x"):
        assert op in out


def test_wrong_parent_with_a_flat_first_draw_is_still_found(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong link is caught by the replay even where the op saturates (perturbation cannot tell)."""
    original = Recorder._template

    def relu_reads_the_input(self, args, kwargs):  # noqa: ANN001
        args_t, kwargs_t = original(self, args, kwargs)
        if self.records and self.records[-1].func_name == "linear":
            args_t = (validation.TensorArg(0), *args_t[1:])
        return args_t, kwargs_t

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x))

    monkeypatch.setattr(Recorder, "_template", relu_reads_the_input)
    assert lt.validate_model_activations(Net(), torch.randn(2, 3) + 5) is False


def test_failed_replay_returns_false_instead_of_raising(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def broken_run(rec, args, kwargs):  # noqa: ANN001
        raise RuntimeError("boom")

    monkeypatch.setattr(validation, "_run", broken_run)
    assert lt.validate_model_activations(Small(), torch.randn(3, 4), verbose=True) is False
    assert "raised RuntimeError: boom" in capsys.readouterr().out


def test_model_state_is_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()

    class Ema(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("ema", torch.zeros(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.ema = self.ema * 0.5 + x.mean(0)
            return x - self.ema

    ema = Ema()
    original_ema = ema.ema
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert lt.validate_model_activations(model, torch.randn(5, 4))
    assert lt.validate_model_activations(ema, torch.randn(5, 4))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert ema.ema is original_ema and torch.equal(ema.ema, torch.zeros(4))


def test_input_edited_in_place_is_not_changed_for_the_caller() -> None:
    class EditsInput(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x.mul_(2)
            return x + 1

    x = torch.randn(3)
    copy = x.clone()
    assert lt.validate_model_activations(EditsInput(), x)
    assert torch.equal(x, copy)


def test_saved_values_are_released_while_walking_back(monkeypatch: pytest.MonkeyPatch) -> None:
    live_counts: list[int] = []
    original = validation._check_record

    def counting(rec, records, report):  # noqa: ANN001
        live_counts.append(sum(r.activation is not None for r in records))
        original(rec, records, report)

    monkeypatch.setattr(validation, "_check_record", counting)
    assert lt.validate_model_activations(Encoder(16, 2, 2).eval(), torch.randn(2, 5, 16))
    assert live_counts == sorted(live_counts, reverse=True)
    assert live_counts[-1] == 1 and live_counts[0] == len(live_counts)


def test_four_block_transformer_validates_in_train_mode() -> None:
    # its speed is reported by bench/capture.py, not asserted here
    assert lt.validate_model_activations(Encoder(64, 4).train(), torch.randn(8, 32, 64), random_seed=0)


def test_unsupported_contexts_raise_clear_errors() -> None:
    class Vmapped(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.vmap(torch.sin)(x) + 1

    class FuncGrad(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.func.grad(lambda y: y.sin().sum())(x)

    for model in (Vmapped(), FuncGrad()):
        with pytest.raises(UnsupportedModelError, match=r"torch.func transforms .* use torch.autograd.grad"):
            lt.log_forward_pass(model, torch.randn(2, 3))
        with pytest.raises(UnsupportedModelError, match="torch.func"):
            lt.validate_model_activations(model, torch.randn(2, 3))
    scripted = torch.jit.script(nn.Linear(3, 3))
    with pytest.raises(UnsupportedModelError, match="TorchScript"):
        lt.validate_model_activations(scripted, torch.randn(2, 3))
    compiled = torch.compile(nn.Linear(3, 3))
    with pytest.raises(UnsupportedModelError, match=r"model\._orig_mod"):
        lt.validate_model_activations(compiled, torch.randn(2, 3))
    with pytest.raises(UnsupportedModelError, match="torch.compile"):
        lt.log_forward_pass(nn.Sequential(compiled), torch.randn(2, 3))


def test_a_forward_that_changes_parameters_in_place_is_reported(capsys: pytest.CaptureFixture) -> None:
    class Drifts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.shared = self.lin  # (a parameter under two names is one parameter)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                self.lin.bias.mul_(1.0)  # the same values, a new version: no two passes are alike
            return self.lin(x)

    assert lt.validate_model_activations(Drifts(), torch.randn(2, 3), verbose=True) is False
    assert "changes parameters in place" in capsys.readouterr().out
    assert lt.validate_model_activations(nn.Sequential(nn.Linear(3, 3)), torch.randn(2, 3))
