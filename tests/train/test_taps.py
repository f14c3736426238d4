"""Taps: values and gradients equal hand-written forward hooks; passes, missing, in-place, memory."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import lens_train as lt
from lens_train.errors import AmbiguousLayerError, LayerNotFoundError, TapError, UnsupportedModelError
from tests.models import TanhLoop


class BNNet(nn.Module):
    """Conv -> BN -> ReLU(inplace) -> ...: the BN output is rewritten in place."""

    def __init__(self, inplace: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU(inplace=inplace)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn(self.conv(x)))
        return self.fc(h.mean((2, 3)))


class OpNet(nn.Module):
    """Ops directly in the module body (op-level taps), one followed by an in-place op."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        s = h * 2.0  # mul_1: op tap, then rewritten by add_ below
        s.add_(1.0)
        return self.b(torch.tanh(s)).sum(1)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def _fresh(cls: type, *args: object) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a = cls(*args)
    b = cls(*args)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("inplace", [True, False])
def test_module_tap_gradients_equal_forward_hooks(inplace: bool) -> None:
    m1, m2 = _fresh(BNNet, inplace)
    x = torch.randn(2, 3, 5, 5)
    taps = lt.Taps(m1, ["bn"])
    for _ in range(2):  # step 1 learns whether to clone; step 2 uses what it learned
        m1.zero_grad(), m2.zero_grad()
        with taps:
            out = m1(x)
        (out.sum() + taps["bn"].pow(2).mean()).backward()
        saved = {}
        h = m2.bn.register_forward_hook(lambda m, i, o: saved.__setitem__("bn", o.clone()))
        out2 = m2(x)
        (out2.sum() + saved["bn"].pow(2).mean()).backward()
        h.remove()
        assert torch.equal(taps["bn"], saved["bn"])
        for g1, g2 in zip(_grads(m1), _grads(m2)):
            assert torch.allclose(g1, g2, atol=1e-6)
    assert taps._hooks.policies[0].rewritten is inplace


@pytest.mark.parametrize("label", ["mul_1", "tanh_1"])
def test_op_tap_gradients_equal_hand_written(label: str) -> None:
    m1, m2 = _fresh(OpNet)
    x = torch.randn(5, 4)
    taps = lt.Taps(m1, [label], example_input=x)
    assert taps.selection.specs[0].kind == "op"
    for _ in range(2):
        m1.zero_grad(), m2.zero_grad()
        with taps:
            out = m1(x)
        (out.sum() + taps[label].abs().mean()).backward()
        h = torch.tanh(m2.a(x))
        s = h * 2.0
        ref = (s if label == "mul_1" else h).clone()
        s.add_(1.0)
        out2 = m2.b(torch.tanh(s)).sum(1)
        (out2.sum() + ref.abs().mean()).backward()
        assert torch.equal(taps[label], ref)
        for g1, g2 in zip(_grads(m1), _grads(m2)):
            assert torch.allclose(g1, g2, atol=1e-6)


def test_op_tap_index_is_stable_when_a_branch_elsewhere_differs() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(3, 3)
            self.body = OpNet()
            self.pre.weight.data[:] = 0

        def forward(self, x: torch.Tensor, extra: bool = False) -> torch.Tensor:
            h = self.pre(x[:, :3]).sum() * 0
            if extra:
                h = h * 3.0  # a mul outside the tapped module
            return self.body(torch.cat([x[:, :3], x[:, 3:]], 1)) + h

    model = Branchy()
    x = torch.randn(2, 4)
    log = lt.get_model_metadata(model, x)
    label = next(lay.layer_label for lay in log if lay.layer_type == "mul" and lay.containing_modules == ["body:1"])
    taps = lt.Taps(model, [label], example_input=x)
    with taps:
        model(x, extra=True)
    expected = torch.tanh(model.body.a(x)) * 2.0
    assert torch.allclose(taps[label], expected)


