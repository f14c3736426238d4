"""Real Hugging Face architectures (tiny, random weights, offline) through the whole engine.

For every architecture of :data:`tests.zoo.hf_architectures.HF_ARCHS`:

- capturing every op gives the output a plain forward pass gives;
- ``validate_model_activations`` is True (the verbose report is the failure message);
- every op gets the same label, type, shape and containing modules in train and eval mode;
- a tap on one block, used in an auxiliary loss, gives the parameter gradients that the same
  loss written with a plain forward hook gives.

List today's failures with ``pytest -q -rf tests/zoo/test_hf_sweep.py``.
"""

from __future__ import annotations

import difflib
import inspect
import os
from typing import Any

import pytest
import torch

import lens_train as lt
from lens_train.capture.api import forked_rng
from lens_train.capture import validation

from .hf_architectures import HF_ARCHS, build_hf
from .test_zoo import _leaves

NAMES = sorted(HF_ARCHS)
REQUIRED = {
    "decoder": {"gpt2", "llama", "mistral", "qwen2", "gemma", "phi", "gpt_neox", "opt"},
    "encoder": {"bert", "roberta", "distilbert", "albert", "electra"},
    "encoder-decoder": {"t5", "bart", "whisper"},
    "vision": {"vit", "deit", "swin", "convnext", "resnet", "mobilenet_v2"},
    "audio": {"wav2vec2"},
    "multimodal": {"clip"},
    "state-space": {"mamba"},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine OpenMP's
    spin-waiting made single forward/backward passes 10-50x slower (measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)




def _plain(model: torch.nn.Module, args: tuple, kwargs: dict) -> Any:
    with forked_rng(0):
        return model(*args, **kwargs)


def _bookkeeping(log: lt.ModelLog) -> set[str]:
    """Buffer updates (BatchNorm's ``num_batches_tracked += 1``): in-place ops whose tensor parents
    are all buffers, and the buffer reads that feed only them. They run in train mode only and are
    not on the data path, so the comparison leaves them out (however the engine labels them)."""
    by_label = {lay.layer_label: lay for lay in log}
    updates = {lay.layer_label for lay in log if lay.is_inplace and lay.parent_layers
               and all(by_label[p].is_buffer for p in lay.parent_layers if p in by_label)}
    reads = {lay.layer_label for lay in log if lay.is_buffer and lay.child_layers and set(lay.child_layers) <= updates}
    return updates | reads


def _signature(log: lt.ModelLog) -> list[tuple[str, str, tuple[int, ...], tuple[str, ...]]]:
    """(label, type, shape, containing modules) of every data-path op, in order."""
    skip = _bookkeeping(log)
    return [(lay.layer_label, lay.layer_type, tuple(lay.tensor_shape), tuple(lay.containing_modules))
            for lay in log if lay.layer_label not in skip]


def test_sweep_covers_the_required_architectures() -> None:
    assert len(HF_ARCHS) >= 30
    for family, names in REQUIRED.items():
        have = {a.name for a in HF_ARCHS.values() if a.family == family}
        assert names <= have, f"{family}: missing {sorted(names - have)}"


@pytest.mark.parametrize("name", NAMES)
def test_called_without_a_cache(name: str) -> None:
    model, _, kwargs = build_hf(name)
    if "use_cache" in inspect.signature(model.forward).parameters:
        assert kwargs.get("use_cache") is False


def test_sweep_runs_offline() -> None:
    import huggingface_hub.constants

    assert os.environ["HF_HUB_OFFLINE"] == os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert huggingface_hub.constants.HF_HUB_OFFLINE


@pytest.mark.parametrize("name", NAMES)
def test_capture_equals_plain_forward(name: str) -> None:
    model, args, kwargs = build_hf(name)
    expected = _leaves(_plain(model, args, kwargs))
    log = lt.log_forward_pass(model, args, kwargs, layers_to_save="all", random_seed=0)
    got = _leaves(log.output)
    assert len(got) == len(expected) > 0
    for a, b in zip(expected, got):
        assert torch.equal(a.detach(), b.detach())
    assert all(lay.activation is not None for lay in log), "layers_to_save='all' saves every op"
    for a, label in zip(expected, log.output_layers):
        assert torch.equal(a.detach(), log[label].activation)


@pytest.mark.parametrize("name", NAMES)
def test_validates(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    model, args, kwargs = build_hf(name)
    ok = lt.validate_model_activations(model, args, kwargs, verbose=True, random_seed=0)
    assert ok, capsys.readouterr().out


@pytest.mark.parametrize("name", ["gpt2", "t5", "vit", "resnet", "wav2vec2", "clip", "mamba"])
def test_corrupted_capture_fails_validation(name: str, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """On a real architecture too, one wrong saved value (the first linear/conv output) is found."""
    original, corrupted = validation.record_forward, []

    def corrupting_record(*args: Any) -> Any:  # the capture validation replays, one saved value changed
        recorder, output, elapsed = original(*args)
        rec = next(r for r in recorder.records if r.func_name in ("linear", "conv1d", "conv2d"))
        corrupted.append(rec.index)
        rec.activation = rec.activation + 0.5
        return recorder, output, elapsed

    monkeypatch.setattr(validation, "record_forward", corrupting_record)
    assert lt.validate_model_activations(*build_hf(name), verbose=True, random_seed=0) is False
    out = capsys.readouterr().out
    assert corrupted and "from its parents' saved values gives different values" in out, out


@pytest.mark.parametrize("name", NAMES)
def test_labels_identical_in_train_and_eval_mode(name: str) -> None:
    model, args, kwargs = build_hf(name)
    train = _signature(lt.get_model_metadata(model.train(), args, kwargs, random_seed=0))
    evaluation = _signature(lt.get_model_metadata(model.eval(), args, kwargs, random_seed=0))
    arch = HF_ARCHS[name]
    if arch.train_only_ops:
        _check_named_mode_difference(train, evaluation, arch.train_only_ops)
    elif train != evaluation:
        first = next((i for i, (a, b) in enumerate(zip(train, evaluation)) if a != b), min(len(train), len(evaluation)))
        pytest.fail(f"{len(train)} ops in train mode, {len(evaluation)} in eval mode; first difference at op {first}: "
                    f"train {train[first] if first < len(train) else None} vs eval "
                    f"{evaluation[first] if first < len(evaluation) else None}")


def test_mamba_builds_its_cache_in_eval_mode_only() -> None:
    """Why the builders pass ``use_cache=False``: by default Mamba's path differs by mode."""
    model, args, kwargs = build_hf("mamba")
    kwargs = {k: v for k, v in kwargs.items() if k != "use_cache"}

    def cache_ops(log: lt.ModelLog) -> list[str]:
        return [lay.layer_type for lay in log if any("cache_utils" in f.file for f in lay.func_call_stack)]

    assert cache_ops(lt.get_model_metadata(model.train(), args, kwargs, random_seed=0)) == []
    assert {"zeros", "copy"} <= set(cache_ops(lt.get_model_metadata(model.eval(), args, kwargs, random_seed=0)))


def _check_named_mode_difference(train: list, evaluation: list, train_only: tuple[str, ...]) -> None:
    """The model runs ``train_only`` extra ops in train mode and nothing else differs.

    The extra ops shift later labels (they take numbers), so the other ops are compared by
    type, shape and containing modules; labels are compared up to the first extra op.
    """
    strip = [row[1:] for row in train], [row[1:] for row in evaluation]
    matcher = difflib.SequenceMatcher(None, *strip, autojunk=False)
    extra = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        assert tag in ("equal", "delete"), f"eval mode differs beyond the named train-only ops: {tag} " \
            f"train {train[i1:i2][:3]} vs eval {evaluation[j1:j2][:3]}"
        extra += [row[1] for row in train[i1:i2]] if tag == "delete" else []
    assert sorted(extra) == sorted(train_only)
    first = next(i for i, row in enumerate(train) if row[1:] != (strip[1][i] if i < len(strip[1]) else None))
    assert train[:first] == evaluation[:first]


def _split(block: str) -> tuple[str, int]:
    address, _, call = block.partition(":")
    return address, int(call or 1)


def _square_mean(value: Any) -> torch.Tensor:
    return _leaves(value)[0].float().pow(2).mean()


@pytest.mark.parametrize("name", NAMES)
def test_tap_gradients_equal_forward_hooks(name: str) -> None:
    block = HF_ARCHS[name].block
    model, args, kwargs = build_hf(name)
    taps = lt.Taps(model, [block])
    with forked_rng(0), taps:
        out = model(*args, **kwargs)
    tapped = _leaves(taps[block])[0]
    (_square_mean(out) + 0.5 * _square_mean(tapped)).backward()

    reference, args, kwargs = build_hf(name)
    address, call = _split(block)
    seen: list[Any] = []
    handle = reference.get_submodule(address).register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        out = _plain(reference, args, kwargs)
    finally:
        handle.remove()
    hooked = _leaves(seen[call - 1])[0]
    (_square_mean(out) + 0.5 * _square_mean(hooked)).backward()

    assert torch.equal(tapped.detach(), hooked.detach())
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    for pname, p in want.items():
        g = got[pname].grad
        assert (g is None) == (p.grad is None), pname
        if g is not None:
            torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-8, msg=lambda m: f"{pname}: {m}")
