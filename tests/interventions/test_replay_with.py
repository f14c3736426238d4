"""``log.replay_with`` (recompute downstream of edits from saved values) and ``lt.patch``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import DifferentPathError, InvalidArgumentError


class Gate(nn.Module):
    """A branch on a tensor, a scalar read with .item(), and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.out, self.drop = nn.Linear(4, 4), nn.Linear(4, 2), nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        scale = h.mean().item()
        if h.sum() > 0:
            h = self.drop(h) * scale
        else:
            h = h - 1
        return self.out(h)


def _gate() -> Gate:
    torch.manual_seed(0)
    return Gate().train()


def test_values_equal_a_full_rerun_with_dropout_and_share_the_unreached_layers() -> None:
    x = torch.randn(3, 4)
    log = lt.log_forward_pass(_gate(), x, random_seed=3, replayable=True)
    kept = [layer.activation for layer in log.layers]
    edit = {"out": lambda t: t * 2}
    replayed = log.replay_with(edit)
    full = lt.intervene(_gate(), x, edits=edit, random_seed=3)
    assert torch.equal(replayed.output, full.output.detach())
    assert replayed["input_1_0"] is log["input_1_0"] and replayed["out"] is not log["out"]
    assert [layer.activation for layer in log.layers] == kept and log["out"].edit is None
    assert replayed["out"].edit == "function <lambda> on the output of out:1"
    assert torch.equal(replayed["out"].original_activation, log["out"].activation)


def test_an_edit_that_changes_a_branch_or_a_read_scalar_raises_unless_rerun_is_allowed() -> None:
    x = torch.randn(3, 4)
    log = lt.log_forward_pass(_gate(), x, random_seed=3, replayable=True)  # the log keeps its model for a rerun
    with pytest.raises(DifferentPathError, match="item"):
        log.replay_with({"relu_1_2": lambda t: t + 1})  # .item() reads another mean
    rerun = log.replay_with({"relu_1_2": lambda t: t + 1}, fallback="rerun")
    full = lt.intervene(_gate(), x, edits={"relu_1_2": lambda t: t + 1}, random_seed=3)
    assert torch.equal(rerun.output.detach(), full.output.detach())


class Branch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        return y + 1 if y.sum() > 0 else y - 1


def test_a_condition_that_flips_raises_and_one_that_holds_keeps_the_recorded_path() -> None:
    x = torch.ones(2, 3)
    log = lt.log_forward_pass(Branch(), x, replayable=True)
    assert torch.equal(log.replay_with({"mul_1_1": lambda t: t * 3}).output, torch.full((2, 3), 7.0))
    with pytest.raises(DifferentPathError, match="condition on it becomes False"):
        log.replay_with({"mul_1_1": lambda t: -t})
    assert torch.equal(log.replay_with({"mul_1_1": lambda t: -t}, fallback="rerun").output, torch.full((2, 3), -3.0))


def test_replay_needs_a_replayable_capture_and_unchanged_parameters() -> None:
    model, x = _gate().eval(), torch.randn(3, 4)
    with pytest.raises(InvalidArgumentError, match="replayable=True"):
        lt.log_forward_pass(model, x).replay_with({"out": "zero"})
    with pytest.raises(InvalidArgumentError, match="layers_to_save='all'"):
        lt.log_forward_pass(model, x, layers_to_save=None, replayable=True)
    log = lt.log_forward_pass(model, x, replayable=True)
    with torch.no_grad():
        model.fc.weight.mul_(2)
    with pytest.raises(InvalidArgumentError, match="fc.weight"):
        log.replay_with({"out": "zero"})