def test_structured_outputs_keep_their_structure() -> None:
    class Pair(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            return x * 2, {"h": x + 1}

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pair = Pair()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a, d = self.pair(x)
            d["h"].mul_(3)  # in place on a structured output: the tap keeps x + 1
            return a + d["h"]

    model, x = Net(), torch.ones(2)
    taps = lt.Taps(model, "pair")
    with taps:
        model(x)
    a, d = taps["pair"]
    assert torch.equal(a, x * 2) and torch.equal(d["h"], x + 1)


def test_passes_policies_and_explicit_pass() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    model, x = Twice(), torch.randn(3, 2)
    first = model.fc(x)
    second = model.fc(torch.relu(first))
    with lt.Taps(model, "fc") as taps:
        model(x)
    with pytest.raises(TapError, match=r"fc:1, fc:2.*passes='list'"):
        taps["fc"]
    assert torch.allclose(taps["fc:2"], second)
    for passes, expected in [("first", first), ("last", second), ("stack", torch.stack([first, second]))]:
        taps = lt.Taps(model, "fc", passes=passes)
        with taps:
            model(x)
        assert torch.allclose(taps["fc"], expected)
    taps = lt.Taps(model, ["fc:1"], passes="list")
    with taps:
        model(x)
    assert torch.allclose(taps["fc:1"], first) and taps.num_passes("fc:1") == 2


def test_recurrent_op_passes() -> None:
    model, x = TanhLoop(3, steps=3), torch.randn(2, 3)
    log = lt.log_forward_pass(model, x)
    taps = lt.Taps(model, ["linear_1_1:2", "tanh_1"], example_input=x, passes="list")
    with taps:
        model(x)
    assert torch.allclose(taps["linear_1_1:2"], log["linear_1_1:2"].activation)
    assert len(taps["tanh_1"]) == 3 and torch.allclose(taps["tanh_1"][2], log["tanh_1_2:3"].activation)


def test_missing_error_and_skip() -> None:
    class Cond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x: torch.Tensor, use_b: bool) -> torch.Tensor:
            return self.b(x) if use_b else self.a(x)

    model, x = Cond(), torch.randn(1, 2)
    taps = lt.Taps(model, ["a", "b"])
    with taps:
        model(x, False)
    with pytest.raises(TapError, match="missing='skip'"):
        taps["b"]
    taps = lt.Taps(model, ["a", "b"], missing="skip")
    with taps:
        model(x, False)
    assert taps["b"] is None and [k for k, _ in taps.items()] == ["a"] and "b" not in taps


def test_names_resolve_like_users_write_them() -> None:
    inner = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    holder = nn.Module()
    holder.net = inner
    holder.forward = lambda x: inner(x)  # type: ignore[method-assign]
    taps = lt.Taps(nn.DataParallel(holder), ["module.net.0", "1"])
    x = torch.randn(2, 2)
    with taps:
        holder(x)
    assert torch.allclose(taps["module.net.0"], inner[0](x)) and taps["1"].shape == (2, 3)
    with pytest.raises(LayerNotFoundError, match=r"Closest: 'net.0'.*lt.get_layers"):
        lt.Taps(holder, ["net.00"])
    twins = nn.ModuleDict({"a": nn.ModuleDict({"x": nn.ReLU()}), "b": nn.ModuleDict({"x": nn.ReLU()})})
    with pytest.raises(AmbiguousLayerError, match=r"a\.x, b\.x.*full address"):
        lt.Taps(twins, ["x"])
    with pytest.raises(UnsupportedModelError, match="op-level"):
        lt.Taps(nn.DataParallel(holder), ["relu_1"])


def test_globs_and_predicates_give_dicts() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU())
    taps = lt.Taps(model, ["[02]", lambda name, m: isinstance(m, nn.ReLU)])
    with taps:
        model(torch.randn(1, 2))
    assert sorted(taps["[02]"]) == ["0", "2"]
    assert taps.keys() == ["0", "2", "1", "3"]  # in the order the selectors name them


def test_op_labels_resolve_on_the_first_step_without_example() -> None:
    model, x = OpNet(), torch.randn(2, 4)
    taps = lt.Taps(model, ["mul_1"])
    assert taps.selection is None
    with taps:
        model(x)
    assert torch.allclose(taps["mul_1"], torch.tanh(model.a(x)) * 2.0)


def test_unknown_names_without_example_raise_as_clearly_as_at_construction() -> None:
    model, x = OpNet(), torch.randn(2, 4)
    with pytest.raises(LayerNotFoundError, match=r"no module named 'aa'.*Closest: 'a'.*lt.get_layers"):
        lt.Taps(model, ["aa"])  # not shaped like an op label: known to be wrong now
    taps = lt.Taps(model, ["a", "mul_9"])
    for _ in range(2):  # stays unresolved: every step raises, none silently taps nothing
        with pytest.raises(LayerNotFoundError,
                           match=r"no module or op named 'mul_9'\. Closest: 'mul_1'.*lt.get_nodes.*example_input=x"):
            with taps:
                model(x)
        assert taps.selection is None and torch._C._len_torch_function_stack() == 0
    assert len(model._forward_pre_hooks) == 1 and not model.a._forward_hooks


