"""Streaming capture: log_forward_pass(..., save_activations_to=path, keep_activations_in_memory=...)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.bundle.streaming import CaptureStream
from lens_train.errors import BundleError, InvalidArgumentError
from tests.models import DemoNetwork, SimpleRecurrent
from tests.models.log_compare import assert_same_log, bit_equal


class Chain(nn.Module):
    """``n`` elementwise ops in a row; counts how many intermediate tensors' memory is still held."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.alive_at_end = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        refs = []
        for _ in range(self.n):
            x = x * 1.5
            refs.append(weakref.ref(x.untyped_storage()))  # alive while any view of the bytes is
        self.alive_at_end = sum(r() is not None for r in refs)
        return x


def _postfunc(t: torch.Tensor) -> tuple:
    return t.float().abs().amax(dim=-1), t.numel()


@pytest.mark.parametrize("keep", [True, False])
def test_streamed_bundle_equals_the_log_and_an_in_memory_capture(tmp_path: Path, keep: bool) -> None:
    model, x = SimpleRecurrent(), torch.randn(3, 5)
    plain = lt.log_forward_pass(model, x, random_seed=4, activation_postfunc=_postfunc)
    log = lt.log_forward_pass(model, x, random_seed=4, activation_postfunc=_postfunc,
                              save_activations_to=tmp_path / "s", keep_activations_in_memory=keep)
    assert all((layer.activation is not None) == keep for layer in log)
    assert all((layer.transformed_activation is not None) == keep for layer in log)
    assert all(layer.is_saved for layer in log)
    for a, b in zip(plain, log):
        assert bit_equal(a.activation, b.materialize_activation()), a.layer_label
        assert bit_equal(a.transformed_activation, b.transformed_activation), a.layer_label
    assert_same_log(log, lt.load(tmp_path / "s"))
    assert_same_log(log, lt.load(tmp_path / "s", lazy=True), materialize=True)
    assert log.bundle_info["path"] == str(tmp_path / "s")


def test_dropped_activations_are_freed_as_the_forward_pass_runs(tmp_path: Path) -> None:
    model, x = Chain(20), torch.randn(64, 64)
    model(x)
    assert model.alive_at_end == 1  # a plain forward pass keeps only the current tensor
    lt.log_forward_pass(model, x)
    assert model.alive_at_end == 20  # an in-memory capture keeps all of them
    log = lt.log_forward_pass(model, x, save_activations_to=tmp_path / "s", keep_activations_in_memory=False)
    assert model.alive_at_end <= 2
    assert all(layer.activation is None for layer in log)
    expected = x * 1.5 ** 20
    assert torch.allclose(log[-1].materialize_activation(), expected)


def test_streaming_a_selection_and_metadata_only(tmp_path: Path) -> None:
    model, x = DemoNetwork(), torch.randn(2, 5)
    log = lt.log_forward_pass(model, x, layers_to_save=["fc", "relu_2"], random_seed=0,
                              save_activations_to=tmp_path / "a", keep_activations_in_memory=False)
    assert [layer.layer_label for layer in log if layer.is_saved] == ["linear_1_3", "relu_2_4"]
    assert_same_log(lt.load(tmp_path / "a"), log, materialize=True)
    meta = lt.log_forward_pass(model, x, layers_to_save=None, save_activations_to=tmp_path / "b")
    assert lt.load(tmp_path / "b").num_saved == 0 == meta.num_saved


