"""Labels do not depend on train or eval mode: bookkeeping buffer updates take no number."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens_train as lt
from lens_train.errors import LayerNotFoundError


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(Block(8), Block(8), Block(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.fc(x.mean((2, 3)))


class Counter(nn.Module):
    """Counts its calls in a buffer (in place, with a constant), reads the count on the data path."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("scale", torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
            self.calls.add_(torch.ones((), dtype=torch.long) * 0)
        y = self.lin(x) + 1
        return y * self.scale + (self.calls > 0).float()


class GRULoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell, self.norm = nn.GRUCell(6, 6), nn.BatchNorm1d(6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], 6)
        for _ in range(4):
            h = self.cell(self.norm(x), h) + h
        return h


def _describe(log: lt.ModelLog) -> list[tuple]:
    return [(layer.layer_label, layer.layer_type, layer.tensor_shape, tuple(layer.containing_modules))
            for layer in log.layers]


CASES = [(ResNetLike, (2, 3, 8, 8)), (Counter, (3, 4)), (GRULoop, (3, 6))]


@pytest.mark.parametrize("make,shape", CASES, ids=[c[0].__name__ for c in CASES])
def test_labels_identical_in_train_and_eval_mode(make, shape):
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    train = lt.log_forward_pass(model.train(), x, layers_to_save=None, random_seed=0)
    evaluated = lt.log_forward_pass(model.eval(), x, layers_to_save=None, random_seed=0)
    assert _describe(train) == _describe(evaluated)
    assert [u for u in train.buffer_updates if u["writes"]]
    assert not evaluated.buffer_updates


def test_resnet_residual_adds_keep_their_labels():
    model, x = ResNetLike(), torch.randn(2, 3, 8, 8)
    for mode in ("train", "eval"):
        log = lt.log_forward_pass(getattr(model, mode)(), x, layers_to_save=None)
        adds = [lab for lab in log.layer_labels if lab.startswith("add_")]
        assert len(adds) == 3 and all(log[a].tensor_shape == (2, 8, 8, 8) for a in adds)
        buffers = [lab for lab in log.layer_labels if lab.startswith("buffer_")]
        assert len(buffers) == 14  # running mean and variance of 7 BatchNorms; the counters are bookkeeping


def test_bookkeeping_is_listed_printed_and_explained_on_lookup():
    model = ResNetLike().train()
    log = lt.log_forward_pass(model, torch.randn(2, 3, 8, 8))
    writes = [u for u in log.buffer_updates if u["writes"]]
    assert [u["buffer"] for u in writes][:2] == ["bn.num_batches_tracked", "blocks.0.bn1.num_batches_tracked"]
    assert writes[0]["label"] == "add_bk_1" and writes[0]["module"] == "bn:1"
    assert log.modules["bn"].calls[0]["buffer_updates"] == ["add_bk_1"]
    assert "add_bk_1: bn.num_batches_tracked.add_ in bn:1" in str(log)
    with pytest.raises(LayerNotFoundError, match="bookkeeping"):
        log["add_bk_1"]
    assert all(not layer.layer_label.startswith("add_bk") for layer in log.layers)
    assert all("bk" not in p for layer in log.layers for p in layer.parent_layers + layer.child_layers)


def test_buffer_read_after_its_update_is_a_buffer_value():
    model = Counter().train()
    log = lt.log_forward_pass(model, torch.randn(3, 4))
    gt = next(layer for layer in log.layers if layer.layer_type == "gt")
    assert log[gt.parent_layers[0]].is_buffer  # the count, not the update op
    assert int(log[gt.parent_layers[0]].activation) == 1
    assert int(model.calls) == 0  # and the model's own counter is untouched


def test_data_dependent_buffer_write_stays_on_the_data_path():
    class Ema(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("avg", torch.zeros(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.avg.mul_(0.9).add_(x.mean(0).detach() * 0.1)
            return x - self.avg

    log = lt.log_forward_pass(Ema(), torch.randn(4, 3))
    assert [layer.func_name for layer in log.layers if layer.layer_type == "add"] == ["add_"]
    assert [u["func_name"] for u in log.buffer_updates if u["writes"]] == ["mul_"]
    assert lt.validate_model_activations(Ema(), torch.randn(4, 3))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_op_tap_resolves_to_the_data_op_in_both_modes(mode):
    torch.manual_seed(0)
    model, x = ResNetLike(), torch.randn(2, 3, 8, 8)
    getattr(model, mode)()
    taps = lt.Taps(model, ["add_2"], example_input=x)
    hooked = []
    handle = model.blocks[1].register_forward_hook(lambda m, i, o: hooked.append(o))
    with taps:
        model(x)
    handle.remove()
    value = taps["add_2"]
    taps.remove()
    assert value.dtype == torch.float32 and torch.equal(F.relu(value), hooked[0])  # the block's residual sum


def test_op_tap_after_a_bookkeeping_op_of_the_same_type():
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.register_buffer("steps", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.training:
                self.steps.add_(1)
            return self.lin(x).add(2)

    model, x = Mixed(), torch.randn(2, 4)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        taps = lt.Taps(model, ["add_1"], example_input=x)
        with taps:
            out = model(x)
        assert torch.equal(taps["add_1"], out)
        taps.remove()


def test_graph_shows_bookkeeping_on_its_module():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    dot = lt.log_forward_pass(model, torch.randn(4, 3), layers_to_save=None).to_dot()
    assert "buffer update: add_bk_1" in dot and "add_bk_1" not in dot.split("buffer update")[0]
    assert "buffer update" not in lt.log_forward_pass(model.eval(), torch.randn(4, 3), layers_to_save=None).to_dot()


def test_bookkeeping_survives_a_bundle_round_trip(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)).train()
    log = lt.log_forward_pass(model, torch.randn(4, 3))
    lt.save(log, tmp_path / "b")
    loaded = lt.load(tmp_path / "b")
    assert loaded.buffer_updates == log.buffer_updates
    assert loaded.modules["1"].calls[0]["buffer_updates"] == ["add_bk_1"]
    assert loaded.layer_labels == log.layer_labels
