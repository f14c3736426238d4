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
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_exception_propagates_with_original_type_and_a_note() -> None:
    model = Exploding()
    with pytest.raises(RuntimeError) as info:
        lt.log_forward_pass(model, torch.randn(2, 4))
    assert any("lens_train: raised while capturing matmul" in n for n in info.value.__notes__)


def test_model_and_torch_untouched_after_exception() -> None:
    model = Exploding()
    model.fc.weight.requires_grad_(False)
    model.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from_numpy = torch.from_numpy
    with pytest.raises(RuntimeError):
        lt.log_forward_pass(model, torch.randn(2, 4))
    assert _hooks(model) == 0
    assert len(_get_current_function_mode_stack()) == 0
    assert torch.from_numpy is from_numpy
    assert model.training and not model.bn.training
    assert not model.fc.weight.requires_grad and model.fc.bias.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.is_grad_enabled()


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


@pytest.mark.gpu
def test_cuda_capture_keeps_device() -> None:
    model = SmallAlexNet().cuda().eval()
    x = torch.randn(1, 3, 64, 64, device="cuda")
    log = lt.log_forward_pass(model, x)
    assert log["conv2d_1_1"].activation.is_cuda and log["conv2d_1_1"].device.startswith("cuda")
    assert log["conv2d_1_1"].tensor_fsize == log["conv2d_1_1"].activation.nelement() * 4
    assert torch.allclose(log[-1].activation, model(x))
