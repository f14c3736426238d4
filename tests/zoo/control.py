"""Loops of every kind and Python conditionals on tensors.

The same classes serve tests/capture/test_passes.py and test_structure.py, which check
how their ops are grouped into passes (the README's SimpleRecurrent and the plain
weight-shared loops come from tests/models and bench/models).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.models import LongLoop
from tests.models import SimpleRecurrent, TanhLoop

from . import zoo
from .tensor_ops import x34


class TwoResidualAdds(nn.Module):
    """``x = x + a(x); x = x + b(x)`` with parameter-free a and b: two adds, not passes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.ReLU()
        self.b = nn.Tanh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.a(x)
        x = x + self.b(x)
        return x


class ResidualStack(nn.Module):
    """A loop over distinct blocks with a residual add outside them: feedforward."""

    def __init__(self, blocks: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(blocks))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = x + self.act(blk(x))
        return x


class LSTMCellStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, c = self.cell(x)
        return h * c


class LSTMCellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 4)

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        h = c = torch.zeros(xs.shape[1], 4)
        for x in xs:
            h, c = self.cell(x, (h, c))
        return h


class BranchInLoop(nn.Module):
    """Odd and even steps take different weight-shared branches."""

    def __init__(self) -> None:
        super().__init__()
        self.even = nn.Linear(4, 4)
        self.odd = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(4):
            if i % 2 == 0:
                x = self.even(x).relu()
            else:
                x = self.odd(x).sigmoid()
            x = x * 2
        return x


class NestedLoops(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)
        self.outer = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            for _ in range(3):
                x = self.inner(x).tanh()
            x = self.outer(x) + 1
        return x


class InterleavedLoops(nn.Module):
    """Two recurrences with their own weights advanced in the same loop, then mixed."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(4, 4)
        self.g = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x, -x
        for _ in range(3):
            a = self.f(a).tanh()
            b = self.g(b).sin()
        return a * b


class TwoLoopsSameWeights(nn.Module):
    """One module driving two separate loops: two layers with three passes each."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x
        for _ in range(3):
            a = self.f(a)
        b = x.flip(0)
        for _ in range(3):
            b = self.f(b)
        return a + b


class WhileLoop(nn.Module):
    """A data-dependent ``while``: halve until the norm is small."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * 10
        while x.norm() > 1:
            x = x / 2
        return x


class SingleIteration(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(1):
            x = self.fc(x) + 1
        return x


class SinLoop(nn.Module):
    """A parameter-free body whose iterations feed each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.sin(x) * 2
        return x


class IndependentIterations(nn.Module):
    """A parameter-free loop whose iterations do not feed each other: separate layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [torch.relu(x[i]) for i in range(3)]
        return torch.stack(outs)


class SharedReluResBlock(nn.Module):
    """A ResNet block using its one ``self.relu`` twice: two layers, module passes relu:1/relu:2."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv1(x))
        out = self.conv2(out)
        return self.relu(out + x)


# -- conditionals -------------------------------------------------------------------------
class Submodule2(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x) + torch.sin(x) * torch.tan(x)


class Submodule1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.submodule2 = Submodule2()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.submodule2(self.fc(x).relu()) * 2


class NetworkOrganizationDemo(nn.Module):
    """An ``if`` on the data, then a nested ``submodule1.submodule2``."""

    def __init__(self) -> None:
        super().__init__()
        self.submodule1 = Submodule1()
        self.fc = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.sum(x) > 0:
            x = 1 / x
        else:
            x = torch.log(x.abs())
        x = x ** 2
        y = self.submodule1(x)
        z = self.fc(x) + y
        return torch.tanh(torch.relu(z) * y + x) - 1


class Conditional(nn.Module):
    """``mode`` picks the condition: always true, always false, nested, chained and/or."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.mode == "true" and (h.abs().sum() >= 0):
            h = h.exp()
        elif self.mode == "false" and (h.abs().sum() < 0):
            h = h.exp()
        elif self.mode == "nested" and h.mean() < 10:
            if (h > 100).any():
                h = h * 0
            else:
                h = h.sigmoid()
        elif self.mode == "chained":
            if (h.sum() > -1e6) and (h.max() < 1e6 or h.min() > 0):
                h = h.tanh()
            if h.sum() > 1e6 or h.norm() < 0:
                h = h + 100
        return h * 2


zoo("loop_simple_recurrent")(lambda: (SimpleRecurrent(), torch.randn(6, 5)))
zoo("loop_module_in_python_loop")(lambda: (TanhLoop(4), x34()))
zoo("loop_branch_inside")(lambda: (BranchInLoop(), x34()))
zoo("loop_nested")(lambda: (NestedLoops(), x34()))
zoo("loop_interleaved_weight_shared")(lambda: (InterleavedLoops(), x34()))
zoo("loop_two_loops_same_weights")(lambda: (TwoLoopsSameWeights(), x34()))
zoo("loop_data_dependent_while")(lambda: (WhileLoop(), x34()))
zoo("loop_single_iteration")(lambda: (SingleIteration(), x34()))
zoo("loop_long_200")(lambda: (LongLoop(200, d=4), x34()))
zoo("loop_parameter_free")(lambda: (SinLoop(), x34()))
zoo("loop_independent_iterations")(lambda: (IndependentIterations(), x34()))
zoo("loop_lstm_cell")(lambda: (LSTMCellLoop(), torch.randn(5, 3, 4)))
zoo("two_residual_adds")(lambda: (TwoResidualAdds(), x34()))
zoo("residual_stack_distinct_blocks")(lambda: (ResidualStack(), x34()))
zoo("lstm_cell_two_outputs")(lambda: (LSTMCellStep(), x34()))
zoo("resnet_block_shared_relu")(lambda: (SharedReluResBlock(), torch.randn(1, 2, 5, 5)))
zoo("conditional_network_organization_demo")(lambda: (NetworkOrganizationDemo(), torch.rand(2, 5) + 0.1))
zoo("conditional_demo_else_branch")(lambda: (NetworkOrganizationDemo(), -torch.rand(2, 5) - 0.1))
for _mode in ("true", "false", "nested", "chained"):
    zoo(f"conditional_{_mode}")(lambda mode=_mode: (Conditional(mode), x34()))
