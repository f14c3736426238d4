"""The composed config as a tree: printed when a run starts and saved in its run dir.

Hydra keeps the config as composed (``.hydra/config.yaml``, interpolations unresolved);
the tree shows the values the run uses, ``${...}`` resolved, with the main groups first.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

ORDER = ("data", "model", "lens", "callbacks", "logger", "trainer", "paths")


def _resolved(cfg: DictConfig) -> Any:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # an interpolation that only resolves inside a Hydra run
        return OmegaConf.to_container(cfg, resolve=False)


def config_tree(cfg: DictConfig | dict, order: Sequence[str] = ORDER, title: str = "CONFIG") -> str:
    """``cfg`` drawn as a tree: groups in ``order`` first, then the other keys; lists of scalars on one line.

    Example:
        >>> from omegaconf import OmegaConf
        >>> print(config_tree(OmegaConf.create({"seed": 0, "model": {"lr": 0.1, "dims": [1, 2]}})))
        CONFIG
        ├── model
        │   ├── lr: 0.1
        │   └── dims: [1, 2]
        └── seed: 0
    """
    data = _resolved(cfg) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    keys = [k for k in order if k in data] + [k for k in data if k not in order]
    return "\n".join([title, *_branch({k: data[k] for k in keys}, "")])


def _branch(node: Any, prefix: str) -> list[str]:
    items = list(node.items()) if isinstance(node, dict) else [(f"[{i}]", v) for i, v in enumerate(node)]
    lines = []
    for i, (key, value) in enumerate(items):
        last = i == len(items) - 1
        joint, extend = ("└── ", "    ") if last else ("├── ", "│   ")
        if isinstance(value, (dict, list)) and value and not _flat(value):
            lines.append(f"{prefix}{joint}{key}")
            lines += _branch(value, prefix + extend)
        else:
            lines.append(f"{prefix}{joint}{key}: {_scalar(value)}")
    return lines


def _flat(value: Any) -> bool:
    return isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value)


def _scalar(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else "''"


def write_config_tree(cfg: DictConfig, out_dir: str | Path, echo: bool = True) -> Path:
    """Save the tree as ``out_dir/config_tree.txt`` (and print it when ``echo``).

    Example:
        >>> import tempfile
        >>> from omegaconf import OmegaConf
        >>> path = write_config_tree(OmegaConf.create({"seed": 1}), tempfile.mkdtemp(), echo=False)
        >>> path.read_text()
        'CONFIG\\n└── seed: 1\\n'
    """
    text = config_tree(cfg)
    path = Path(out_dir) / "config_tree.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    if echo:
        print(text, flush=True)
    return path
