"""The shared tap session in ``trainer.validate`` and ``trainer.test`` on their own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lens_train as lt
from lens_train.callbacks import ActivationSnapshotCallback, AuxiliaryLossCallback, ProbeCallback
from tests.callbacks.lit_models import LitNet, fit, loaders, trainer

TEST_LOADER = torch.utils.data.DataLoader(loaders(n=64)[0].dataset, batch_size=16)  # 4 equal batches


def _expected(module: LitNet, probes: ProbeCallback) -> dict[str, float]:
    """Hand-computed test metrics: the l1 term on layer1 and the layer2 probe's accuracy, in eval mode."""
    x, y = TEST_LOADER.dataset.tensors
    module.eval()
    with torch.no_grad():
        h1 = module.net.layer1(x)
        pred = probes.probes.heads["layer2"](module.net.layer2(h1))
        task = torch.nn.functional.cross_entropy(module.net.head(module.net.layer2(h1)), y, reduction="none")
    return {"test/aux/layer1": 0.5 * float(h1.abs().mean()), "probe/layer2/test_acc": float((pred.argmax(1) == y).float().mean()),
            "test_loss": float(task.view(4, 16).mean(1).mean())}


def _callbacks() -> tuple[AuxiliaryLossCallback, ProbeCallback]:
    return (AuxiliaryLossCallback({"layer1": lt.losses.l1_activity()}, weight=0.5),
            ProbeCallback(layers=["layer2"], num_classes=3, lr=0.05))


def test_test_after_fit_logs_terms_and_probe_accuracy(tmp_path: Path) -> None:
    module = LitNet()
    aux, probes = _callbacks()
    t = fit(tmp_path, module, [aux, probes], max_epochs=2)
    (metrics,) = t.test(module, TEST_LOADER, verbose=False)
    for key, value in _expected(module, probes).items():
        assert metrics[key] == pytest.approx(value, rel=1e-5), key  # test_loss: the term was not added
    assert "test_step" not in module.__dict__
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def test_fresh_callbacks_test_a_checkpoint_with_its_probes(tmp_path: Path) -> None:
    module = LitNet()
    aux, probes = _callbacks()
    fit(tmp_path / "fit", module, [aux, probes, ModelCheckpoint(dirpath=tmp_path / "ckpt")], max_epochs=2,
        enable_checkpointing=True)
    expected = _expected(module, probes)
    fresh_aux, fresh_probes = _callbacks()
    t = trainer(tmp_path / "test", [fresh_aux, fresh_probes])
    (metrics,) = t.test(LitNet(), TEST_LOADER, ckpt_path=str(next((tmp_path / "ckpt").glob("*.ckpt"))), verbose=False)
    assert torch.equal(fresh_probes.probes.heads["layer2"].body.weight, probes.probes.heads["layer2"].body.weight)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5), key


def test_validate_without_fit_skips_untrained_parts_then_fit_still_works(tmp_path: Path) -> None:
    module = LitNet()
    l1, probes = _callbacks()
    deep = AuxiliaryLossCallback({"layer2": lt.losses.deep_supervision(num_classes=3)})
    t = trainer(tmp_path, [l1, deep, probes])
    with pytest.warns(UserWarning, match="ProbeCallback skips trainer.validate"):
        (metrics,) = t.validate(module, loaders()[1], verbose=False)
    x = loaders()[1].dataset.tensors[0]
    module.eval()
    with torch.no_grad():
        assert metrics["val/aux/layer1"] == pytest.approx(0.5 * float(module.net.layer1(x).abs().mean()), rel=1e-5)
    assert "val/aux/layer2" not in metrics and not any(k.startswith("probe/") for k in metrics)
    # Heads built under validation's inference mode still train in a later fit.
    t = fit(tmp_path / "fit", module, [l1, deep, probes], max_epochs=1)
    assert {"aux/layer2", "probe/layer2/val_acc"} <= set(t.logged_metrics)


def test_testing_an_older_checkpoint_leaves_the_snapshot_list_alone(tmp_path: Path) -> None:
    module = LitNet()
    snaps = ActivationSnapshotCallback(layers=["layer1"], every_n_epochs=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    t = fit(tmp_path, module, [snaps, checkpoint], max_epochs=2, enable_checkpointing=True)
    t.test(module, TEST_LOADER, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt"), verbose=False)
    assert [s.step for s in snaps.snapshots] == [4, 8]
    assert [s.step for s in lt.load_snapshots(tmp_path)] == [4, 8]


def test_two_instances_of_one_callback_keep_their_own_checkpoint_state(tmp_path: Path) -> None:
    first, second = ProbeCallback(layers=["layer1"], num_classes=3), ProbeCallback(layers=["layer2"], num_classes=3)
    assert first.state_key != second.state_key
    t = fit(tmp_path, LitNet(), [first, second], max_epochs=1)
    t.save_checkpoint(tmp_path / "both.ckpt")
    again = [ProbeCallback(layers=["layer2"], num_classes=3), ProbeCallback(layers=["layer1"], num_classes=3)]
    trainer(tmp_path / "again", again).validate(LitNet(), loaders()[1], ckpt_path=str(tmp_path / "both.ckpt"),
                                                verbose=False)
    assert torch.equal(again[0].probes.heads["layer2"].body.weight, second.probes.heads["layer2"].body.weight)
    assert torch.equal(again[1].probes.heads["layer1"].body.weight, first.probes.heads["layer1"].body.weight)


def test_session_and_base_import_one_way():
    # _base imports _session, never the reverse (no function-level imports either).
    import ast
    from pathlib import Path

    import lens_train.callbacks as package

    folder = Path(package.__file__).parent

    def imported(name: str, runtime_only: bool = True) -> set[str]:
        tree = ast.parse((folder / f"{name}.py").read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and ast.unparse(node.test) == "TYPE_CHECKING" for n in ast.walk(node)}
        return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and id(n) not in skip}

    assert "_base" not in imported("_session")
    for name in ("_base", "activation_stats"):
        tree = ast.parse((folder / f"{name}.py").read_text())
        nested = [n.module for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
                  for n in ast.walk(f) if isinstance(n, ast.ImportFrom)]
        assert "_session" not in nested, name
