"""Which ops are passes of one layer: loops of every kind, and look-alikes that are not loops."""

from __future__ import annotations

import gc
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens_train as lt
from lens_train.capture import calls
from lens_train.capture.api import record_forward
from lens_train.capture.passes import group_passes
from lens_train.capture.recorder import CapturePlan
from tests.models import SimpleRecurrent, TanhLoop
from tests.zoo.control import (
    BranchInLoop,
    IndependentIterations,
    InterleavedLoops,
    LSTMCellLoop,
    LSTMCellStep,
    NestedLoops,
    ResidualStack,
    SharedReluResBlock,
    SinLoop,
    SingleIteration,
    TwoLoopsSameWeights,
    TwoResidualAdds,
    WhileLoop,
)

from bench.models import Encoder, LongLoop


def passes_of(log: lt.ModelLog) -> dict[str, int]:
    """Layer label (no pass) -> number of passes, for every layer."""
    return {layer.layer_label_no_pass: layer.num_passes for layer in log}


def test_simple_recurrent_labels_and_values() -> None:
    model = SimpleRecurrent()
    x = torch.randn(6, 5)
    log = lt.log_forward_pass(model, x)
    assert log.layer_labels_no_pass == ["input_1_0", "linear_1_1", "add_1_2", "mul_1_3", "output_1_4"]
    assert passes_of(log) == {"input_1_0": 1, "linear_1_1": 4, "add_1_2": 4, "mul_1_3": 4, "output_1_4": 1}
    assert log.structure["is_recurrent"] and log.structure["max_passes"] == 4
    with torch.no_grad():
        expected = model.fc(log["mul_1_3:1"].activation)
        first = model.fc(x)
    assert torch.equal(log["linear_1_1:1"].tensor_contents, first)
    assert torch.equal(log["linear_1_1:2"].tensor_contents, expected)
    assert log["fc:2"] is log["linear_1_1:2"]
    assert log.layer_passes("linear_1_1") == [log[f"linear_1_1:{i}"] for i in range(1, 5)]
    assert log["add_1_2:3"].pass_labels == [f"add_1_2:{i}" for i in range(1, 5)]
    assert log["add_1_2:3"].pass_num == 3 and log["add_1_2:3"].layer_label_no_pass == "add_1_2"
    assert "linear_1_1:2 (2/4 passes)" in str(log)
    assert "recurrent (at most 4 loops)" in str(log)


def test_two_parameter_free_adds_are_not_passes() -> None:
    log = lt.log_forward_pass(TwoResidualAdds(), torch.randn(3, 4))
    assert [lab for lab in log.layer_labels if lab.startswith("add")] == ["add_1_2", "add_2_4"]
    assert not log.structure["is_recurrent"]


def test_four_block_transformer_is_feedforward() -> None:
    log = lt.log_forward_pass(Encoder(16, 4, 2).eval(), torch.randn(2, 5, 16))
    assert not log.structure["is_recurrent"]
    assert all(layer.num_passes == 1 for layer in log)
    assert "purely feedforward" in str(log)


def test_loop_over_distinct_blocks_with_shared_activation_is_feedforward() -> None:
    log = lt.log_forward_pass(ResidualStack(3), torch.randn(2, 4))
    assert all(layer.num_passes == 1 for layer in log)
    assert log.modules["act"].num_passes == 3
    assert log["act:2"].layer_label == "gelu_2_5"


def test_lstm_cell_outputs_are_two_tensors_of_one_op() -> None:
    model = LSTMCellStep()
    x = torch.randn(3, 4)
    log = lt.log_forward_pass(model, x)
    cells = [layer for layer in log if layer.func_name == "lstm_cell"]
    assert [c.layer_label for c in cells] == ["lstmcell_1_2", "lstmcell_2_3"]
    assert [c.num_passes for c in cells] == [1, 1] and [c.output_index for c in cells] == [0, 1]
    h, c = model.cell(x)
    assert torch.equal(cells[0].activation, h.detach()) and torch.equal(cells[1].activation, c.detach())
    assert not log.structure["is_recurrent"]


def test_lstm_cell_in_a_loop_has_one_pass_per_step() -> None:
    log = lt.log_forward_pass(LSTMCellLoop(), torch.randn(5, 3, 4))
    cell_layers = {layer.layer_label_no_pass: layer.num_passes for layer in log if layer.func_name == "lstm_cell"}
    assert list(cell_layers.values()) == [5, 5]
    assert log.modules["cell"].num_passes == 5


def test_module_called_in_python_loop() -> None:
    log = lt.log_forward_pass(TanhLoop(4, steps=3), torch.randn(2, 4))
    assert passes_of(log) == {"input_1_0": 1, "linear_1_1": 3, "tanh_1_2": 3, "output_1_3": 1}


def test_branch_inside_loop() -> None:
    log = lt.log_forward_pass(BranchInLoop(), torch.randn(2, 4))
    got = {k: v for k, v in passes_of(log).items() if not k.startswith(("input", "output"))}
    assert got == {"linear_1_1": 2, "relu_1_2": 2, "mul_1_3": 4, "linear_2_4": 2, "sigmoid_1_5": 2}


def test_nested_loops() -> None:
    log = lt.log_forward_pass(NestedLoops(), torch.randn(2, 4))
    got = {k: v for k, v in passes_of(log).items() if not k.startswith(("input", "output"))}
    assert got == {"linear_1_1": 6, "tanh_1_2": 6, "linear_2_3": 2, "add_1_4": 2}