def test_save_gradients_matches_retain_grad() -> None:
    model, x = BNNet(), torch.randn(2, 3, 4, 4)
    taps = lt.Taps(model, ["conv", "bn"], save_gradients=True)
    with taps:
        model(x).sum().backward()
    conv_out = model.conv(x)
    conv_out.retain_grad()
    bn_out = model.bn(conv_out)
    bn_out.retain_grad()
    model.fc(F.relu(bn_out).mean((2, 3))).sum().backward()
    assert torch.allclose(taps.grad("conv"), conv_out.grad, atol=1e-6)
    assert torch.allclose(taps.grad("bn"), bn_out.grad, atol=1e-6)


def test_checkpointing_non_reentrant_does_not_duplicate_taps() -> None:
    class Ckpt(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3), nn.Tanh())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(self.block, x, use_reentrant=False)

    model, x = Ckpt(), torch.randn(2, 3)
    with lt.Taps(model, ["block.1", "block.3"]) as taps:
        out = model(x)
        before = taps["block.1"]
        (out.sum() + taps["block.1"].sum()).backward()
        assert taps.num_passes("block.1") == 1 and taps["block.1"] is before


def test_checkpointing_reentrant_keeps_first_forward_values_without_gradient() -> None:
    block = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    model, x = nn.Sequential(nn.Linear(3, 3), block), torch.randn(2, 3)
    model.forward = lambda x: checkpoint(block, model[0](x), use_reentrant=True)  # type: ignore[method-assign]
    with lt.Taps(model, ["1.0", "1.1"]) as taps:
        out = model(x)
        out.sum().backward()  # recomputes block inside backward: ignored, so still one pass
    assert taps.num_passes("1.0") == 1 and not taps["1.0"].requires_grad  # inside the segment: no_grad
    assert taps["1.1"].requires_grad  # the segment's output is the checkpoint function's output
    assert torch.allclose(taps["1.0"], block[0](model[0](x))) and torch.allclose(taps["1.1"], out)
    assert model[0].weight.grad is not None  # the checkpointed model itself still trains


def test_autocast_bf16_on_cpu() -> None:
    model, x = BNNet(inplace=False), torch.randn(2, 3, 4, 4)
    taps = lt.Taps(model, ["conv"])
    with torch.autocast("cpu", dtype=torch.bfloat16), taps:
        model(x)
    assert taps["conv"].dtype == torch.bfloat16 and taps["conv"].requires_grad


def test_hooks_installed_once_and_removed() -> None:
    model = BNNet()
    taps = lt.Taps(model, ["bn"])
    assert len(model.bn._forward_hooks) == 1
    for _ in range(3):
        with taps:
            model(torch.randn(2, 3, 4, 4))
    assert len(model.bn._forward_hooks) == 1
    taps.remove()
    assert not model.bn._forward_hooks and not model.bn._forward_pre_hooks
    del taps
    taps = lt.Taps(model, ["bn"])
    del taps
    gc.collect()
    assert not model.bn._forward_hooks  # a dropped Taps leaves nothing behind


def test_op_scope_leaves_no_mode_after_an_exception() -> None:
    class Boom(nn.Module):
        fail = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2
            if self.fail:
                raise RuntimeError("boom")
            return y

    model = nn.Sequential(Boom())
    taps = lt.Taps(model, ["mul_1"], example_input=torch.randn(2))
    model[0].fail = True
    depth = torch._C._len_torch_function_stack()
    with pytest.raises(RuntimeError, match="boom"), taps:
        model(torch.randn(2))
    assert torch._C._len_torch_function_stack() == depth
    model[0].fail = False
    with taps:
        model(torch.ones(2))
    assert torch.equal(taps["mul_1"], torch.full((2,), 2.0))


def test_memory_flat_over_200_steps() -> None:
    model, x = OpNet(), torch.randn(8, 4)
    taps = lt.Taps(model, ["a", "mul_1"], example_input=x)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    alive = []
    for step in range(200):
        with taps:
            out = model(x)
        (out.sum() + taps["a"].mean() + taps["mul_1"].mean()).backward()
        opt.step()
        opt.zero_grad()
        if step in (20, 199):
            gc.collect()
            with warnings.catch_warnings():  # isinstance() on some torch module globals warns
                warnings.simplefilter("ignore")
                alive.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))
    assert alive[1] <= alive[0]


@pytest.mark.slow
def test_torch_compile_module_taps_do_not_recompile_each_step() -> None:
    import torch._dynamo as dynamo

    dynamo.reset()
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    compiled = torch.compile(model, backend="aot_eager")
    taps = lt.Taps(compiled, ["_orig_mod.1"])
    x = torch.randn(3, 4)
    graphs = []
    for _ in range(5):
        with taps:
            out = compiled(x)
        (out.sum() + taps["1"].sum()).backward()
        graphs.append(dynamo.utils.counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[2] and not dynamo.utils.counters["graph_break"]
    assert torch.allclose(taps["1"], torch.relu(model[0](x)))
