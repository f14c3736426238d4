"""The C hot path (``lens_train/capture/_hotpath*.c``) and the Python path capture alike.

The recorder runs the common op in C when the extension is built and every other case in
Python; these tests run the same captures with the extension switched off and compare
every part of the output (labels, lookups, modules, metadata, printing, graphs, bundle).
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
import sysconfig
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lens_train as lt
from lens_train.capture import recorder

from .output_digest import digest, zoo_digests

STORED = json.loads((Path(__file__).parent / "data" / "zoo_digest.json").read_text())


@pytest.fixture
def python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recorder, "_hotpath", None)


def test_the_hot_path_is_built() -> None:
    if sys.implementation.name != "cpython" or sys.version_info < (3, 11) or os.environ.get("LENS_TRAIN_PURE_PYTHON"):
        pytest.skip("the C hot path is built for CPython 3.11+ only")
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): the package installs without the C hot path")
    assert recorder._hotpath is not None, (
        "lens_train.capture._hotpath is missing or stale: run `bash scripts/setup.sh` (it needs a C compiler) "
        "or `python setup.py build_ext --inplace`"
    )


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor, scale: float = 2.0) -> dict:
        return {"a": x * scale, "b": [x + 1, None, 3]}


class Mixed(nn.Module):
    """Ops and module calls of every kind the recorder tells apart, in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.bn = nn.BatchNorm1d(6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)
        self.cell = nn.LSTMCell(6, 6)
        self.parts = DictOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.lin(x)
        b = torch.cat([a, x], dim=1)  # tensors inside a list
        c, d = b.chunk(2, dim=1)  # an op with a tuple of tensors
        e = F.layer_norm(c, (6,), weight=self.lin.weight[0], bias=None)  # tensor keywords, a Python F function
        e = e + torch.randn(e.shape)  # a factory: no parents
        e.add_(1)  # in place
        f = self.bn(e)  # updates buffers inside the kernel
        if f.sum() > 0:  # a Python condition
            f = f * 2
        g = torch.where(f > 0, f, d)
        s = g[:, 0]
        g[:, 1] = 0  # __setitem__
        top = torch.max(g, dim=1)  # a named tuple of tensors
        att, _ = self.attn(g.unsqueeze(1), g.unsqueeze(1), g.unsqueeze(1))  # a decomposed F function
        out = torch.zeros(4, 6)
        torch.add(g.detach(), 1, out=out)  # out=
        h = F.relu(g, inplace=False) + out + att.squeeze(1)
        h, c = self.cell(h, (g, out))  # a tensor and a tuple in, a tuple out
        parts = self.parts(c, scale=3.0)  # a dict out, a keyword in
        h = self.lin(input=h) + parts["a"] + parts["b"][0]  # no positional argument
        for _ in range(2):  # a loop over one layer
            h = self.lin(h)
        return h.sum() + top.values.sum() + s.sum() + len(x.shape)


def _mixed_log(**options: object) -> dict[str, str]:
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(4, 6)
    return digest(lt.log_forward_pass(model, x, random_seed=0, **options))


OPTIONS = {
    "all": {},
    "none": {"layers_to_save": None},
    "some": {"layers_to_save": ["linear_1_1", "cat_1_2", "relu", "lin"]},
    "postfunc": {"activation_postfunc": lambda t: t.float().mean()},
    "postfunc only": {"activation_postfunc": lambda t: t.float().mean(), "save_raw_activation": False},
    "train mode": {"train_mode": True},
    "gradients": {"save_gradients": True},
}