def test_two_interleaved_weight_shared_loops() -> None:
    log = lt.log_forward_pass(InterleavedLoops(), torch.randn(2, 4))
    got = {k: v for k, v in passes_of(log).items() if not k.startswith(("input", "output"))}
    assert got == {"neg_1_1": 1, "linear_1_2": 3, "tanh_1_3": 3, "linear_2_4": 3, "sin_1_5": 3, "mul_1_6": 1}


def test_one_module_driving_two_loops_gives_two_layers() -> None:
    log = lt.log_forward_pass(TwoLoopsSameWeights(), torch.randn(2, 4))
    linears = [lab for lab, n in passes_of(log).items() if lab.startswith("linear")]
    assert linears == ["linear_1_1", "linear_2_3"]
    assert log.modules["f"].num_passes == 6
    assert log["f:4"] is log["linear_2_3:1"]


def test_data_dependent_while() -> None:
    x = torch.randn(3, 4)
    steps, y = 0, x * 10
    while y.norm() > 1:
        y, steps = y / 2, steps + 1
    log = lt.log_forward_pass(WhileLoop(), x)
    got = passes_of(log)
    assert got["truediv_1_4"] == steps
    assert got["norm_1_2"] == got["gt_1_3"] == steps + 1
    assert log["gt_1_3:1"].bool_values == [True] and log[f"gt_1_3:{steps + 1}"].bool_values == [False]


def test_single_iteration_loop_is_not_recurrent() -> None:
    log = lt.log_forward_pass(SingleIteration(), torch.randn(2, 4))
    assert not log.structure["is_recurrent"]
    assert log.layer_labels == ["input_1_0", "linear_1_1", "add_1_2", "output_1_3"]


def test_parameter_free_loop_feeding_itself() -> None:
    log = lt.log_forward_pass(SinLoop(), torch.randn(2, 4))
    assert log.layer_labels == ["input_1_0", "sin_1_1:1", "mul_1_2:1", "sin_1_1:2", "mul_1_2:2", "sin_1_1:3",
                                "mul_1_2:3", "output_1_3"]


def test_independent_iterations_are_separate_layers() -> None:
    log = lt.log_forward_pass(IndependentIterations(), torch.randn(3, 4))
    assert all(layer.num_passes == 1 for layer in log)
    assert [lab for lab in log.layer_labels if lab.startswith("relu")] == ["relu_1_2", "relu_2_4", "relu_3_6"]


def test_shared_parameter_free_module_in_two_contexts_is_not_recurrence() -> None:
    log = lt.log_forward_pass(SharedReluResBlock(), torch.randn(1, 2, 5, 5))
    assert not log.structure["is_recurrent"]
    assert log["relu:1"].layer_label == "relu_1_2" and log["relu:2"].layer_label == "relu_2_5"
    assert log.modules["relu"].num_passes == 2


def test_functional_wrapper_first_call_lines_up_with_later_calls() -> None:
    # the first call of F.relu is run instrumented (to learn it wraps one op); it must
    # land in the same layer as the later calls
    calls._THIN_FUNCTIONS.discard(F.relu)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(3):
                x = F.relu(self.fc(x))
            return x

    log = lt.log_forward_pass(Loop(), torch.randn(2, 4))
    assert passes_of(log)["relu_1_2"] == 3
    assert F.relu in calls._THIN_FUNCTIONS  # learned during the capture
    assert [layer.func_name for layer in log].count("relu") == 3


class ParameterFreeLongLoop(nn.Module):
    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = torch.sin(x) * 0.9 + x.norm()
        return x


class CountingList(list):
    """A list that counts item reads: a machine-independent measure of the grouping's work."""

    reads = 0

    def __getitem__(self, i):  # noqa: ANN001, ANN204
        CountingList.reads += 1
        return super().__getitem__(i)


@pytest.mark.parametrize("make", [lambda steps: LongLoop(steps, d=4), ParameterFreeLongLoop])
def test_long_loop_grouping_work_is_linear(make) -> None:
    def grouping_work(steps: int) -> tuple[int, int]:
        recorder, _, _ = record_forward(make(steps), torch.randn(2, 4), None, CapturePlan(save="none"), 0)
        CountingList.reads = 0
        groups = group_passes(CountingList(recorder.records), frozenset({"fc"}))
        assert max(len(g.members) for g in groups) == steps
        return CountingList.reads, len(recorder.records)

    small, n_small = grouping_work(250)
    large, n_large = grouping_work(2000)
    assert n_large > 7.9 * n_small
    assert large < 8.5 * small  # linear: ~8x; quadratic would be ~64x


def test_long_loop_post_processing_time_per_op() -> None:
    recorder, _, _ = record_forward(ParameterFreeLongLoop(1000), torch.randn(2, 4), None, CapturePlan(save="none"), 0)
    gc.disable()  # as during a capture
    try:
        start = time.perf_counter()
        group_passes(recorder.records, frozenset())
        per_op = (time.perf_counter() - start) / len(recorder.records)
    finally:
        gc.enable()
    assert per_op < 50e-6  # measured ~1-3 us on a shared 2-core machine


def test_thousand_iteration_loop_labels() -> None:
    log = lt.log_forward_pass(LongLoop(1000, d=4), torch.randn(2, 4), layers_to_save=None)
    assert passes_of(log) == {"input_1_0": 1, "linear_1_1": 1000, "tanh_1_2": 1000, "mul_1_3": 1000, "add_1_4": 1000,
                              "output_1_5": 1}
    assert log["fc:1000"] is log["linear_1_1:1000"]
