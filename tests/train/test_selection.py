"""Name resolution: wrappers, suffixes, op sites, module-output shortcut."""

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import LayerNotFoundError
from lens_train.train.selection import ModuleIndex, clean_name, op_sites, split_pass


def test_clean_names_and_passes() -> None:
    assert clean_name("module.net._orig_mod.layer2") == "net.layer2"
    assert split_pass("fc:2") == ("fc", 2) and split_pass("fc") == ("fc", None)


def test_index_finds_suffixes() -> None:
    outer = nn.Module()
    outer.net = nn.Sequential(nn.Linear(1, 1))
    index = ModuleIndex(nn.DataParallel(outer))
    assert index.find("0") == "net.0" and index.find("module.net.0") == "net.0" and index.find("x") is None


def test_op_sites_count_per_module_call_and_type() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x + 1) + 2

    log = lt.get_model_metadata(nn.Sequential(M()), torch.ones(2))
    sites = {lay.layer_label: s for lay, s in zip(log, op_sites(log)) if s}
    adds = [s for s in sites.values() if s.layer_type == "add"]
    assert [(s.address, s.index) for s in adds] == [("0", 0), ("0", 1)]
    assert [s.address for s in sites.values() if s.layer_type == "relu"] == ["0.inner"]


def test_unknown_op_like_name_with_example_lists_labels() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(LayerNotFoundError, match=r"relu_1_2.*lt.get_nodes"):
        lt.Taps(model, ["relu_9"], example_input=torch.ones(1, 2))


def test_op_label_glob_gives_a_dict_of_op_taps() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    model.forward = lambda x: torch.relu(model[0](x)) + torch.relu(-x)  # type: ignore[method-assign]
    x = torch.randn(3, 2)
    taps = lt.Taps(model, ["relu_*"], example_input=x)
    assert {s.kind for s in taps.selection.specs} == {"op"}
    with taps:
        model(x)
    found = taps["relu_*"]
    assert sorted(found) == ["relu_1_2", "relu_2_4"]
    assert torch.allclose(found["relu_1_2"], torch.relu(model[0](x))) and torch.equal(found["relu_2_4"], torch.relu(-x))


def test_index_rejects_non_modules() -> None:
    from lens_train.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="got str 'net'. Pass the module itself"):
        lt.Taps("net", ["0"])