def test_stream_arguments_are_checked_before_the_model_runs(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(BundleError, match=r"Refusing to overwrite .*taken.* not a lens_train bundle.*save_activations_to="):
        lt.log_forward_pass(nn.ReLU(), torch.ones(2), save_activations_to=tmp_path / "taken")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(InvalidArgumentError, match="also pass save_activations_to"):
        lt.log_forward_pass(nn.ReLU(), torch.ones(2), keep_activations_in_memory=False)


def test_streaming_to_an_existing_bundle_replaces_it_once_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s"
    old = lt.log_forward_pass(DemoNetwork(), torch.randn(1, 5), random_seed=0, save_activations_to=path)
    seen_during: list[list[str]] = []
    real_sink = CaptureStream.sink

    def sink(self, rec):  # noqa: ANN001
        if not seen_during:  # mid-stream: the old bundle is still whole at the path
            assert_same_log(old, lt.load(path))
            seen_during.append(sorted(p.name for p in tmp_path.iterdir()))
        real_sink(self, rec)

    monkeypatch.setattr(CaptureStream, "sink", sink)
    new = lt.log_forward_pass(SimpleRecurrent(), torch.randn(2, 5), random_seed=1, save_activations_to=path,
                              keep_activations_in_memory=False)
    assert seen_during[0][1] == "s" and seen_during[0][0].startswith(".s.new-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert_same_log(lt.load(path), new, materialize=True)  # new's layers read the swapped-in bundle
    assert new.bundle_info["path"] == str(path)


def test_a_failed_stream_over_an_existing_bundle_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    old = lt.log_forward_pass(DemoNetwork(), torch.randn(1, 5), random_seed=0, save_activations_to=path)
    with pytest.raises(RuntimeError, match="boom"):
        lt.log_forward_pass(Failing(), torch.ones(3), save_activations_to=path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    assert_same_log(old, lt.load(path))


@pytest.mark.slow
def test_a_killed_stream_over_an_existing_bundle_leaves_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "s"
    old = lt.log_forward_pass(DemoNetwork(), torch.randn(1, 5), random_seed=0, save_activations_to=path)
    _stream_in_a_process_that_dies(path, keep_activations_in_memory=True)
    assert_same_log(old, lt.load(path))
    (debris,) = [p for p in tmp_path.iterdir() if p.name != "s"]
    assert debris.name.startswith(".s.new-")
    with pytest.raises(BundleError, match="no committed capture"):
        lt.load(debris)
    assert debris.is_dir()  # loading never deletes; the next successful save removes the dead writer's debris
    lt.log_forward_pass(DemoNetwork(), torch.randn(1, 5), random_seed=0, save_activations_to=path)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def _stream_in_a_process_that_dies(path: Path, keep_activations_in_memory: bool) -> None:
    """Stream a capture to ``path`` in a new process that is killed after five ops."""
    script = textwrap.dedent(f"""
        import os, torch, lens_train as lt
        class Dies(torch.nn.Module):
            def forward(self, x):
                for _ in range(5):
                    x = x + 1
                os._exit(3)
        lt.log_forward_pass(Dies(), torch.ones(1000), save_activations_to={str(path)!r},
                            keep_activations_in_memory={keep_activations_in_memory})
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent.parent, timeout=120)
    assert proc.returncode == 3


class Failing(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(x * 2)
        raise RuntimeError("boom")


def test_a_failed_capture_leaves_no_bundle(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        lt.log_forward_pass(Failing(), torch.ones(3), save_activations_to=tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_stream_is_never_loaded_as_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CaptureStream, "abort", lambda self: None)  # as if the process died mid-forward
    with pytest.raises(RuntimeError, match="boom"):
        lt.log_forward_pass(Failing(), torch.ones(3), save_activations_to=tmp_path / "s")
    with pytest.raises(BundleError, match="no committed capture.*activations-00000.safetensors .*never committed"):
        lt.load(tmp_path / "s")


@pytest.mark.slow
def test_a_killed_process_leaves_a_bundle_that_loads_nothing_uncommitted(tmp_path: Path) -> None:
    _stream_in_a_process_that_dies(tmp_path / "s", keep_activations_in_memory=False)
    with pytest.raises(BundleError, match="no committed capture: its writer stopped.*never committed"):
        lt.load(tmp_path / "s")


def test_streaming_works_with_gradients_and_replays(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh())
    x = torch.randn(2, 3)
    log = lt.log_forward_pass(model, x, save_gradients=True, save_activations_to=tmp_path / "s")
    log["tanh_1_2"].activation.sum().backward()
    assert torch.allclose(log["linear_1_1"].gradient, 1 - model(x).detach() ** 2)
    new = torch.randn(2, 3)
    log.save_new_activations(model, new)
    assert torch.allclose(log["tanh_1_2"].activation, model(new))
    assert torch.allclose(lt.load(tmp_path / "s")["tanh_1_2"].activation, model(x))


def test_loading_warns_about_what_was_never_committed(tmp_path: Path) -> None:
    log = lt.log_forward_pass(nn.ReLU(), torch.ones(2), save_activations_to=tmp_path / "s")
    (tmp_path / "s" / "activations-00007.safetensors").write_bytes(b"\0" * 100)  # a later writer died here
    with pytest.warns(lt.BundleWarning, match="left out: activations-00007.safetensors \\(100 B\\): written but never committed"):
        loaded = lt.load(tmp_path / "s")
    assert_same_log(log, loaded)
    assert loaded.bundle_info["left_out"] == [
        "activations-00007.safetensors (100 B): written but never committed (the writer stopped before its unit's commit)."]
