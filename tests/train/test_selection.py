"""Name resolution: wrappers, suffixes, op sites, module-output shortcut."""

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import InvalidArgumentError, LayerNotFoundError
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


def test_checkpoint_wrapper_and_fsdp1_segments_are_ignored() -> None:
    # Activation checkpointing (and FSDP1) insert a segment into every wrapped address.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 2))
    plain = {}
    model[1].register_forward_hook(lambda m, i, o: plain.__setitem__("out", o))
    apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, nn.Sequential) and m is not model)
    assert "1._checkpoint_wrapped_module.0" in dict(model.named_modules())
    assert clean_name("_fsdp_wrapped_module.1._checkpoint_wrapped_module.0") == "1.0"
    aux = lt.AuxiliaryLoss({"1": lt.losses.l2_activation(), "1.0": lt.losses.l1_activity()})
    taps = lt.Taps(model, aux.layers)
    x = torch.randn(3, 4)
    params = list(model[0].parameters())
    with taps:
        model(x)
        total, _ = aux(taps)
        grads = torch.autograd.grad(total, params)  # recomputes the wrapped block inside the taps block
    assert torch.equal(taps["1"], plain["out"]) and taps.num_passes("1") == 1  # the recomputation is not a pass
    h = model[0](x)
    expected = torch.autograd.grad(model[1](h).pow(2).mean() + model[1]._checkpoint_wrapped_module[0](h).abs().mean(), params)
    assert all(torch.allclose(g, e) for g, e in zip(grads, expected))


def test_module_object_as_layer_names_its_address() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with pytest.raises(InvalidArgumentError, match=r"got the Linear at '0'. Pass its address: lt.Taps\(model, \['0'\]\)"):
        lt.Taps(model, [model[0]])
    with pytest.raises(InvalidArgumentError, match="not part of the model"):
        lt.Taps(model, [nn.Linear(1, 1)])


def test_module_object_as_an_auxiliary_loss_key_says_to_name_it() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with pytest.raises(InvalidArgumentError, match=r"losses are keyed by layer name, got Linear"):
        lt.AuxiliaryLoss({model[0]: lt.losses.l1_activity()})