def test_a_function_edit_of_a_module_with_several_outputs_asks_for_one_label() -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(3, 3, batch_first=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, (h, c) = self.rnn(x)
            return out.sum() + h.sum() + c.sum()

    log = lt.log_forward_pass(Wrapped(), torch.randn(2, 4, 3), replayable=True)
    with pytest.raises(InvalidArgumentError, match="returned 3 tensors"):
        log.replay_with({"rnn": lambda t: t})
    zeroed = log.replay_with({"rnn": "zero"})  # a built-in edit applies to each tensor
    assert float(zeroed.output) == 0.0


def test_patch_recovers_the_clean_metric_layer_by_layer_and_position_by_position(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 1))
    clean, corrupt = torch.randn(1, 5, 4), torch.randn(1, 5, 4)

    def metric(out: torch.Tensor) -> float:
        return out.sum().item()

    result = lt.patch(model, clean, corrupt, ["0", "1"], metric, heatmap=tmp_path / "patch.png")
    assert [r["layer"] for r in result.rows] == ["linear_1_1", "tanh_1_2"]
    assert all(math.isclose(r["recovered"], 1.0, rel_tol=1e-5) for r in result.rows)
    assert (tmp_path / "patch.png").stat().st_size > 0
    by_position = lt.patch(model, clean, corrupt, "1", metric, seq_dim=1)
    assert by_position.positions == [0, 1, 2, 3, 4] and len(by_position.matrix()) == 1
    # positions act independently here: their recovered fractions add up to the whole layer's
    assert math.isclose(sum(r["recovered"] for r in by_position.rows), 1.0, rel_tol=1e-4)
    for p, r in enumerate(by_position.rows):
        patched = corrupt.clone()
        patched[:, p] = clean[:, p]
        want = metric(model(patched))
        assert math.isclose(r["metric"], want, rel_tol=1e-5, abs_tol=1e-6)
    assert "recovered" in str(by_position)


def test_patch_refuses_inputs_that_take_different_paths() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
    with pytest.raises(DifferentPathError, match="different paths"):
        lt.patch(model, torch.randn(2, 4), torch.randn(3, 4), ["0"], lambda out: out.sum().item())


def test_replayed_dropout_draws_its_recorded_mask_and_leaves_the_callers_random_stream_alone() -> None:
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train(), torch.randn(16, 4)
    log = lt.log_forward_pass(model, x, random_seed=3, replayable=True)
    torch.manual_seed(5)
    want = torch.rand(4)
    torch.manual_seed(5)
    replayed = log.replay_with({"0": lambda t: t * 1.5})
    assert torch.equal(torch.rand(4), want)
    full = lt.intervene(model, x, edits={"0": lambda t: t * 1.5}, random_seed=3)
    assert torch.equal(replayed.output, full.output.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_replay_with_dropout_on_cuda_equals_a_full_rerun() -> None:
    model, x = _gate().cuda(), torch.randn(64, 4, device="cuda")
    log = lt.log_forward_pass(model, x, random_seed=3, replayable=True)
    assert log.replay_state.records[-1].rng_state[1], "the CUDA random states are recorded"
    edit = {"out": lambda t: t * 2}
    full = lt.intervene(model, x, edits=edit, random_seed=3)
    assert torch.equal(log.replay_with(edit).output, full.output.detach())


def test_a_replayable_log_refreshed_with_new_input_replays_from_the_new_values() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).eval()
    log = lt.log_forward_pass(model, torch.randn(2, 4), replayable=True)
    new = torch.randn(3, 4)
    log.save_new_activations(model, new)
    edit = {"1": lambda t: t * 0.5}
    assert torch.equal(log.replay_with(edit).output, lt.intervene(model, new, edits=edit).output.detach())


def test_an_uninitialized_buffer_filled_in_place_replays_like_the_model() -> None:
    class Fill(nn.Module):  # the shape of an MoE layer's output buffer (empty_like, then filled)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = x * 2
            out = torch.empty_like(h)
            out[:] = h + 1
            return out * 3

    x = torch.randn(2, 3)
    log = lt.log_forward_pass(Fill(), x, replayable=True)
    edited = log.replay_with({"mul_1_1": lambda t: t - 5})
    assert torch.equal(edited.output, lt.intervene(Fill(), x, edits={"mul_1_1": lambda t: t - 5}).output)
