"""After capture, also when forward raises, the model and torch are exactly as before."""

import pytest
import torch
from torch import nn
from torch.overrides import _get_current_function_mode_stack

import lens_train as lt
from lens_train.errors import UnsupportedModelError
from tests.models import SmallAlexNet


class Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.fc(x))
        return x @ torch.ones(3, 3)  # shape mismatch: raises inside matmul


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _snapshot(model: nn.Module) -> dict:
    """Everything a run may not change: values, buffer objects, flags, hooks, modes, RNG, grad mode."""
    from torch.nn.modules import module as module_globals

    return {
        "values": {k: v.clone() for k, v in model.state_dict(keep_vars=True).items()},
        "buffer_ids": [id(b) for b in model.buffers()],
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "hooks": _hooks(model),
        "global_hooks": len(module_globals._global_forward_hooks) + len(module_globals._global_forward_pre_hooks),
        "modes": len(_get_current_function_mode_stack()),
        "from_numpy": torch.from_numpy,
        "rng": torch.get_rng_state(),
        "grad": torch.is_grad_enabled(),
        "forward": model.forward,
    }


def _assert_untouched(before: dict, model: nn.Module, buffers_too: bool) -> None:
    after = _snapshot(model)
    for key in ("buffer_ids", "training", "requires_grad", "hooks", "global_hooks", "modes", "grad"):
        assert after[key] == before[key], key
    assert after["from_numpy"] is before["from_numpy"] and after["forward"] == before["forward"]
    assert torch.equal(after["rng"], before["rng"])
    for name, value in before["values"].items():
        if buffers_too or isinstance(value, nn.Parameter):
            assert torch.equal(after["values"][name], value), name


def _runs(x: torch.Tensor) -> dict:
    """Every public function that runs a model -> (call, whether buffers must come back unchanged).

    Buffers: the log/graph/validation functions observe a pass and restore BatchNorm
    statistics; fastlog and taps record the real training pass, whose statistics update.
    """
    def with_taps(m: nn.Module) -> None:
        taps = lt.Taps(m, ["fc"])
        with taps:
            m(x)

    return {
        "log_forward_pass": (lambda m: lt.log_forward_pass(m, x), True),
        "log_forward_pass_selected": (lambda m: lt.log_forward_pass(m, x, layers_to_save=["fc"]), True),
        "log_forward_pass_train_mode": (lambda m: lt.log_forward_pass(m, x, train_mode=True, save_gradients=True), True),
        "get_model_activations": (lambda m: lt.get_model_activations(m, x), True),
        "get_model_metadata": (lambda m: lt.get_model_metadata(m, x), True),
        "validate_model_activations": (lambda m: lt.validate_model_activations(m, x), True),
        "show_model_graph": (lambda m: lt.show_model_graph(m, x, vis_save_only=True, vis_outpath="/nonexistent/never"), True),
        "get_nodes": (lambda m: lt.get_nodes(m, x), True),
        "Extract": (lambda m: lt.Extract(m, x, node_out="fc"), True),
        "fastlog.record": (lambda m: lt.fastlog.record(m, x, keep_op=lambda c: True), False),
        "fastlog.dry_run": (lambda m: lt.fastlog.dry_run(m, x), False),
        "Taps": (with_taps, False),
    }


@pytest.mark.parametrize("name", sorted(_runs(torch.ones(1))))
def test_every_model_runner_leaves_the_model_untouched_when_forward_raises(name: str) -> None:
    model = Exploding().train()
    model.fc.weight.requires_grad_(False)
    model.bn.momentum = 0.5  # a training pass would move the running statistics a lot
    run, buffers_too = _runs(torch.randn(2, 4))[name]
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="size mismatch|shapes cannot be multiplied"):
        run(model)
    _assert_untouched(before, model, buffers_too)
    model.eval()  # and the model still works, in both modes
    assert model.bn(model.fc(torch.randn(2, 4))).shape == (2, 4)


def test_exception_propagates_with_original_type_and_a_note() -> None:
    model = Exploding()
    with pytest.raises(RuntimeError) as info:
        lt.log_forward_pass(model, torch.randn(2, 4))
    assert any("lens_train: raised while capturing matmul" in n for n in info.value.__notes__)


def test_model_and_torch_untouched_after_exception() -> None:
    model = Exploding()
    model.fc.weight.requires_grad_(False)
    model.bn.eval()
    x = torch.randn(2, 4)
    before = _snapshot(model)
    with torch.no_grad(), pytest.raises(RuntimeError):
        lt.log_forward_pass(model, x, train_mode=True)
    assert _hooks(model) == 0 and len(_get_current_function_mode_stack()) == 0
    assert model.training and not model.bn.training
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    _assert_untouched(before, model, buffers_too=True)


