"""Layers fresh from a capture fill their fields on first read (lens_train.capture.layer_log.PendingLayerLog)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import weakref

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.capture.layer_log import LayerLog, PendingLayerLog


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def _fields(layer: LayerLog) -> dict:
    out = {f.name: getattr(layer, f.name) for f in dataclasses.fields(LayerLog) if not f.name.startswith("_")}
    out.pop("time_s")
    out["lookup_keys"] = layer.lookup_keys
    return out


def _text(layer: LayerLog) -> str:
    return "\n".join(line for line in str(layer).splitlines() if "Time elapsed" not in line)


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(v, b[k]) if isinstance(v, torch.Tensor) else v == b[k] for k, v in a.items())


def test_layers_start_pending_and_fill_on_first_read():
    log = lt.log_forward_pass(_model(), torch.ones(1, 4))
    layer = log["relu_1_2"]
    assert type(layer) is PendingLayerLog
    assert layer.layer_label == "relu_1_2" and type(layer) is PendingLayerLog  # set at capture: no fill
    assert layer.parent_layers == ["linear_1_1"]
    assert type(layer) is LayerLog
    assert layer.child_layers == ["linear_2_3"] and layer.containing_modules == ["1:1"] and layer.module_outputs == ["1:1"]


def test_a_field_written_before_the_first_read_is_kept():
    log = lt.log_forward_pass(_model(), torch.ones(1, 4))
    layer = log["linear_2_3"]
    layer.child_layers = ["mine"]
    layer.tensor_contents = None
    assert layer.child_layers == ["mine"] and layer.tensor_contents is None
    assert layer.parent_layers == ["relu_1_2"] and layer.tensor_shape == (1, 2)


def test_unknown_attributes_raise_attribute_error():
    layer = lt.log_forward_pass(_model(), torch.ones(1, 4))[1]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        layer.nope  # noqa: B018
    assert not hasattr(layer, "__array_interface__")
    assert layer.computed_inside_module == "0:1"  # a property reading pending fields


@pytest.mark.parametrize("how", ["copy", "deepcopy", "replace", "str"])
def test_copies_and_printing_see_every_field(how):
    eager = lt.log_forward_pass(_model(), torch.ones(1, 4), random_seed=0)
    expected = {i: _fields(layer) for i, layer in enumerate(eager.layers)}
    log = lt.log_forward_pass(_model(), torch.ones(1, 4), random_seed=0)
    for i, layer in enumerate(log.layers):
        if how == "copy":
            other = copy.copy(layer)
        elif how == "deepcopy":
            other = copy.deepcopy(layer)
        elif how == "replace":
            other = dataclasses.replace(layer, edit="x")
            other.edit = None
        else:
            assert _text(layer) == _text(eager.layers[i])
            other = layer
        assert type(other) is LayerLog
        assert _same(_fields(other), expected[i]), how


def test_a_kept_layer_holds_no_other_layer_value():
    log = lt.log_forward_pass(_model(), torch.ones(3, 4))
    kept = log["relu_1_2"]
    other = weakref.ref(log["linear_1_1"].tensor_contents)
    del log
    gc.collect()
    assert other() is None  # the capture's records keep metadata only
    assert kept.parent_layers == ["linear_1_1"] and kept.tensor_contents.shape == (3, 8)


def test_dropping_a_value_frees_it():
    log = lt.log_forward_pass(_model(), torch.ones(3, 4))
    ref = weakref.ref(log["relu_1_2"].tensor_contents)
    log["relu_1_2"].tensor_contents = None
    gc.collect()
    assert ref() is None
    assert log["relu_1_2"].tensor_contents is None and log["relu_1_2"].tensor_shape == (3, 8)


def test_a_capture_promotes_its_objects_and_leaves_frozen_ones_alone():
    model = _model()
    gc.collect()
    log = lt.log_forward_pass(model, torch.ones(1, 4))
    assert gc.get_freeze_count() == 0
    young = {id(o) for o in gc.get_objects(generation=0)}
    assert id(log.layers[1]) not in young and gc.isenabled()  # went straight to the oldest generation
    gc.freeze()  # a program that froze its own objects: the capture must not unfreeze them
    try:
        frozen = gc.get_freeze_count()
        lt.log_forward_pass(model, torch.ones(1, 4))
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


def test_a_read_from_another_thread_during_a_fill_waits_for_it(monkeypatch):
    import threading

    log = lt.log_forward_pass(_model(), torch.ones(1, 4))
    layer = log["relu_1_2"]
    fill = LayerLog.__init__
    got: list = []
    readers: list = []

    def read() -> None:
        try:
            got.append(layer.child_layers)
        except AttributeError as exc:
            got.append(exc)

    def slow_fill(self, *args):  # the filling thread pauses mid-fill while another thread reads
        if self is layer and not readers:
            readers.append(threading.Thread(target=read))
            readers[0].start()
            readers[0].join(0.2)  # it reads now (or waits for this fill to end)
        fill(self, *args)

    monkeypatch.setattr(LayerLog, "__init__", slow_fill)
    assert layer.parent_layers == ["linear_1_1"]
    readers[0].join()
    assert got == [["linear_2_3"]]


def test_a_log_never_holds_the_models_parameters():
    model = _model()
    with torch.no_grad():  # (with autograd on, the output's graph would hold them, as for any forward)
        log = lt.log_forward_pass(model, torch.ones(1, 4))
    weight = weakref.ref(model[0].weight)
    del model
    gc.collect()
    assert weight() is None  # freed with the model, the log alive
    assert log["linear_1_1"].num_params == 40 and log["linear_1_1"].param_addresses == ["0.weight", "0.bias"]


def test_once_every_layer_is_filled_the_records_go_and_lookups_still_work():
    log = lt.log_forward_pass(_model(), torch.ones(1, 4))
    source = log._key_index.source
    for layer in log.layers[:-1]:
        layer.parent_layers  # noqa: B018
    assert source.records is not None
    log.layers[-1].parent_layers  # noqa: B018
    assert source.records is None and source.data is None
    assert log["1"].layer_label == "relu_1_2" and log["relu_1_2"].lookup_keys[:2] == ["1:1", "1"]


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2))
        self.register_buffer("step", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.step += 1
        for block in self.blocks:
            x = block(x) + block(x)
        return x


def _module_table(log) -> dict:
    return {a: (m.module_type, m.depth, m.num_params, m.calls) for a, m in log.modules.items()}


def test_module_table_is_made_on_first_read_from_the_capture_alone():
    torch.manual_seed(0)
    model = _Blocks().train()
    with torch.no_grad():  # (a log whose output is graph-connected cannot be deep-copied)
        eager = lt.log_forward_pass(model, torch.ones(2, 4))
        expected = _module_table(eager)
        log = lt.log_forward_pass(model, torch.ones(2, 4))
    assert log._module_table is None  # not made by the capture
    clone = copy.deepcopy(log)
    model.blocks[0] = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU())  # the model changes before the read
    assert _module_table(log) == expected == _module_table(clone)
    assert log.modules is log.modules
    assert [len(expected[a][3]) for a in ("blocks.0", "blocks.0.0", "blocks.1.1")] == [2, 2, 2]
    assert log.modules["blocks.1:2"]["inputs"] == log.modules["blocks.1:1"]["inputs"] == ["add_1_5"]
