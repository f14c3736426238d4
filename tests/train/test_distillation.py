"""Distillation: adapters, teacher handling, manual loss values, effect on the student."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens_train as lt
from lens_train.errors import InvalidArgumentError, LayerNotFoundError
from lens_train.train.distillation import Adapter


class ConvNet(nn.Module):
    def __init__(self, width: int, pool: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.fc = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.c2(torch.relu(self.c1(x)))))
        return self.fc(h.mean((2, 3)))


def test_adapters_auto_for_a_different_architecture() -> None:
    teacher, student = ConvNet(8, pool=False), ConvNet(4, pool=True)
    x = torch.randn(2, 1, 8, 8)
    kd = lt.Distillation(teacher, student, pairs={"pool": "c2", "c1": "c1"}, logits_loss=lt.losses.kd_kl(2.0), example_input=x)
    assert isinstance(kd.adapters[0], Adapter) and isinstance(kd.adapters[0].proj, nn.Conv2d)
    assert kd.adapters[0].size == (8, 8)
    assert {tuple(p.shape) for p in kd.parameters()} == {(8, 4, 1, 1), (8,)}
    teacher.train()
    total, terms = kd(x)
    assert not teacher.training and sorted(terms) == ["c1", "logits", "pool"]
    s_c1 = student.c1(x)
    t_c1 = teacher.c1(x)
    assert torch.allclose(terms["c1"], F.mse_loss(kd.adapters[1](s_c1), t_c1), atol=1e-6)
    assert torch.allclose(terms["logits"], lt.losses.kd_kl(2.0)(kd.student_output, teacher(x)), atol=1e-6)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.c1.weight.grad is not None and kd.adapters[0].proj.weight.grad is not None


def test_loss_with_the_users_own_student_pass_runs_the_teacher_once() -> None:
    teacher, student = ConvNet(4, False), ConvNet(4, False)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    kd = lt.Distillation(teacher, student, pairs={"c2": "c2"}, feature_loss="cosine", example_input=torch.randn(1, 1, 4, 4))
    calls.clear()
    taps = lt.Taps(student, ["c2"])
    x = torch.randn(2, 1, 4, 4)
    with taps:
        student(x)
    total, terms = kd.loss(taps, x)
    assert calls == [1] and isinstance(kd.adapters[0], nn.Identity)
    assert torch.allclose(total, lt.losses.cosine()(student.c2(F.relu(student.c1(x))), teacher.c2(F.relu(teacher.c1(x)))), atol=1e-6)


def test_adapters_must_be_built_and_optimised() -> None:
    teacher, student = ConvNet(8, False), ConvNet(4, False)
    kd = lt.Distillation(teacher, student, pairs={"c2": "c2"})
    with pytest.raises(InvalidArgumentError, match=r"kd.setup\(example_input\)"):
        kd(torch.randn(1, 1, 4, 4))
    with pytest.raises(InvalidArgumentError, match="not built"):
        kd.check_optimizer(torch.optim.SGD(student.parameters(), lr=0.1))
    kd.setup(torch.randn(1, 1, 4, 4))
    with pytest.raises(InvalidArgumentError, match="kd.parameters"):
        kd.check_optimizer(torch.optim.SGD(student.parameters(), lr=0.1))


def test_mismatched_shapes_without_adapters_raise_clearly() -> None:
    teacher, student = ConvNet(8, False), ConvNet(4, False)
    kd = lt.Distillation(teacher, student, pairs={"c2": "c2"}, adapters=None)
    with pytest.raises(InvalidArgumentError, match=r"student \(2, 4, 4, 4\) and teacher \(2, 8, 4, 4\).*adapters='auto'"):
        kd(torch.randn(2, 1, 4, 4))


def test_sequence_adapter_resizes_tokens() -> None:
    a = Adapter((2, 5, 8), (2, 10, 16))
    assert a(torch.randn(2, 5, 8)).shape == (2, 10, 16)
    with pytest.raises(InvalidArgumentError, match="adapters="):
        Adapter((2, 5), (2, 5, 3))


def test_distillation_changes_the_student() -> None:
    torch.manual_seed(0)
    teacher = ConvNet(8, False)
    x = torch.randn(16, 1, 6, 6)
    y = torch.randint(0, 4, (16,))
    finals = []
    for distil in (False, True):
        torch.manual_seed(1)
        student = ConvNet(4, True)
        kd = lt.Distillation(teacher, student, pairs={"c2": "c2"}, logits_loss=lt.losses.kd_kl(), example_input=x)
        opt = torch.optim.SGD([*student.parameters(), *kd.parameters()], lr=0.05)
        for _ in range(20):
            total, _ = kd(x)
            loss = F.cross_entropy(kd.student_output, y) + (total if distil else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            finals.append(F.mse_loss(student(x), teacher(x)).item())
    assert finals[1] < finals[0] * 0.8  # the distilled student's logits are closer to the teacher's


class TokenTeacher(nn.Module):
    """A different architecture: conv stem, residual conv blocks, then tokens and a transformer layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 12, 3, padding=1)
        self.blocks = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.GELU())
        self.mixer = nn.TransformerEncoderLayer(12, 2, dim_feedforward=16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.blocks(h)  # add_1: an op, not a module output
        tokens = self.mixer(h.flatten(2).transpose(1, 2))
        return self.head(tokens.mean(1))


def test_several_pairs_with_a_teacher_of_a_different_architecture() -> None:
    torch.manual_seed(0)
    teacher, student = TokenTeacher(), ConvNet(4, pool=True)
    x = torch.randn(3, 1, 6, 6)
    pairs = {"c1": "stem", "pool": "add_1", "c2": "mixer"}
    losses = {"c1": "mse", "pool": "attention_transfer", "c2": lambda s, t: (s.mean() - t.mean()).abs()}
    kd = lt.Distillation(teacher, student, pairs=pairs, feature_loss=losses, logits_loss=lt.losses.kd_kl(3.0),
                         adapters={"c2": nn.Sequential(nn.Flatten(2), nn.Linear(36, 12))},
                         weights={"c1": 0.5, "pool": 2.0, "logits": 0.1}, weight=3.0)
    with pytest.raises(InvalidArgumentError, match="not built"):
        kd(x)
    kd.setup(x)
    assert [type(a).__name__ for a in kd.adapters] == ["Adapter", "Adapter", "Sequential"]
    assert kd.adapters[1].size == (6, 6)  # (3, 3) student map resized to the teacher's (6, 6)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    total, terms = kd(x)
    assert calls == [1] and not teacher.training
    with torch.no_grad():
        t_stem = teacher.stem(x)
        t_add = torch.relu(t_stem) + teacher.blocks(torch.relu(t_stem))
        t_mix = teacher.mixer(t_add.flatten(2).transpose(1, 2))
        s_c1 = student.c1(x)
        s_c2 = student.c2(torch.relu(s_c1))
        s_pool = student.pool(torch.relu(s_c2))
        expected = {
            "c1": 3.0 * 0.5 * F.mse_loss(kd.adapters[0](s_c1), t_stem),
            "pool": 3.0 * 2.0 * lt.losses.attention_transfer()(kd.adapters[1](s_pool), t_add),
            "c2": 3.0 * (kd.adapters[2](s_c2).mean() - t_mix.mean()).abs(),
            "logits": 3.0 * 0.1 * lt.losses.kd_kl(3.0)(student(x), teacher(x)),
        }
    for name, value in expected.items():
        assert torch.allclose(terms[name], value, atol=1e-5), name
    assert torch.allclose(total, sum(expected.values()), atol=1e-5)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in kd.parameters()) and student.c1.weight.grad is not None


