"""The recorder's contract beyond the log: what it leaves on the model, and how a dropped capture is freed."""

import gc
import weakref

import torch
from torch import nn

import lens_train as lt


def test_a_dropped_capture_frees_its_saved_tensors_without_the_cycle_collector() -> None:
    # the recorder and its module hooks once formed a reference cycle: every record and
    # saved tensor of a dropped capture lived on until a full collection
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        log = lt.log_forward_pass(model, torch.randn(2, 4))
        saved = [weakref.ref(layer.activation) for layer in log.layers]
        del log
        assert [ref() for ref in saved] == [None] * len(saved)
    finally:
        if was_enabled:
            gc.enable()


def test_capture_hooks_run_after_the_models_own_and_leave_no_trace() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    model[0].register_forward_hook(lambda module, args, out: out * 2)  # replaces the Linear's output
    model[1].register_forward_pre_hook(lambda module, args: None)
    before = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._forward_hooks_always_called))
              for m in model.modules()]
    log = lt.log_forward_pass(model, torch.ones(1, 3))
    assert log.modules["0"].calls[0]["outputs"] == ["mul_1_2"]  # the module's output is what its hook returned
    assert log["mul_1_2"].containing_modules == ["0:1"]
    after = [(dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._forward_hooks_always_called))
             for m in model.modules()]
    assert after == before


def test_a_module_shared_by_two_parents_is_hooked_once() -> None:
    shared = nn.Linear(2, 2)
    model = nn.Sequential(nn.Sequential(shared), nn.Sequential(shared))
    log = lt.log_forward_pass(model, torch.ones(1, 2))
    assert [c["pass_num"] for c in log.modules["0.0"].calls] == [1, 2]
    assert not shared._forward_hooks and not shared._forward_pre_hooks and not shared._forward_hooks_always_called


def test_validation_and_replayable_captures_leave_no_recorder_behind() -> None:
    # call templates were built by a self-referencing closure that held the recorder
    from lens_train.capture.recorder import Recorder

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        assert lt.validate_model_activations(model, torch.randn(2, 4))
        lt.log_forward_pass(model, torch.randn(2, 4), replayable=True)
        assert not [o for o in gc.get_objects() if type(o) is Recorder]
    finally:
        if was_enabled:
            gc.enable()
