"""lt.fastlog: predicate recording without a full log."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.bundle.format import JOURNAL_NAME, frame
from lens_train.bundle.reader import BundleReader
from lens_train.errors import AmbiguousLayerError, BundleError, InvalidArgumentError, LayerNotFoundError

from bench.models import Encoder
from tests.models import InPlaceViews, TanhLoop


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(3 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x))
        h = torch.relu(self.fc1(h.flatten(1)))
        return self.fc2(h) * 2


def _net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return Net(), torch.randn(2, 1, 6, 6)


def _hook_outputs(model: nn.Module, x: torch.Tensor, cls: type) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o.detach().clone()))
               for n, m in model.named_modules() if isinstance(m, cls)]
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_op_labels_and_values_match_the_full_log() -> None:
    model, x = _net()
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.kind == "op")
    log = lt.log_forward_pass(model, x)
    assert rec.labels == ["conv2d_1", "relu_1", "flatten_1", "linear_1", "relu_2", "linear_2", "mul_1"]
    for entry in rec:
        assert torch.equal(entry.value, log[entry.label].activation), entry.label
        assert entry.context.shape == log[entry.label].tensor_shape


def test_module_outputs_match_forward_hooks() -> None:
    model, x = _net()
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.kind == "module" and c.module_class == "Linear")
    hooks = _hook_outputs(model, x, nn.Linear)
    assert rec.labels == ["fc1:1", "fc2:1"]
    assert torch.equal(rec["fc1:1"], hooks["fc1"]) and torch.equal(rec["fc2:1"], hooks["fc2"])
    assert rec.rollouts[0].entry("fc2:1").context.module_address == "fc2"


def test_history_selects_relus_right_after_a_conv() -> None:
    model, x = _net()
    after_conv = lambda c: c.kind == "op" and c.layer_type == "relu" and any(  # noqa: E731
        h.kind == "op" and h.layer_type == "conv2d" for h in list(c.history)[-2:])
    assert [e.label for e in lt.fastlog.dry_run(model, x, keep_op=after_conv)] == ["relu_1"]
    events = lt.fastlog.dry_run(model, x)
    assert all(e.history == () for e in events)
    kinds = [(e.kind, e.label) for e in events]
    assert kinds[:4] == [("op", "conv2d_1"), ("module", "conv:1"), ("op", "relu_1"), ("module", "act:1")]


def test_capture_spec_downcasts_and_keeps_the_graph() -> None:
    model, x = _net()
    rec = lt.fastlog.record(model, x, keep_op=lambda c: lt.fastlog.CaptureSpec(dtype=torch.float16) if c.label == "linear_1" else
                            lt.fastlog.CaptureSpec(keep_grad=True) if c.label == "relu_2" else False)
    assert rec["linear_1"].dtype == torch.float16 and not rec["linear_1"].requires_grad
    kept = rec["relu_2"]
    assert kept.requires_grad and kept.grad_fn is not None
    (grad,) = torch.autograd.grad(kept.sum(), model.fc1.bias)
    h = model.fc1(model.act(model.conv(x)).flatten(1))
    assert torch.allclose(grad, (h > 0).float().sum(0))


def test_values_changed_in_place_later_are_kept_as_they_were() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True))
    x = torch.randn(3, 4)
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.kind == "op")
    expected = model[0](x)
    assert (expected < 0).any()
    assert torch.equal(rec["linear_1"], expected)
    assert torch.equal(rec["relu_1"], expected.clamp(min=0))


def test_recorder_keeps_one_rollout_per_call_and_groups_on_request() -> None:
    model, _ = _net()
    xs = [torch.randn(1, 1, 6, 6) for _ in range(3)]
    with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "module" and c.module_address == "fc2") as r:
        for x in xs:
            model(x)
        with r.rollout():
            model(xs[0])
            model(xs[1])
    rec = r.recording
    assert len(rec.rollouts) == 4
    for i, x in enumerate(xs):
        assert torch.equal(rec[i]["fc2:1"], _hook_outputs(model, x, nn.Linear)["fc2"])
    assert list(rec[3]) == ["fc2:1", "fc2:2"] and rec[3].num_calls == 2
    assert len(rec.values("fc2:1")) == 4
    with pytest.raises(AmbiguousLayerError, match=r"rec\[i\]"):
        rec["fc2:1"]
    with pytest.raises(LayerNotFoundError, match="fc2:1"):
        rec[0]["fc2:3"]


def test_a_failed_call_is_not_kept_and_recording_goes_on() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op") as r:
        model(torch.ones(1, 2))
        with pytest.raises(RuntimeError):
            model(torch.ones(1, 3))
        model(torch.ones(1, 2))
    assert len(r.recording.rollouts) == 2 and r.lost_calls == 1
    assert torch._C._len_torch_function_stack() == 0


def test_recurrent_loops_count_every_pass() -> None:
    model, x = TanhLoop(3, steps=3), torch.ones(1, 3)
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.layer_type == "tanh")
    log = lt.log_forward_pass(model, x)
    assert rec.labels == ["tanh_1", "tanh_2", "tanh_3"]
    passes = log.layer_passes(log["tanh_1:1"].layer_label_no_pass)
    for i, layer in enumerate(passes, start=1):
        assert torch.equal(rec[f"tanh_{i}"], layer.activation)
    modules = lt.fastlog.dry_run(model, x, keep_op=lambda c: c.kind == "module")
    assert [(e.label, e.pass_num) for e in modules] == [("cell:1", 1), ("cell:2", 2), ("cell:3", 3)]


def test_transformer_relus_match_the_log() -> None:
    torch.manual_seed(0)
    model, x = Encoder(16, 2, heads=2).eval(), torch.randn(2, 5, 16)
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.kind == "op" and c.layer_type == "relu")
    log = lt.log_forward_pass(model, x)
    assert rec.labels == ["relu_1", "relu_2"]
    for label in rec.labels:
        assert torch.equal(rec[label], log[label].activation)
        assert rec.rollouts[0].entry(label).context.module_address == log[label].containing_modules[-1].split(":")[0]


def test_disk_storage_matches_ram_and_survives_reopening(tmp_path: Path) -> None:
    model, _ = _net()
    keep = lambda c: c.kind == "op" and c.layer_type in ("relu", "linear")  # noqa: E731
    with lt.fastlog.Recorder(model, keep_op=keep, storage="both", path=tmp_path / "rec") as r:
        for _ in range(3):
            model(torch.randn(2, 1, 6, 6))
    ram, disk = r.recording, lt.fastlog.load(tmp_path / "rec")
    assert len(disk.rollouts) == 3 and disk.labels == ram.labels
    for a, b in zip(ram, disk):
        assert a.label == b.label and torch.equal(a.value, b.value)
        assert a.context.describe() == b.context.describe()
    with lt.fastlog.Recorder(model, keep_op=keep, storage="disk", path=tmp_path / "rec") as r2:
        model(torch.randn(2, 1, 6, 6))
    assert [ro.index for ro in r2.recording.rollouts] == [0, 1, 2, 3]
    assert "4 rollout(s)" in r2.recording.summary()


def test_recover_loads_complete_rollouts_and_reports_the_rest(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh())
    path = tmp_path / "crashed"
    with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path=path):
        for i in range(3):
            model(torch.full((1, 2), float(i)))
    # what a process killed mid-commit leaves: a half-written shard, a shard whose commit record never
    # came, and a commit record cut short
    shards = sorted(path.glob("activations-*.safetensors"))
    (path / "activations-00007.safetensors").write_bytes(b"\x00" * 10)
    (path / "activations-00008.safetensors").write_bytes(shards[0].read_bytes())
    with open(path / JOURNAL_NAME, "ab") as f:
        f.write(frame("unit", {"index": 3, "metadata": {}})[:20])
    rec = lt.fastlog.recover(path)
    assert len(rec.rollouts) == 3
    assert torch.equal(rec[2]["tanh_1"], model(torch.full((1, 2), 2.0)).detach())
    assert len(rec.lost) == 3 and any("unfinished commit record (20 bytes)" in item for item in rec.lost)
    assert sum("never committed" in item for item in rec.lost) == 2
    assert "lost:" in rec.summary()
    with pytest.warns(lt.BundleWarning, match="never committed"):  # uncommitted data is ignored, as lt.load does
        assert len(lt.fastlog.load(path).rollouts) == 3
    # recording goes on after the crash: the cut record is dropped, no shard name is reused
    with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path=path):
        model(torch.full((1, 2), 3.0))
    rec = lt.fastlog.recover(path)
    assert [ro.index for ro in rec.rollouts] == [0, 1, 2, 3]
    assert torch.equal(rec[3]["tanh_1"], model(torch.full((1, 2), 3.0)).detach())
    assert len(rec.lost) == 2 and (path / "activations-00009.safetensors").exists()
    with pytest.warns(lt.BundleWarning, match="never committed"):
        assert len(lt.fastlog.load(path).rollouts) == 4


def test_recover_skips_damaged_rollouts_and_keeps_the_rest(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    path = tmp_path / "rec"
    with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path=path):
        for i in range(3):
            model(torch.full((1, 2), float(i)))
    shard = BundleReader(path).units[1]["shards"][0]["file"]
    (path / shard).write_bytes((path / shard).read_bytes()[:-2])
    lines = (path / JOURNAL_NAME).read_bytes().splitlines(keepends=True)
    (path / JOURNAL_NAME).write_bytes(lines[0] + lines[1] + lines[2].replace(b'"num_calls":1', b'"num_calls":2'))
    rec = lt.fastlog.recover(path)
    assert [ro.index for ro in rec.rollouts] == [0]
    assert any(item.startswith("rollout 1: ") and "truncated" in item for item in rec.lost)
    assert any("line 3 fails its checksum" in item and "Unit 2 was skipped" in item for item in rec.lost)
    assert torch.equal(rec[0]["linear_1"], model(torch.zeros(1, 2)).detach())
    with pytest.raises(BundleError, match="damaged.*recover"):  # committed data that is damaged is an error
        lt.fastlog.load(path)


@pytest.mark.parametrize("metadata", [{"entries": 5}, {"entries": [3]}, {"entries": [{"label": 1}]}, {"num_calls": -1, "entries": []},
                                      {"entries": [{"dtype": "float32"}]}, {"entries": [[[[]]]]}, "not a dict"])
def test_recover_never_raises_on_a_malformed_commit_record(tmp_path: Path, metadata: object) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    path = tmp_path / "rec"
    with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path=path):
        model(torch.zeros(1, 2))
    with open(path / JOURNAL_NAME, "ab") as f:
        f.write(frame("unit", {"index": 1, "metadata": metadata, "shards": [], "tensors": {}}))
    rec = lt.fastlog.recover(path)
    assert [ro.index for ro in rec.rollouts] == [0] and len(rec.lost) >= 1, rec.lost
    with pytest.raises(BundleError):
        lt.fastlog.load(path)


def test_a_second_recorder_on_the_same_path_is_refused(tmp_path: Path) -> None:
    model = nn.Sequential(nn.ReLU())
    with lt.fastlog.Recorder(model, keep_op=bool, storage="disk", path=tmp_path / "r"):
        with pytest.raises(BundleError, match="being written by another BundleWriter"):
            with lt.fastlog.Recorder(model, keep_op=bool, storage="disk", path=tmp_path / "r"):
                pass
    lt.save(lt.log_forward_pass(model, torch.ones(1)), tmp_path / "capture")
    with pytest.raises(BundleError, match="kind 'capture'"):
        with lt.fastlog.Recorder(model, keep_op=bool, storage="disk", path=tmp_path / "capture"):
            pass
    with pytest.raises(BundleError, match="not a fastlog recording. Load it with lt.load"):
        lt.fastlog.recover(tmp_path / "capture")


def test_disk_recording_memory_stays_flat(tmp_path: Path) -> None:
    policy = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    obs = torch.randn(1, 4)
    marks = []
    with lt.fastlog.Recorder(policy, keep_op=lambda c: c.kind == "module", storage="disk", path=tmp_path / "r"):
        tracemalloc.start()
        for i in range(1, 121):
            policy(obs)
            if i in (40, 120):
                marks.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.stop()
    # each rollout kept in memory would add ~2.5 KB (200 KB here); torch's own caches warm up by ~20 KB
    assert marks[1] - marks[0] < 64 * 1024, marks
    rec = lt.fastlog.load(tmp_path / "r")
    assert len(rec.rollouts) == 120 and torch.equal(rec[119]["2:1"], policy(obs).detach())


@pytest.mark.slow
def test_a_killed_recording_process_keeps_its_committed_rollouts(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, torch, lens_train as lt
        class Policy(torch.nn.Module):
            calls = 0
            def forward(self, x):
                Policy.calls += 1
                if Policy.calls == 4:
                    os._exit(3)  # killed in the middle of the fourth rollout
                return torch.tanh(x * Policy.calls)
        model = Policy()
        with lt.fastlog.Recorder(model, keep_op=lambda c: c.kind == "op", storage="disk", path={str(tmp_path / 'r')!r}):
            for _ in range(5):
                model(torch.ones(2))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=120)
    assert proc.returncode == 3
    rec = lt.fastlog.load(tmp_path / "r")  # nothing was lost: the fourth rollout had not started its commit
    assert [ro.index for ro in rec.rollouts] == [0, 1, 2]
    assert torch.equal(rec[2]["tanh_1"], torch.tanh(torch.full((2,), 3.0)))
    with lt.fastlog.Recorder(nn.Tanh(), keep_op=lambda c: c.kind == "op", storage="disk", path=tmp_path / "r") as r:
        nn.Tanh()(torch.ones(1))
    assert len(lt.fastlog.load(tmp_path / "r").rollouts) == 3 and r.lost_calls == 0


def test_arguments_and_predicate_errors_are_explained(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(InvalidArgumentError, match="storage"):
        lt.fastlog.Recorder(model, keep_op=bool, storage="cloud")
    with pytest.raises(InvalidArgumentError, match="path="):
        lt.fastlog.Recorder(model, keep_op=bool, storage="disk")
    with pytest.raises(InvalidArgumentError, match="keep_op"):
        lt.fastlog.record(model, torch.ones(1, 2))
    with pytest.raises(BundleError, match="No fastlog recording"):
        lt.fastlog.recover(tmp_path / "nothing")

    def bad(ctx: lt.fastlog.RecordContext) -> bool:
        raise KeyError("oops")

    with pytest.raises(KeyError) as info:
        lt.fastlog.record(model, torch.ones(1, 2), keep_op=bad)
    assert any("keep_op predicate" in n for n in info.value.__notes__)
    assert torch._C._len_torch_function_stack() == 0
    assert not model._forward_hooks and not model[0]._forward_pre_hooks


def test_dry_run_stores_nothing_and_model_is_left_untouched() -> None:
    model, x = _net()
    before = model(x)
    events = lt.fastlog.dry_run(model, x, keep_op=lambda c: c.kind == "op")
    assert [e.index for e in events] == sorted(e.index for e in events)
    assert "conv2d_1" in str(events[0])
    assert torch.equal(model(x), before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())



def test_labels_agree_with_the_log_after_in_place_ops_on_views() -> None:
    torch.manual_seed(0)
    model, x = InPlaceViews(), torch.randn(3, 4)
    log = lt.log_forward_pass(model, x)
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.kind == "op")
    expected = [layer.layer_label_short for layer in log if not (layer.is_input or layer.is_output)]
    assert rec.labels == expected
    # view, then base: mul_ of y[0] then of y, zero_ of z[1] then of z, add_ of the narrowed z then of z
    assert [k for k in rec.labels if k[:4] in ("mul_", "zero", "add_")][:8] == [
        "mul_1", "mul_2", "mul_3", "add_1", "zero_1", "zero_2", "add_2", "add_3"]
    for entry in rec:
        assert entry.context.shape == log[entry.label].tensor_shape, entry.label
        assert torch.equal(entry.value, log[entry.label].activation), entry.label
    base = rec.rollouts[0].entry("mul_3").context
    assert base.shape == (3, 4) and base.output_index == 1 and base.func_name == "mul_"
    assert torch.equal(rec["mul_1"], model.fc(x) * 1)  # y as it was before the in-place op


def test_unknown_labels_list_the_closest_and_how_to_list_them() -> None:
    model, x = _net()
    rec = lt.fastlog.record(model, x, keep_op=lambda c: c.kind == "op")
    with pytest.raises(LayerNotFoundError, match=r"kept no event 'relu_3'\. Closest: 'relu_2', 'relu_1'.*list\(rollout\).*"
                       r"lt\.fastlog\.dry_run\(model, x\)"):
        rec["relu_3"]
    log_label = lt.log_forward_pass(model, x)["relu_2"].layer_label
    with pytest.raises(LayerNotFoundError, match=rf"'{log_label}' looks like a ModelLog label \(lt\.get_nodes\(model, x\) "
                       r"lists those\).*so try 'relu_2'"):
        rec.values(log_label)


def test_capture_spec_moves_to_another_device() -> None:
    model, x = _net()
    rec = lt.fastlog.record(model, x, keep_op=lambda c: lt.fastlog.CaptureSpec(device="meta") if c.label == "relu_1" else
                            c.label == "linear_1")
    assert rec["relu_1"].device.type == "meta" and rec["relu_1"].shape == (2, 3, 4, 4)
    assert rec["linear_1"].device.type == "cpu"
    assert torch.equal(rec["linear_1"], model.fc1(model.act(model.conv(x)).flatten(1)))


def test_record_inside_an_except_block_keeps_its_rollout() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    try:
        raise ValueError("the user's own error, being handled")
    except ValueError:
        rec = lt.fastlog.record(model, torch.ones(2, 3), keep_op=lambda ctx: ctx.layer_type == "relu")
    assert len(rec) == 1 and rec["relu_1"].shape == (2, 3)


_KILL_RECORDERS = textwrap.dedent("""
    import os, random, signal, sys, time, torch, lens_train as lt
    torch.set_num_threads(1)  # no thread pool exists yet: forking below is safe
    root, kills, rng = sys.argv[1], int(sys.argv[2]), random.Random(0)
    for k in range(kills):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # a recorder that runs until it is killed
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh())
            with lt.fastlog.Recorder(model, keep_op=lambda c: True, storage="disk", path=f"{root}/r{k}"):
                for i in range(10**9):
                    model(torch.full((8, 64), float(i)))
                    if i == 2:
                        os.write(ready_w, b"x")
        os.read(ready_r, 1)
        time.sleep(rng.uniform(0, 0.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
""")


@pytest.mark.slow
def test_every_recording_loads_after_a_sigkill_at_any_moment(tmp_path: Path) -> None:
    """SIGKILL recorders at random moments: each recording loads (uncommitted data ignored), resumes and loads again."""
    kills = 12
    proc = subprocess.run([sys.executable, "-c", _KILL_RECORDERS, str(tmp_path), str(kills)], cwd=Path(__file__).parent.parent,
                          timeout=300)
    assert proc.returncode == 0
    loaded = 0
    for i in range(kills):
        path = tmp_path / f"r{i}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lt.BundleWarning)
            rec = lt.fastlog.load(path)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.Tanh())
        last = rec.rollouts[-1]
        assert len(rec.rollouts) >= 3 and [ro.index for ro in rec.rollouts] == list(range(len(rec.rollouts)))
        assert torch.equal(last["1:1"], model(torch.full((8, 64), float(last.index))).detach())
        with lt.fastlog.Recorder(model, keep_op=lambda c: True, storage="disk", path=path):
            model(torch.zeros(8, 64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lt.BundleWarning)
            assert len(lt.fastlog.load(path).rollouts) == len(rec.rollouts) + 1
        loaded += 1
    assert loaded == kills