def test_adapter_is_a_1x1_projection_then_resizing() -> None:
    a = Adapter((2, 3, 4, 4), (2, 5, 8, 8))
    x = torch.randn(2, 3, 4, 4)
    want = F.interpolate(F.conv2d(x, a.proj.weight, a.proj.bias), size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(a(x), want, atol=1e-6)
    same = Adapter((2, 6), (2, 6))
    assert isinstance(same.proj, nn.Identity)


def test_pairs_must_be_a_mapping() -> None:
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(InvalidArgumentError, match=r"pairs must be a dict \{student_layer: teacher_layer\}, got list"):
        lt.Distillation(net, net, pairs=["0"])


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_misspelled_pair_names_the_side_and_its_closest_layers(side: str) -> None:
    teacher, student = ConvNet(8, False), ConvNet(4, False)
    student.extra_student = nn.Identity()
    pairs = {"c22": "c2"} if side == "student" else {"c2": "c22"}
    other = "teacher" if side == "student" else "student"
    with pytest.raises(LayerNotFoundError) as info:
        lt.Distillation(teacher, student, pairs=pairs)
    msg = str(info.value)
    assert f"the {side} model has no layer named 'c22'" in msg and f"the {other} model" not in msg
    assert f"Closest {side} layers: 'c2'" in msg and "extra_student" not in msg
    assert "{student_layer: teacher_layer}" in msg and f"lt.get_layers({side})" in msg


class _ViT(nn.Module):
    """Patch embedding of 2x2 patches of an 8x8 image, an optional CLS token, one encoder layer."""

    def __init__(self, dim: int = 12, cls: bool = True) -> None:
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, dim)) if cls else None
        self.block = nn.TransformerEncoderLayer(dim, 2, 24, batch_first=True, dropout=0.0)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.block(tokens).mean(1))


