"""Every bad argument to the public API gets the library's own error, naming the argument, the value and a fix.

The table walks ``lt.__all__`` and ``lt.callbacks.__all__`` (and the public functions of
``lt.fastlog`` and ``lt.losses``): each row is one bad call. The error must be a
``LensTrainError`` that is also a ``ValueError``/``TypeError`` (or ``KeyError``/``IndexError``
for lookups), raised at the call, and its message must name the argument and the value
and show a working call.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lens_train as lt
from lens_train.errors import LensTrainError

MODEL = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
X = torch.ones(2, 3)
LOG = lt.log_forward_pass(MODEL, X)
NAN, INF = float("nan"), float("inf")
META = torch.ones(2, 3, device="meta")


def _lfp(**kw: Any) -> Callable[[], Any]:
    return lambda: lt.log_forward_pass(MODEL, X, **kw)


def _kw(fn: Callable[..., Any], *args: Any, **kw: Any) -> Callable[[], Any]:
    return lambda: fn(*args, **kw)


def _disk_recording(tmp: Path) -> Path:
    with lt.fastlog.Recorder(MODEL, keep_op=lambda c: c.kind == "op", storage="disk", path=tmp / "rec"):
        MODEL(X)
    return tmp / "rec"


class _LensNet(lt.LensModule, nn.Module):
    pass


# (API name, argument, bad value, call). ``tmp`` (a fresh directory) is passed to calls that take one argument.
ROWS: list[tuple[str, str, Any, Callable[..., Any]]] = [
    # capture
    *[("log_forward_pass", "random_seed", v, _lfp(random_seed=v)) for v in ("abc", 2**70, -1, 1.5, True)],
    *[("log_forward_pass", "activation_postfunc", v, _lfp(activation_postfunc=v)) for v in (5, "relu")],
    *[("log_forward_pass", "train_mode", v, _lfp(train_mode=v)) for v in ("no", 2, None)],
    *[("log_forward_pass", "layers_to_save", v, _lfp(layers_to_save=v)) for v in ({"relu_1_2": 1}, 5, 2.5, [1.5], "everything")],
    *[("log_forward_pass", "save_raw_activation", v, _lfp(save_raw_activation=v)) for v in ("yes", 0)],
    *[("log_forward_pass", "save_gradients", v, _lfp(save_gradients=v)) for v in ("yes", 1)],
    *[("log_forward_pass", "keep_activations_in_memory", v, _lfp(keep_activations_in_memory=v)) for v in ("no",)],
    *[("log_forward_pass", "save_activations_to", v, _lfp(save_activations_to=v)) for v in (123, b"x", ["a"])],
    ("log_forward_pass", "vis_opt", "fancy", _lfp(vis_opt="fancy")),
    ("log_forward_pass", "model", 5, _kw(lt.log_forward_pass, 5, X)),
    ("log_forward_pass", "input_kwargs", 5, _kw(lt.log_forward_pass, MODEL, X, 5)),
    ("get_model_activations", "random_seed", "abc", _kw(lt.get_model_activations, MODEL, X, random_seed="abc")),
    ("get_model_metadata", "train_mode", "no", _kw(lt.get_model_metadata, MODEL, X, train_mode="no")),
    ("get_nodes", "model", "net", _kw(lt.get_nodes, "net", X)),
    ("get_layers", "model", None, _kw(lt.get_layers, None)),
    ("show_model_graph", "vis_opt", 3, _kw(lt.show_model_graph, MODEL, X, vis_opt=3)),
    ("show_model_graph", "vis_nesting_depth", "deep", _kw(lt.show_model_graph, MODEL, X, vis_nesting_depth="deep")),
    ("show_model_graph", "vis_fileformat", "docx", _kw(lt.show_model_graph, MODEL, X, vis_fileformat="docx")),
    ("validate_model_activations", "input_args", "meta", _kw(lt.validate_model_activations, MODEL, META)),
    ("validate_model_activations", "random_seed", "abc", _kw(lt.validate_model_activations, MODEL, X, random_seed="abc")),
    ("validate_model_activations", "verbose", "loud", _kw(lt.validate_model_activations, MODEL, X, verbose="loud")),
    ("ModelLog[]", "key", 10**9, lambda: LOG[10**9]),
    ("ModelLog[]", "key", 2.5, lambda: LOG[2.5]),
    ("ModelLog.to_csv", "path", "<a directory>", lambda tmp: LOG.to_csv(tmp)),
    ("ModelLog.to_json", "path", "<a directory>", lambda tmp: LOG.to_json(tmp)),
    ("ModelLog.to_csv", "path", 123, lambda: LOG.to_csv(123)),
    ("log_forward_pass", "layers_to_save", 99, _lfp(layers_to_save=[99])),
    ("log_forward_pass", "layers_to_save", "nope_9", _lfp(layers_to_save=["nope_9"])),
    ("log_forward_pass", "vis_nesting_depth", "deep", _lfp(vis_opt="rolled", vis_nesting_depth="deep", vis_save_only=True)),
    ("log_forward_pass", "vis_colour", "vis_colour", _lfp(vis_colour="red")),
    ("log_forward_pass", "layer_to_save", "layer_to_save", _lfp(layer_to_save="all")),
    ("get_nodes", "input_kwargs", [1], _kw(lt.get_nodes, MODEL, X, [1])),
    ("validate_model_activations", "random_seed", -3, _kw(lt.validate_model_activations, MODEL, X, random_seed=-3)),
    ("validate_model_activations", "input_kwargs", "meta", _kw(lt.validate_model_activations, MODEL, (), {"x": META})),
    ("ModelLog[]", "key", "nope_9_9", lambda: LOG["nope_9_9"]),
    ("ModelLog[]", "key", None, lambda: LOG[None]),
    # bundles
    *[("save", "path", v, _kw(lt.save, LOG, v)) for v in (None, 123)],
    *[("save", "shard_size", v, lambda tmp, v=v: lt.save(LOG, tmp / "b", shard_size=v)) for v in ("x", 0, -5, 1.5)],
    ("save", "append", "yes", lambda tmp: lt.save(LOG, tmp / "b", append="yes")),
    ("save", "log", "log", lambda tmp: lt.save("log", tmp / "b")),
    *[("load", "path", v, _kw(lt.load, v)) for v in (None, 123)],
    ("load", "lazy", "yes", lambda tmp: (lt.save(LOG, tmp / "b"), lt.load(tmp / "b", lazy="yes"))),
    ("load", "unit", "0", lambda tmp: (lt.save(LOG, tmp / "b"), lt.load(tmp / "b", unit="0"))),
    *[("load_snapshots", "run_dir_or_checkpoint", v, _kw(lt.load_snapshots, v)) for v in (None, 123)],
    ("load_snapshots", "state_key", 5, lambda tmp: lt.load_snapshots(tmp, state_key=5)),
    ("load", "unit", 7, lambda tmp: (lt.save(LOG, tmp / "b"), lt.load(tmp / "b", unit=7))),
    ("load", "path", "<a file>", lambda tmp: ((tmp / "f").write_text("x"), lt.load(tmp / "f"))),
    ("load_snapshots", "run_dir_or_checkpoint", "<missing>", lambda tmp: lt.load_snapshots(tmp / "nothing")),
    ("save", "path", "<a file>", lambda tmp: ((tmp / "f").write_text("x"), lt.save(LOG, tmp / "f"))),
    # fastlog
    *[("fastlog.load", "path", v, _kw(lt.fastlog.load, v)) for v in (None, 123)],
    *[("fastlog.recover", "path", v, _kw(lt.fastlog.recover, v)) for v in (None, 123)],
    ("fastlog.Recording[]", "key", 10**9, lambda: lt.fastlog.record(MODEL, X, keep_op=lambda c: True)[10**9]),
    ("fastlog.record", "keep_op", "yes", lambda: lt.fastlog.record(MODEL, X, keep_op=lambda c: "yes")),
    ("fastlog.record", "keep_op", 1, lambda: lt.fastlog.record(MODEL, X, keep_op=lambda c: 1)),
    ("fastlog.record", "keep_op", 5, lambda: lt.fastlog.record(MODEL, X, keep_op=5)),
    ("fastlog.record", "history_size", -1, lambda: lt.fastlog.record(MODEL, X, keep_op=lambda c: True, history_size=-1)),
    ("fastlog.dry_run", "history_size", "x", lambda: lt.fastlog.dry_run(MODEL, X, history_size="x")),
    ("fastlog.Recorder", "storage", "cloud", lambda: lt.fastlog.Recorder(MODEL, keep_op=bool, storage="cloud")),
    ("fastlog.Recorder", "path", 123, lambda: lt.fastlog.Recorder(MODEL, keep_op=bool, storage="disk", path=123)),
    ("fastlog.Recorder", "model", "net", lambda: lt.fastlog.Recorder("net", keep_op=bool)),
    ("fastlog.CaptureSpec", "dtype", "half", lambda: lt.fastlog.CaptureSpec(dtype="half")),
    ("fastlog.CaptureSpec", "keep_grad", "yes", lambda: lt.fastlog.CaptureSpec(keep_grad="yes")),
    ("fastlog.Recording[]", "key", -5, lambda: lt.fastlog.record(MODEL, X, keep_op=lambda c: True)[-5]),
    ("fastlog.Recorder", "keep_op", None, lambda: lt.fastlog.Recorder(MODEL, keep_op=None)),
    ("fastlog.Recorder", "history_size", 2.5, lambda: lt.fastlog.Recorder(MODEL, keep_op=bool, history_size=2.5)),
    ("fastlog.CaptureSpec", "device", 3.5, lambda: lt.fastlog.CaptureSpec(device=3.5)),
    ("fastlog.record", "keep_op", None, lambda: lt.fastlog.record(MODEL, X)),
    # training parts
    *[("AuxiliaryLoss", "weight", v, _kw(lt.AuxiliaryLoss, {"0": lt.losses.l1_activity()}, weight=v)) for v in ("a", NAN, INF, None)],
    ("AuxiliaryLoss", "weights", "big", _kw(lt.AuxiliaryLoss, {"0": lt.losses.l1_activity()}, weights={"0": "big"})),
    ("AuxiliaryLoss", "losses", 5, _kw(lt.AuxiliaryLoss, 5)),
    ("AuxiliaryLoss", "schedule", 5, _kw(lt.AuxiliaryLoss, {"0": lt.losses.l1_activity()}, schedule=5)),
    *[("Probes", "lr", v, _kw(lt.Probes, ["0"], num_classes=3, lr=v)) for v in (-1, 0, "fast", NAN)],
    *[("Probes", "num_classes", v, _kw(lt.Probes, ["0"], num_classes=v)) for v in (0, 2.5, "ten")],
    ("Probes", "task", "ranking", _kw(lt.Probes, ["0"], num_classes=3, task="ranking")),
    ("Probes", "num_outputs", 0, _kw(lt.Probes, ["0"], task="regression", num_outputs=0)),
    ("Probes", "layers", 5, _kw(lt.Probes, 5, num_classes=3)),
    *[("Extract", "node_out", v, _kw(lt.Extract, MODEL, X, node_out=v)) for v in ([], 5, "nope_9_9")],
    ("Extract", "node_in", 2.5, _kw(lt.Extract, MODEL, X, node_in=2.5, node_out="linear_2_3")),
    ("Taps", "layers", 5, _kw(lt.Taps, MODEL, 5, example_input=X)),
    ("Taps", "passes", "some", _kw(lt.Taps, MODEL, ["0"], example_input=X, passes="some")),
    ("Taps", "missing", "maybe", _kw(lt.Taps, MODEL, ["0"], example_input=X, missing="maybe")),
    ("Taps", "clone", "yes", _kw(lt.Taps, MODEL, ["0"], example_input=X, clone="yes")),
    ("Taps", "save_gradients", "yes", _kw(lt.Taps, MODEL, ["0"], example_input=X, save_gradients="yes")),
    ("Inspect", "layer", 5, _kw(lt.Inspect, MODEL, 5)),
    ("Inspect", "keep_output", "yes", _kw(lt.Inspect, MODEL, "0", keep_output="yes")),
    ("Distillation", "weight", "a", _kw(lt.Distillation, MODEL, MODEL, pairs={"0": "0"}, weight="a", example_input=X)),
    ("Distillation", "weight", NAN, _kw(lt.Distillation, MODEL, MODEL, pairs={"0": "0"}, weight=NAN, example_input=X)),
    ("Distillation", "teacher", "t", _kw(lt.Distillation, "t", MODEL, pairs={"0": "0"}, example_input=X)),
    ("Distillation", "pairs", 5, _kw(lt.Distillation, MODEL, MODEL, pairs=5, example_input=X)),
    ("losses.deep_supervision", "num_classes", 0, _kw(lt.losses.deep_supervision, num_classes=0)),
    ("losses.deep_supervision", "num_classes", "10", _kw(lt.losses.deep_supervision, num_classes="10")),
    ("losses.kd_kl", "temperature", -1, _kw(lt.losses.kd_kl, temperature=-1)),
    ("losses.kd_kl", "temperature", "hot", _kw(lt.losses.kd_kl, temperature="hot")),
    ("LensModule.configure_lens", "layers", 5, lambda: _LensNet().configure_lens(5)),
    ("LensModule.configure_lens", "save_gradients", "yes", lambda: _LensNet().configure_lens(["0"], save_gradients="yes")),
    ("Probes", "optimizer", "adam", _kw(lt.Probes, ["0"], num_classes=3, optimizer="adam")),
    ("AuxiliaryLoss", "weight", True, _kw(lt.AuxiliaryLoss, {"0": lt.losses.l1_activity()}, weight=True)),
    ("Taps", "model", "net", _kw(lt.Taps, "net", ["0"])),
    ("Distillation", "student", 5, _kw(lt.Distillation, MODEL, 5, pairs={"0": "0"}, example_input=X)),
    ("losses.deep_supervision", "hidden", 0, _kw(lt.losses.deep_supervision, num_classes=3, hidden=0)),
    ("losses.kd_kl", "temperature", NAN, _kw(lt.losses.kd_kl, temperature=NAN)),
    # callbacks
    ("callbacks.ProbeCallback", "layers", None, _kw(lt.callbacks.ProbeCallback, None, 3)),
    *[("callbacks.ProbeCallback", "lr", v, _kw(lt.callbacks.ProbeCallback, ["0"], 3, lr=v)) for v in (-1, "x")],
    ("callbacks.ProbeCallback", "num_classes", "3", _kw(lt.callbacks.ProbeCallback, ["0"], "3")),
    *[("callbacks.ActivationSnapshotCallback", "layers", v, _kw(lt.callbacks.ActivationSnapshotCallback, layers=v)) for v in (5, [], "some")],
    ("callbacks.ActivationSnapshotCallback", "every_n_steps", 0, _kw(lt.callbacks.ActivationSnapshotCallback, every_n_steps=0)),
    ("callbacks.ActivationSnapshotCallback", "drift", "yes", _kw(lt.callbacks.ActivationSnapshotCallback, drift="yes")),
    ("callbacks.ActivationSnapshotCallback", "dirname", "../../x", _kw(lt.callbacks.ActivationSnapshotCallback, dirname="../../x")),
    ("callbacks.ActivationSnapshotCallback", "batch_to_input", 2.5, _kw(lt.callbacks.ActivationSnapshotCallback, batch_to_input=2.5)),
    ("callbacks.ActivationStatsCallback", "every_n_steps", -2, _kw(lt.callbacks.ActivationStatsCallback, ["0"], every_n_steps=-2)),
    ("callbacks.ActivationStatsCallback", "stats", "median", _kw(lt.callbacks.ActivationStatsCallback, ["0"], stats=["median"])),
    ("callbacks.ActivationStatsCallback", "layers", 5, _kw(lt.callbacks.ActivationStatsCallback, 5)),
    *[("callbacks.AuxiliaryLossCallback", "weight", v, _kw(lt.callbacks.AuxiliaryLossCallback, {"0": lt.losses.l1_activity()}, weight=v))
      for v in ("a", NAN)],
    ("callbacks.AuxiliaryLossCallback", "losses", [], _kw(lt.callbacks.AuxiliaryLossCallback, [])),
    ("callbacks.ActivationStatsCallback", "save_gradients", "yes", _kw(lt.callbacks.ActivationStatsCallback, ["0"], save_gradients="yes")),
    ("callbacks.ActivationStatsCallback", "layers", [], _kw(lt.callbacks.ActivationStatsCallback, [])),
    ("callbacks.ProbeCallback", "task", "rank", _kw(lt.callbacks.ProbeCallback, ["0"], 3, task="rank")),
    ("callbacks.ProbeCallback", "batch_to_targets", 1.5, _kw(lt.callbacks.ProbeCallback, ["0"], 3, batch_to_targets=1.5)),
    ("callbacks.AuxiliaryLossCallback", "weights", "big", _kw(lt.callbacks.AuxiliaryLossCallback, {"0": lt.losses.l1_activity()},
                                                               weights={"0": "big"})),
    ("callbacks.DistillationCallback", "pairs", 5, _kw(lt.callbacks.DistillationCallback, MODEL, 5)),
    ("callbacks.ActivationSnapshotCallback", "keep_last", 0, _kw(lt.callbacks.ActivationSnapshotCallback, keep_last=0)),
    ("callbacks.ActivationSnapshotCallback", "every_n_epochs", "1", _kw(lt.callbacks.ActivationSnapshotCallback, every_n_epochs="1")),
    ("callbacks.DistillationCallback", "teacher", None, _kw(lt.callbacks.DistillationCallback, None, {"0": "0"})),
    ("callbacks.DistillationCallback", "weight", "a", _kw(lt.callbacks.DistillationCallback, MODEL, {"0": "0"}, weight="a")),
    ("callbacks.GraphLoggerCallback", "every_n_epochs", -1, _kw(lt.callbacks.GraphLoggerCallback, every_n_epochs=-1)),
    ("callbacks.GraphLoggerCallback", "annotate", "yes", _kw(lt.callbacks.GraphLoggerCallback, annotate="yes")),
    ("callbacks.GraphLoggerCallback", "vis_nesting_depth", 0, _kw(lt.callbacks.GraphLoggerCallback, vis_nesting_depth=0)),
    ("callbacks.GraphLoggerCallback", "vis_opt", "fancy", _kw(lt.callbacks.GraphLoggerCallback, vis_opt="fancy")),
    ("callbacks.GraphLoggerCallback", "vis_fileformat", 5, _kw(lt.callbacks.GraphLoggerCallback, vis_fileformat=5)),
    ("callbacks.CausalImportanceCallback", "every_n_epochs", 0, _kw(lt.callbacks.CausalImportanceCallback, ["0"],
                                                                     every_n_epochs=0)),
    ("callbacks.CausalImportanceCallback", "metric", "f1", _kw(lt.callbacks.CausalImportanceCallback, ["0"], metric="f1")),
    ("callbacks.CausalImportanceCallback", "layers", 5, _kw(lt.callbacks.CausalImportanceCallback, 5)),
    ("Taps", "edits", ["0"], _kw(lt.Taps, MODEL, ["0"], edits=["0"])),
    ("Taps", "during", "training", _kw(lt.Taps, MODEL, ["0"], edits={"0": "zero"}, during="training")),
    ("edits.noise", "std", -1, _kw(lt.edits.noise, -1)),
    ("edits.noise", "relative", "yes", _kw(lt.edits.noise, 0.1, relative="yes")),
    ("edits.mean", "reference", [1.0], _kw(lt.edits.mean, reference=[1.0])),
    ("intervene", "edits", ["0"], _kw(lt.intervene, MODEL, X, edits=["0"])),
    ("intervene", "edits", "nope", _kw(lt.intervene, MODEL, X, edits={"nope": "zero"})),
    ("intervene", "edits", 5, _kw(lt.intervene, MODEL, X, edits={5: "zero"})),
    ("intervene", "params", "0.wieght", _kw(lt.intervene, MODEL, X, params={"0.wieght": torch.zeros(4, 3)})),
    ("intervene", "params", 1.5, _kw(lt.intervene, MODEL, X, params={"0.weight": 1.5})),
    ("intervene", "modules", "9", _kw(lt.intervene, MODEL, X, modules={"9": nn.Tanh()})),
    ("intervene", "modules", 7, _kw(lt.intervene, MODEL, X, modules={"1": 7})),
    ("intervene", "save_activations_to", "b", _kw(lt.intervene, MODEL, X, edits={"0": "zero"}, save_activations_to="b")),
    ("patch", "seq_dim", "1", _kw(lt.patch, MODEL, X, X, ["0"], lambda o: 0.0, seq_dim="1")),
    ("patch", "layers", 3, _kw(lt.patch, MODEL, X, X, 3, lambda o: 0.0)),
    ("patch", "layers", "nope", _kw(lt.patch, MODEL, X, X, ["nope"], lambda o: 0.0)),
    ("patch", "metric", "acc", _kw(lt.patch, MODEL, X, X, ["0"], "acc")),
    ("log_forward_pass", "replayable", "yes", _kw(lt.log_forward_pass, MODEL, X, replayable="yes")),
    ("ModelLog.replay_with", "fallback", "retry",
     lambda: lt.log_forward_pass(MODEL, X, replayable=True).replay_with({"0": "zero"}, fallback="retry")),
]

# Public names that are not called with user arguments: errors, modules walked separately, data records.
NOT_CALLED = {"BundleError", "BundleWarning", "LayerNotFoundError", "LensTrainError", "errors", "callbacks", "fastlog",
              "losses", "LayerLog", "ModuleLog", "ModelLog", "__version__", "PatchResult"}


def _public_names() -> set[str]:
    names = {n for n in lt.__all__ if n not in NOT_CALLED}
    names |= {f"callbacks.{n}" for n in lt.callbacks.__all__}
    return names


def test_the_table_covers_every_public_callable() -> None:
    covered = {row[0].split("[")[0].split(".")[0] if not row[0].startswith(("callbacks.", "fastlog.", "losses."))
               else row[0] for row in ROWS}
    covered |= {"ModelLog", "LensModule"}
    missing = {n for n in _public_names() if n not in covered and n.split(".")[0] not in covered}
    assert not missing, f"add bad-argument rows for {sorted(missing)}"
    assert len(ROWS) >= 150


def _shown(value: Any) -> list[str]:
    """Ways the message may show ``value``."""
    if isinstance(value, float) and math.isnan(value):
        return ["nan"]
    if isinstance(value, str) and value.startswith("<"):
        return [""]
    text = repr(value)
    return [text[:20], str(value)[:20]]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}-{r[1]}-{r[2]!r}"[:60] for r in ROWS])
def test_a_bad_argument_gets_the_library_error(row: tuple, tmp_path: Path) -> None:
    api, argument, value, call = row
    with pytest.raises(LensTrainError) as info:
        call(tmp_path) if inspect.signature(call).parameters else call()
    err = info.value
    assert isinstance(err, (ValueError, TypeError, KeyError, IndexError)), type(err).__mro__
    message = str(err)
    assert argument in message or api in ("ModelLog[]", "fastlog.Recording[]"), message
    assert any(s in message for s in _shown(value)), message
    assert "xample" in message or "e.g." in message or "List every" in message or "lens-train" in message, message