class WithFc(nn.Module):
    """A ``Linear(4, 4)`` named ``fc`` and a forward given as ``body(module, x)``."""

    def __init__(self, body) -> None:  # noqa: ANN001
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self, x)


def _fails_after_a_loop(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for _ in range(3):
        x = m.fc(x).relu()
    return m.fc(x) @ torch.ones(3, 3)


def _fails_on_the_second_pass(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for i in range(3):
        x = m.fc(x)[:, : 4 - i] @ torch.eye(4)
    return x


def _checks_its_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = m.fc(x)
    if h.shape[-1] != 5:
        raise ValueError("expected 5 features")
    return h


def test_the_note_names_the_label_the_failing_op_would_have() -> None:
    with pytest.raises(RuntimeError) as info:
        lt.log_forward_pass(WithFc(_fails_after_a_loop), torch.randn(2, 4))
    # input_1_0, linear_1_1 and relu_1_2 (3 passes each), linear_2_3 (the call after the loop), ones_1_4
    assert info.value.__notes__ == ["lens_train: raised while capturing matmul_1_5 (matmul)"]
    with pytest.raises(RuntimeError) as info:
        lt.log_forward_pass(WithFc(_fails_on_the_second_pass), torch.randn(2, 4))
    assert info.value.__notes__ == ["lens_train: raised while capturing matmul_1_4:2 (matmul)"]


def test_an_error_outside_any_op_names_the_last_op_logged() -> None:
    with pytest.raises(ValueError, match="expected 5 features") as info:
        lt.log_forward_pass(WithFc(_checks_its_features), torch.randn(2, 4))
    assert info.value.__notes__ == [
        "lens_train: raised in forward after capturing linear_1_1 inside module 'fc' (call 1), the last operation logged"
    ]


def test_note_is_added_once_and_inside_modules() -> None:
    with pytest.raises(RuntimeError) as info:
        lt.log_forward_pass(nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 2)), torch.randn(2, 4))
    assert info.value.__notes__ == ["lens_train: raised while capturing linear_2_2 (linear inside module '1' (call 1))"]


def test_model_untouched_after_success() -> None:
    model = SmallAlexNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        lt.log_forward_pass(model.eval(), torch.randn(1, 3, 64, 64), train_mode=True)
        assert not torch.is_grad_enabled()
    assert _hooks(model) == 0 and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_user_except_clause_still_works() -> None:
    class Recovering(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                return x @ torch.ones(3, 3)
            except RuntimeError:
                return x * 2

    log = lt.log_forward_pass(Recovering(), torch.ones(2, 2))
    assert torch.equal(log[-1].activation, torch.full((2, 2), 2.0))


def test_unsupported_models_raise_clearly() -> None:
    scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(UnsupportedModelError, match="TorchScript"):
        lt.log_forward_pass(scripted, torch.ones(1, 2))
    with pytest.raises(UnsupportedModelError, match="nn.Module"):
        lt.log_forward_pass(lambda x: x, torch.ones(1))  # type: ignore[arg-type]
    nested = nn.Sequential(nn.ReLU(), nn.Sequential(torch.jit.script(nn.Linear(2, 2))))
    with pytest.raises(UnsupportedModelError, match=r"TorchScript modules cannot be logged \(at '1.0'\)"):
        lt.log_forward_pass(nested, torch.ones(1, 2))

    class OptimizedModule(nn.Module):  # the name alone (no compiled module inside) is no reason to refuse
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    assert len(lt.log_forward_pass(nn.Sequential(OptimizedModule()), torch.ones(1, 2))) == 3


@pytest.mark.gpu
def test_cuda_capture_keeps_device() -> None:
    model = SmallAlexNet().cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    log = lt.log_forward_pass(model, x)
    assert log["conv2d_1_1"].activation.is_cuda and log["conv2d_1_1"].device.startswith("cuda")
    assert log["conv2d_1_1"].tensor_fsize == log["conv2d_1_1"].activation.nelement() * 4
    assert torch.allclose(log[-1].activation, model(x))


def test_parameters_changed_in_place_by_forward_are_put_back() -> None:
    class ClipsItsWeight(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                self.fc.weight[0].zero_()
            return self.fc(x)

    model, x = ClipsItsWeight(), torch.randn(2, 3)
    weight = model.fc.weight.detach().clone()
    log = lt.log_forward_pass(model, x)
    assert torch.equal(model.fc.weight, weight)
    assert torch.equal(log["getitem_1_1"].activation, weight[0])
    assert torch.equal(log["zero_1_2"].activation, torch.zeros(3))
    clipped = torch.cat([torch.zeros(1, 3), weight[1:]])
    assert torch.allclose(log[-1].activation, torch.nn.functional.linear(x, clipped, model.fc.bias))