class _CNN(nn.Module):
    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_cnn_student_learns_from_a_vit_teacher_with_a_cls_token() -> None:
    # Student map (B, 6, 4, 4) -> 16 tokens, teacher (B, 17, 12): the CLS token is dropped from the target.
    torch.manual_seed(0)
    teacher, student, x = _ViT(cls=True).eval(), _CNN(), torch.randn(4, 1, 8, 8)
    kd = lt.Distillation(teacher, student, pairs={"features": "block"}, example_input=x)
    adapter = kd.adapters[0]
    assert isinstance(adapter.proj, nn.Linear) and (adapter.proj.in_features, adapter.proj.out_features) == (6, 12)
    total, _ = kd(x)
    s = student.features(x)
    with torch.no_grad():
        t = teacher.block(torch.cat([teacher.cls.expand(4, -1, -1), teacher.patch(x).flatten(2).transpose(1, 2)], 1))
    expected = F.mse_loss(adapter.proj(s.flatten(2).transpose(1, 2)), t[:, 1:])  # token (i, j) of the map = patch (i, j)
    assert torch.allclose(total, expected, atol=1e-6)
    total.backward()
    assert student.features[0].weight.grad is not None and adapter.proj.weight.grad is not None


def test_vit_student_learns_from_a_cnn_teacher_and_token_counts_are_interpolated() -> None:
    torch.manual_seed(0)
    teacher, student, x = _CNN(width=5).eval(), _ViT(cls=False), torch.randn(3, 1, 8, 8)
    kd = lt.Distillation(teacher, student, pairs={"block": "features"}, example_input=x)
    total, _ = kd(x)
    tokens = student.block(student.patch(x).flatten(2).transpose(1, 2))  # (3, 16, 12): a 4x4 grid
    mapped = kd.adapters[0].proj(tokens).transpose(1, 2).reshape(3, 5, 4, 4)
    with torch.no_grad():
        t = teacher.features(x)
    assert torch.allclose(total, F.mse_loss(mapped, t), atol=1e-6)
    # A token count that is not a square: the token axis is interpolated to H*W.
    a = Adapter((2, 10, 12), (2, 5, 3, 3))
    assert a(torch.randn(2, 10, 12)).shape == (2, 5, 3, 3)
    b = Adapter((2, 5, 3, 3), (2, 7, 12))
    assert b(torch.randn(2, 5, 3, 3)).shape == (2, 7, 12) and b.teacher_skip == 0
    c = Adapter((2, 5, 4, 4), (2, 10, 8))  # 10 = 1 + 3x3: CLS dropped, map resized to 3x3
    assert c(torch.randn(2, 5, 4, 4)).shape == c.target(torch.randn(2, 10, 8)).shape == (2, 9, 8)


def test_unmappable_layouts_raise_with_shapes_and_the_fix() -> None:
    with pytest.raises(InvalidArgumentError, match=r"cannot map student \(4, 32\) to teacher \(4, 8, 2, 2\).*adapters=\{student_layer: module\}"):
        Adapter((4, 32), (4, 8, 2, 2))
    teacher, student = nn.Sequential(nn.Flatten(), nn.Linear(64, 8)), _CNN()
    with pytest.raises(InvalidArgumentError, match=r"student \(2, 6, 4, 4\) to teacher \(2, 8\)"):
        lt.Distillation(teacher, student, pairs={"features": "1"}, example_input=torch.randn(2, 1, 8, 8))
    fixed = lt.Distillation(teacher, student, pairs={"features": "1"}, example_input=torch.randn(2, 1, 8, 8),
                            adapters={"features": nn.Sequential(nn.Flatten(), nn.Linear(96, 8))})
    assert fixed(torch.randn(2, 1, 8, 8))[0].requires_grad
