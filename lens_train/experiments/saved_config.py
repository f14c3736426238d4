"""The config a checkpoint was trained with, read back from its run directory.

Hydra saves every run's composed config as ``<run dir>/.hydra/config.yaml``. A checkpoint
lens-train writes lives in ``<run dir>/checkpoints/`` (``<run dir>/<stage>/checkpoints/`` for
the distillation flow), so the config that built its model is found by walking up from the
checkpoint. ``lens-train flow=eval ckpt_path=...`` evaluates with that config, and whatever
the evaluation's own command line sets wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

SAVED = Path(".hydra") / "config.yaml"
# Keys the evaluation always takes from its own command: where it writes, what it runs.
OWN_KEYS = ("flow", "ckpt_path", "paths", "task_name", "print_config", "print_summary")


def find_run_dir(ckpt_path: str | Path, levels: int = 3) -> Path | None:
    """The nearest folder above ``ckpt_path`` holding a saved Hydra config, or ``None``.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp())
        >>> (run / ".hydra").mkdir(); _ = (run / SAVED).write_text("seed: 0")
        >>> find_run_dir(run / "checkpoints" / "last.ckpt") == run
        True
    """
    for parent in list(Path(ckpt_path).absolute().parents)[:levels]:
        if (parent / SAVED).is_file():
            return parent
    return None


def override_keys(overrides: Sequence[str]) -> list[tuple[str, bool]]:
    """``(config key, deleted)`` for each command-line override (``+``, ``++``, ``~`` and ``@pkg`` stripped).

    Example:
        >>> override_keys(["model=mlp", "~logger", "+trainer.foo=1", "data.batch_size=8"])
        [('model', False), ('logger', True), ('trainer.foo', False), ('data.batch_size', False)]
    """
    keys = []
    for line in overrides:
        key = line.partition("=")[0]
        deleted = key.startswith("~")
        keys.append((key.lstrip("~+").split("@")[0], deleted))
    return keys


def merge_saved_config(saved: DictConfig, current: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``saved`` with each key the command line set (``overrides``) taken from ``current``.

    A group override (``logger=tensorboard``) replaces the whole node; ``~key`` deletes it;
    the keys in :data:`OWN_KEYS` always come from ``current``.

    Example:
        >>> from omegaconf import OmegaConf
        >>> saved = OmegaConf.create({"flow": "train", "model": {"lr": 0.1, "depth": 3}, "paths": {"out": "a"}})
        >>> current = OmegaConf.create({"flow": "eval", "model": {"lr": 0.5, "depth": 1}, "paths": {"out": "b"}})
        >>> merged = merge_saved_config(saved, current, ["flow=eval", "model.lr=0.5"])
        >>> merged.flow, merged.model.lr, merged.model.depth, merged.paths.out
        ('eval', 0.5, 3, 'b')
    """
    merged = saved.copy()
    keys = [(k, False) for k in OWN_KEYS if k in current] + override_keys(overrides)
    with open_dict(merged):
        for key, deleted in keys:
            value = OmegaConf.select(current, key, default=None, throw_on_missing=False)
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(merged, parent) if parent else merged
            if deleted or (value is None and OmegaConf.select(current, key, default="<absent>") == "<absent>"):
                if isinstance(node, DictConfig) and leaf in node:
                    del node[leaf]
                continue
            OmegaConf.update(merged, key, _copy(value), merge=False, force_add=True)
    return merged


def _copy(value: object) -> object:
    return value.copy() if isinstance(value, DictConfig) or OmegaConf.is_list(value) else value


def load_saved_config(run_dir: Path) -> DictConfig:
    """The config saved in ``run_dir/.hydra/config.yaml``.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()); (run / ".hydra").mkdir()
        >>> _ = (run / SAVED).write_text("seed: 3")
        >>> load_saved_config(run).seed
        3
    """
    cfg = OmegaConf.load(run_dir / SAVED)
    assert isinstance(cfg, DictConfig), "Hydra saves a mapping"
    return cfg
