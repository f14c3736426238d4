"""The structure summary: recurrence, branching, conditionals and the module hierarchy."""

from __future__ import annotations

import torch
from torch import nn

import lens_train as lt
from tests.models import SimpleRecurrent
from tests.zoo.control import Conditional, NetworkOrganizationDemo, TwoResidualAdds


def test_network_organization_demo() -> None:
    model = NetworkOrganizationDemo()
    x = torch.rand(2, 5) + 0.1
    log = lt.log_forward_pass(model, x)
    assert len(log) == 21
    inner = log["submodule1.submodule2"]
    assert inner.layer_type == "add" and inner.parent_layers == ["cos_1_7", "mul_1_10"]
    with torch.no_grad():
        h = model.submodule1.fc((1 / x) ** 2).relu()
        expected = torch.cos(h) + torch.sin(h) * torch.tan(h)
    assert torch.allclose(inner.activation, expected)
    cond = log["gt_1_2"]
    assert cond.is_conditional and cond.bool_values == [True]
    assert cond.parent_layers == ["sum_1_1"]
    assert cond.branch_start_layers == ["rtruediv_1_3"]  # the taken branch: 1 / x
    assert log.structure == {"is_recurrent": False, "max_passes": 1, "is_branching": True, "has_conditionals": True}
    text = str(log)
    assert "purely feedforward, with branching; with conditional (if-then) branching" in text


def test_else_branch_is_linked() -> None:
    log = lt.log_forward_pass(NetworkOrganizationDemo(), -torch.rand(2, 5) - 0.1)
    cond = log["gt_1_2"]
    assert cond.bool_values == [False]
    assert [log[lab].func_name for lab in cond.branch_start_layers] == ["abs"]  # torch.log(x.abs())


def test_module_hierarchy() -> None:
    log = lt.log_forward_pass(NetworkOrganizationDemo(), torch.rand(2, 5) + 0.1)
    assert list(log.modules) == ["submodule1", "submodule1.fc", "submodule1.submodule2", "fc"]
    sub2 = log.modules["submodule1.submodule2"]
    assert (sub2.module_type, sub2.depth, sub2.num_passes, sub2.num_params) == ("Submodule2", 2, 1, 0)
    call = log.modules["submodule1.submodule2:1"]
    assert call["parent"] == "submodule1:1" and call["inputs"] == ["relu_1_6"] and call["outputs"] == ["add_1_11"]
    assert log.modules["submodule1"].calls[0]["outputs"] == ["mul_2_12"]
    assert log.modules["submodule1"].num_params == 30
    assert log["cos_1_7"].containing_modules == ["submodule1:1", "submodule1.submodule2:1"]
    text = str(log)
    assert "\t\tsubmodule1 (Submodule1)\n\t\t  submodule1.fc (Linear)\n\t\t  submodule1.submodule2 (Submodule2)" in text


def test_recurrent_summary_and_module_passes() -> None:
    log = lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5))
    assert "recurrent (at most 4 loops), without branching; no conditional (if-then) branching" in str(log)
    assert "fc (Linear) (x4)" in str(log)
    assert [c["pass_num"] for c in log.modules["fc"].calls] == [1, 2, 3, 4]
    assert log.modules["fc:3"]["outputs"] == ["linear_1_1:3"]


def test_branching_means_a_tensor_feeding_several_ops() -> None:
    assert lt.log_forward_pass(TwoResidualAdds(), torch.randn(2, 4)).structure["is_branching"]
    chain = lt.log_forward_pass(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(2, 4))
    assert not chain.structure["is_branching"]
    assert "without branching" in str(chain)


def test_conditionals_always_true_false_nested_chained() -> None:
    x = torch.randn(3, 4)
    log = lt.log_forward_pass(Conditional("true"), x)
    (cond,) = [layer for layer in log if layer.is_conditional]
    assert cond.bool_values == [True] and log[cond.branch_start_layers[0]].func_name == "exp"

    log = lt.log_forward_pass(Conditional("false"), x)
    (cond,) = [layer for layer in log if layer.is_conditional]
    assert cond.bool_values == [False] and log[cond.branch_start_layers[0]].func_name == "mul"

    log = lt.log_forward_pass(Conditional("nested"), x)
    conds = [layer for layer in log if layer.is_conditional]
    assert [c.func_name for c in conds] == ["lt", "any"] and [c.bool_values for c in conds] == [[True], [False]]
    assert log[conds[1].branch_start_layers[0]].func_name == "sigmoid"

    log = lt.log_forward_pass(Conditional("chained"), x)
    conds = [layer for layer in log if layer.is_conditional]
    # `a and (b or c)` short-circuits after b; `d or e` evaluates both (both False)
    assert [c.func_name for c in conds] == ["gt", "lt", "gt", "lt"]
    assert [c.bool_values for c in conds] == [[True], [True], [False], [False]]
    assert log.structure["has_conditionals"]


def test_no_conditionals_without_python_bool() -> None:
    log = lt.log_forward_pass(nn.Sequential(nn.Linear(4, 2)), torch.randn(1, 4))
    assert not log.structure["has_conditionals"] and "no conditional (if-then) branching" in str(log)


def test_module_parameter_counts_follow_a_model_that_changes_between_captures() -> None:
    # counts are cached by (parameter address, size): a resized or added parameter must show
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    x = torch.randn(2, 3)
    assert lt.log_forward_pass(model, x).modules["2"].num_params == 10
    model[2][0] = nn.Linear(4, 5)
    model[2].append(nn.Linear(5, 2))
    log = lt.log_forward_pass(model, x)
    assert (log.modules["2"].num_params, log.modules["2.1"].num_params, log.modules["0"].num_params) == (37, 12, 16)
    counts = lt.capture.build.module_param_counts(model)
    counts["2"] = 0  # the caller's copy: the cache is not touched
    assert lt.log_forward_pass(model, x).modules["2"].num_params == 37