@pytest.mark.parametrize("name", OPTIONS)
def test_both_paths_log_alike(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    hot = _mixed_log(**OPTIONS[name])
    monkeypatch.setattr(recorder, "_hotpath", None)
    assert _mixed_log(**OPTIONS[name]) == hot


def test_both_paths_stream_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hot = _mixed_log(save_activations_to=tmp_path / "hot")
    monkeypatch.setattr(recorder, "_hotpath", None)
    assert _mixed_log(save_activations_to=tmp_path / "python") == hot


class Raises(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x).relu() @ torch.ones(4, 2)  # shapes do not match


def _error_text() -> str:
    with pytest.raises(RuntimeError) as info:
        lt.log_forward_pass(Raises(), torch.ones(2, 3))
    return "\n".join([str(info.value), *getattr(info.value, "__notes__", [])])


def test_both_paths_report_a_raising_op_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    hot = _error_text()
    assert "matmul_1_4 (matmul)" in hot, hot
    monkeypatch.setattr(recorder, "_hotpath", None)
    assert _error_text() == hot


def test_a_capture_is_freed_without_the_cycle_collector() -> None:
    # the C handler holds the recorder while installed; it is removed on exit, so nothing waits for gc
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    seen = []
    original = recorder.Recorder.__exit__

    def exit_and_keep(self: recorder.Recorder, *exc: object) -> None:
        original(self, *exc)
        assert "__torch_function__" not in vars(self)
        seen.append(weakref.ref(self))

    gc.disable()
    try:
        recorder.Recorder.__exit__ = exit_and_keep
        log = lt.log_forward_pass(model, torch.ones(1, 2))
        del log
        assert seen and seen[0]() is None
    finally:
        recorder.Recorder.__exit__ = original
        gc.enable()


@pytest.mark.parametrize("chunk", range(2))
def test_the_python_path_matches_the_stored_zoo_output(chunk: int, python_path: None) -> None:
    names = sorted(STORED)[chunk::2]
    got = zoo_digests(names)
    changed = [f"{name}.{part}" for name in names for part, h in STORED[name].items() if got[name].get(part) != h]
    assert not changed, f"capture output changed on the Python path for {changed[:20]} ({len(changed)} parts)"


def test_the_c_walk_is_find_callsite() -> None:
    if recorder._hotpath is None:
        pytest.skip("the C hot path is not built")
    from lens_train.capture.callsites import OpenCalls, find_callsite

    walks = []

    def leaf(above: dict) -> None:
        here = sys._getframe(1)  # suspended at this call meanwhile: one offset for both walks
        codes_py, codes_c = {}, {}
        walks.append((find_callsite(None, codes_py, above, here)[0], recorder._hotpath.walk(None, codes_c, above, here)))
        assert codes_py == codes_c

    def inner(calls: OpenCalls) -> None:
        for above in ({}, calls.above):
            leaf(above)

    def outer(calls: OpenCalls) -> None:
        calls.enter(sys._getframe())  # the walk above this frame is shared
        try:
            inner(calls)
        finally:
            calls.exit(sys._getframe())

    for calls in (OpenCalls(None, {}, recorder._hotpath.walk, recorder._hotpath.note_call_code), OpenCalls(None, {})):
        outer(calls)
    flat, shared = walks[0], walks[1]
    assert flat[0] == flat[1] and shared[0] == shared[1]
    assert type(shared[0][0]) is tuple and len(shared[0][0]) == 4  # inner's and outer's frames, then the walk above
    assert len(flat[0]) > 4
    assert walks[3] == shared and walks[2] == flat


def _replay_parts(rec: object) -> tuple:
    template = rec.call_template
    rng = rec.rng_state
    return (rec.func_name, rec.parents, repr(template), rec.replay_context,
            None if rng is None else (rng[0].tolist(), len(rng[1])))


def test_both_paths_keep_alike_what_a_replay_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_train.capture.api import record_forward
    from lens_train.capture.recorder import CapturePlan

    def parts() -> list[tuple]:
        torch.manual_seed(0)
        model = Mixed()
        plan = CapturePlan(save="all", keep_templates=True, record_rng=True)
        rec = record_forward(model, (torch.randn(4, 6),), None, plan, 0)[0]
        return [_replay_parts(r) for r in rec.records]

    hot = parts()
    assert sum(p[2] != "None" for p in hot) > 20 and sum(p[4] is not None for p in hot) > 20
    monkeypatch.setattr(recorder, "_hotpath", None)
    assert parts() == hot


def test_both_paths_validate_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model, x = Mixed().eval(), torch.randn(4, 6)
    assert lt.validate_model_activations(model, x, random_seed=0)
    monkeypatch.setattr(recorder, "_hotpath", None)
    assert lt.validate_model_activations(model, x, random_seed=0)


def _record_fields(rec: object, params: dict[int, str]) -> dict:
    """Every field of a raw record, tensors by value, parameters by name, the run-dependent ones left out."""
    out = {}
    for name in rec.__slots__:
        value = getattr(rec, name)
        if name in ("time_s", "tensor_ref"):
            continue
        out[name] = (value.shape, value.dtype, value.tolist()) if isinstance(value, torch.Tensor) else value
    out["param_ids"] = [params[p] for p in rec.param_ids]
    return out


def test_both_paths_make_the_same_records(monkeypatch: pytest.MonkeyPatch) -> None:
    from lens_train.capture.api import record_forward
    from lens_train.capture.recorder import CapturePlan
    from lens_train.capture.records import OpRecord

    def fields(**plan: object) -> tuple[list[dict], list[dict]]:
        torch.manual_seed(0)
        model = Mixed()
        rec = record_forward(model, (torch.randn(4, 6),), None, CapturePlan(**plan), 0)[0]
        rec.resolve_callsites()
        params = {id(p): name for name, p in model.named_parameters()}
        calls = [{name: getattr(c, name) for name in c.__slots__} for c in rec.module_calls]
        return [_record_fields(r, params) for r in rec.records], calls

    fields(save="all")  # (what a first capture learns, thin functionals, every later one shares)
    for plan in ({"save": "all"}, {"save": frozenset({1, 3})}, {"save": "all", "train_mode": True}):
        hot, hot_calls = fields(**plan)
        assert sum(r["requires_grad"] for r in hot) > 10 and sum(r["activation"] is not None for r in hot) > 1
        assert len(hot_calls) >= 3 and all(c["last_op"] >= c["first_op"] >= 0 for c in hot_calls)
        with monkeypatch.context() as m:
            m.setattr(recorder, "_hotpath", None)
            assert fields(**plan) == (hot, hot_calls)
    if recorder._hotpath is not None:  # records and module calls are made without their __init__, from every slot
        from lens_train.capture.module_calls import ModuleCall

        rec = recorder.Recorder(nn.Linear(1, 1), CapturePlan(save="all"), None)
        assert rec._hot_handler().record_slots == len(OpRecord.__slots__)
        assert rec.module_tracker._hot_calls().call_slots == len(ModuleCall.__slots__)


@pytest.mark.skipif(recorder._hotpath is None, reason="the C extension is not built")
def test_c_labels_match_python_for_any_layer_type_text() -> None:
    """Labels are written straight into ASCII strings; other text takes the general path, to the same labels."""
    from lens_train.capture.passes import LayerGroup, pass_labels

    def groups() -> tuple[list, list]:
        main = [LayerGroup([0], "relu"), LayerGroup([1, 3], "süm" * 3), LayerGroup([2], "x" * 300)]
        return main, [LayerGroup([4], "add", bookkeeping=True)]

    main, side = groups()
    made, *lists = recorder._hotpath.label_groups(main, side, 5, LayerGroup)
    labels = [g.label for g in made]
    assert labels == ["relu_1_0", "sümsümsüm_1_1", "x" * 300 + "_1_2", "add_bk_1"]
    assert lists[0] == ["relu_1_0", "sümsümsüm_1_1:1", "x" * 300 + "_1_2", "sümsümsüm_1_1:2", "add_bk_1"]
    assert lists[1:] == [[0, 1, 2, 1, 3], [1, 1, 1, 2, 1]]
    assert (made[3].layer_index, made[3].type_index) == (-1, 1)
    assert pass_labels(made, 5) == tuple(lists)


@pytest.mark.skipif(recorder._hotpath is None, reason="the C extension is not built")
def test_c_pending_layers_are_the_python_ones() -> None:
    """build._pending_layers in C: the same class, the same pending fields, nothing else set (filled alike later)."""
    from lens_train.capture import build
    from lens_train.capture.layer_log import PENDING_FIELDS, PendingLayerLog

    from lens_train.capture.api import record_forward
    from lens_train.capture.recorder import CapturePlan

    torch.manual_seed(0)
    model = Mixed()
    log = build.build_log(record_forward(model, (torch.randn(4, 6),), None, CapturePlan(save="all"), 0)[0], model, {})
    source = log.layers[0]._key_index.source
    data, labels, keys = source.data, source.labels, log.layers[0]._key_index

    def state(layers: list) -> list:
        out = []
        for layer in layers:
            assert type(layer) is PendingLayerLog
            row = {}
            for name in type(layer).__mro__[1].__slots__:
                try:
                    row[name] = object.__getattribute__(layer, name)
                except AttributeError:
                    continue
            assert set(row) == set(PENDING_FIELDS)
            out.append(row)
        return out

    made = state(build._pending_layers(data, labels, keys, recorder._hotpath))
    assert made == state(build._pending_layers(data, labels, keys)) and len(made) == len(log.layers) > 5
    assert any(row["tensor_contents"] is not None for row in made)
    filled = build._pending_layers(data, labels, keys, recorder._hotpath)[2]
    assert filled.layer_type == log.layers[2].layer_type and type(filled) is not PendingLayerLog


class _Nest(nn.Module):
    """``depth`` modules each calling the next: more open calls than the C walk compares one by one."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.inner = _Nest(depth - 1) if depth > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.lin(x)) + 1
        return self.inner(x) * 2 if self.inner is not None else x


class _Deep(nn.Module):
    """Ops ``depth`` plain Python calls below forward: walks longer than the C side keeps."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x, self.depth)

    def down(self, x: torch.Tensor, left: int) -> torch.Tensor:
        x = x + left
        return self.down(x, left - 1) * 2 if left else x.relu()


@pytest.mark.parametrize("model", [lambda: _Nest(3), lambda: _Nest(12), lambda: _Deep(3), lambda: _Deep(40)])
def test_both_paths_find_the_same_call_sites_at_any_nesting(monkeypatch: pytest.MonkeyPatch, model: Any) -> None:
    def sites() -> list[tuple]:
        torch.manual_seed(0)
        log = lt.log_forward_pass(model(), torch.randn(2, 3), layers_to_save=None)
        return [(layer.layer_label, [(f.function, f.line) for f in layer.func_call_stack]) for layer in log.layers]

    hot = sites()
    assert len(hot) > 8 and len({label for label, _ in hot}) == len(hot)
    assert sites() == hot  # (walks the C side keeps from the first capture)
    monkeypatch.setattr(recorder, "_hotpath", None)
    assert sites() == hot


def test_a_prototype_only_for_init_that_just_stores() -> None:
    """The C side copies a prototype's fields only where ``__init__`` stores arguments and nothing else."""
    import dataclasses

    from lens_train.capture.records import stored_prototype

    @dataclasses.dataclass(slots=True)
    class Plain:
        a: int
        b: list = dataclasses.field(default_factory=list)
        c: int = 7

    @dataclasses.dataclass(slots=True)
    class Posted:
        a: int
        c: int = 7

        def __post_init__(self) -> None:
            self.c += 1

    names, proto = stored_prototype(Plain, 2)
    assert names == ("a", "b") and proto.c == 7
    assert stored_prototype(Plain, 1) == (("a",), None)  # a default factory past the passed arguments
    assert stored_prototype(Posted, 1)[1] is None


def _raw_sites(model: nn.Module, x: torch.Tensor) -> list[Any]:
    from lens_train.capture.api import record_forward
    from lens_train.capture.recorder import CapturePlan

    return [rec.callsite for rec in record_forward(model, (x,), None, CapturePlan(save="none"), 0)[0].records]


@pytest.mark.skipif(recorder._hotpath is None, reason="the C extension is not built")
def test_a_statement_keeps_one_raw_site_object_across_captures() -> None:
    """The C walk hands a statement the same raw site (walks above module calls included) every time it
    runs in the same context, so resolving a capture's records mostly finds each site by its object."""
    torch.manual_seed(0)
    model, x = _Nest(4), torch.randn(2, 3)
    _raw_sites(model, x)  # (a first capture in a process learns the thin functionals: some ops walk from elsewhere)
    first, second = _raw_sites(model, x), _raw_sites(model, x)
    assert len(first) == len(second) > 12
    nested = [a for a in first if a and type(a[0]) is tuple and a[1] and type(a[1][0]) is tuple]  # (own, (own, above))
    assert nested and all(a is b for a, b in zip(first, second))


@pytest.mark.parametrize("hot", [True, False])
def test_call_sites_stay_true_when_the_code_cache_is_cleared(monkeypatch: pytest.MonkeyPatch, hot: bool) -> None:
    """Clearing the code cache starts a new site numbering, and with it no site resolved before is taken."""
    from lens_train.capture import callsites

    def sites() -> list[tuple]:
        log = lt.log_forward_pass(_Nest(3), torch.randn(2, 3), layers_to_save=None, random_seed=0)
        return [(layer.layer_label, [(f.function, f.line) for f in layer.func_call_stack]) for layer in log.layers]

    if not hot:
        monkeypatch.setattr(recorder, "_hotpath", None)
    expected = sites()
    monkeypatch.setattr(callsites, "_CODE_INFO", {})
    monkeypatch.setattr(callsites, "_WALKS", {})
    monkeypatch.setattr(callsites, "_MAX_CODES", 1)  # every code resolved clears the caches first
    callsites._new_numbering()  # (as a clear does: no site resolved before is taken now)
    before = callsites.shared_sites()
    assert sites() == expected and sites() == expected
    assert callsites.shared_sites() is not before
    monkeypatch.setattr(callsites, "_MAX_SITES", 1)  # a full numbering is replaced before the next capture
    numbering = callsites.shared_sites()
    assert sites() == expected and callsites.shared_sites() is not numbering
    monkeypatch.undo()
    if not hot:
        monkeypatch.setattr(recorder, "_hotpath", None)
    callsites._new_numbering()
    assert sites() == expected
    from lens_train.capture.api import record_forward
    from lens_train.capture.recorder import CapturePlan

    callsites._new_numbering()
    rec = record_forward(_Nest(3), (torch.randn(2, 3),), None, CapturePlan(save="none"), 0)[0]
    rec.resolve_callsites()
    assert rec._sites is callsites.shared_sites()  # numbered afresh, none taken from before:
    numbers = [r.callsite for r in rec.records if r.callsite != ()]  # (inputs and outputs have no call site)
    assert len(numbers) >= 8 and set(numbers) <= set(rec._sites.values())


class _GradMix(nn.Module):
    """Ops with and without autograd in turn: leaves that require grad, no-grad regions, detached values."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x).relu()
        with torch.no_grad():
            z = (x * 2).exp()
            w = self.lin(z)
        leaf = torch.ones(3, requires_grad=True)
        v = leaf * 2 + y.detach()
        u = (y + leaf).sum(0) * w.mean()
        return torch.ones(2, requires_grad=True) + u[:2] + v.sum()


def test_both_paths_read_grad_metadata_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C side reads a tensor's grad_fn before requires_grad while tensors need grad, and tensor
    metadata through torch.Tensor's getters directly: records the same on both paths, in every mode."""

    def grads(**plan: object) -> list[tuple]:
        from lens_train.capture.api import record_forward
        from lens_train.capture.recorder import CapturePlan

        torch.manual_seed(0)
        records = record_forward(_GradMix(), (torch.randn(2, 3),), None, CapturePlan(**plan), 0)[0].records
        return [(r.func_name, r.requires_grad, r.grad_fn_name, r.shape, r.dtype, r.device, r.version) for r in records]

    for plan in ({"save": "none"}, {"save": "all", "train_mode": True}):
        hot = grads(**plan)
        kinds = {(rg, fn is None) for _, rg, fn, *_ in hot}
        assert kinds == {(True, False), (True, True), (False, True)}  # with a grad_fn, leaves, no grad
        monkeypatch.setattr(recorder, "_hotpath", None)
        assert grads(**plan) == hot
        monkeypatch.undo()
    if recorder._hotpath is not None:
        from lens_train.capture.recorder import CapturePlan

        rec = recorder.Recorder(nn.Linear(1, 1), CapturePlan(save="all"), None)
        assert rec._hot_handler().tensor_version != 0  # the getters are called directly


class _ParamKinds(nn.Module):
    """Parameters of several dtypes and shapes, one shared under two names, a 0-d one, an empty one."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 4).double()
        self.c = nn.Sequential(self.a)
        self.scale = nn.Parameter(torch.tensor(2.0, dtype=torch.float16))
        self.empty = nn.Parameter(torch.zeros(0, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.c(x).double()).float() * self.scale.float() + self.empty.sum()


@pytest.mark.skipif(recorder._hotpath is None, reason="the C extension is not built")
def test_c_param_info_is_the_python_one() -> None:
    from lens_train.capture.build import _param_info
    from lens_train.capture.model_index import index_model

    model = _ParamKinds()
    params = index_model(model).params
    assert len(params) == 8
    expected = _param_info(params)
    assert recorder._hotpath.param_info(params) == expected
    assert expected[id(model.scale)] == ("scale", (), 1, 2) and expected[id(model.empty)] == ("empty", (0, 5), 0, 0)
    assert expected[id(model.b.weight)][3] == 128 and expected[id(model.a.weight)][0] == "a.weight"
    log = lt.log_forward_pass(model, torch.randn(2, 3))
    assert log.meta["num_params_total"] == sum(p.numel() for p in model.parameters())


class _Odd(nn.Module):
    """Shared modules, None entries in every dict, a buffer and parameters at several depths."""

    def __init__(self) -> None:
        super().__init__()
        shared = nn.Linear(2, 2)
        self.a = nn.Sequential(shared, nn.ReLU(), nn.Sequential(shared, nn.BatchNorm1d(2)))
        self.b = shared
        self.register_module("missing", None)
        self.register_parameter("no_param", None)
        self.register_buffer("no_buffer", None)
        self.register_buffer("steps", torch.zeros(()))
        self.w = nn.Parameter(torch.ones(2))


class _OwnWalk(nn.Sequential):
    def named_modules(self, *args: Any, **kwargs: Any) -> Any:
        return super().named_modules(*args, **kwargs)


class _OwnGetattribute(nn.Linear):
    def __getattribute__(self, name: str) -> Any:
        return super().__getattribute__(name)


@pytest.mark.skipif(recorder._hotpath is None, reason="the C extension is not built")
@pytest.mark.parametrize("make", [_Odd, lambda: nn.Sequential(_Odd(), _OwnWalk(nn.ReLU())),
                                  lambda: nn.Sequential(nn.ReLU(), _OwnGetattribute(2, 2))])
def test_c_model_walk_and_index_are_the_python_ones(monkeypatch: pytest.MonkeyPatch, make: Any) -> None:
    from lens_train.capture import model_index

    model = make()
    walk, index = model_index.walk_modules(model), model_index.index_model(model)
    assert walk == tuple(model.named_modules(remove_duplicate=False))
    assert index.params == tuple(model.named_parameters(remove_duplicate=False))
    assert index.buffers == tuple(model.named_buffers(remove_duplicate=False))
    hot = model_index.loaded_hotpath
    # (a module with its own walk or attribute access: the C side declines, the Python path runs)
    assert (hot.walk_modules(model, nn.Module.named_modules, {}) is None) == (make is not _Odd)
    assert (hot.index_tensors(walk, {}) is None) == any(isinstance(m, _OwnGetattribute) for m in model.modules())
    facts = model_index.module_facts(walk)
    assert (hot.module_facts(walk, "FSDP") is None) == any(isinstance(m, _OwnGetattribute) for m in model.modules())
    monkeypatch.setattr(model_index, "loaded_hotpath", None)
    assert model_index.walk_modules(model) == walk and model_index.index_model(model) == index
    assert model_index.module_facts(walk) == facts and len(facts.unique) == len({id(m) for m in model.modules()})


class _Branches(nn.Module):
    """A buffer counter (bookkeeping) and a Python condition on a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return x * 2 if x.sum() > 0 else x - 1


@pytest.mark.skipif(recorder._hotpath is None, reason="the C extension is not built")
@pytest.mark.parametrize(("make", "expected"), [(_Branches, (True, True)),
                                                (lambda: nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (False, False)),
                                                (lambda: nn.BatchNorm1d(3).train(), (True, False))])
def test_c_record_scan_is_the_python_one(make: Any, expected: tuple) -> None:
    from lens_train.capture.api import record_forward
    from lens_train.capture.recorder import CapturePlan

    records = record_forward(make(), (torch.randn(4, 3),), None, CapturePlan(save="none"), 0)[0].records
    side = any(r.buffer_write is not None or r.framework for r in records)
    assert recorder._hotpath.scan_records(records) == (side, any(r.bool_values for r in records)) == expected
