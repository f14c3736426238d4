"""The reference batch of the snapshots, stored once as safetensors (no pickle).

A model input is a tensor, a tuple/list of tensors (positional arguments) or a dict
of tensors (keyword arguments); the file's metadata says which, so it loads back as
the same structure.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from ..bundle.files import write_atomic
from ..errors import InvalidArgumentError


def save_reference(value: Any, path: str | os.PathLike) -> Path:
    """Write a model input to ``path`` (atomically).

    Example:
        >>> import tempfile
        >>> p = save_reference((torch.ones(2), torch.zeros(1)), tempfile.mkdtemp() + "/ref.safetensors")
        >>> [t.tolist() for t in load_reference(p)]
        [[1.0, 1.0], [0.0]]
    """
    kind, tensors = _flatten(value)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"kind": kind}))
    return out


def load_reference(path: str | os.PathLike) -> Any:
    """Read a model input written by :func:`save_reference`."""
    if not Path(path).is_file():
        raise InvalidArgumentError(f"No reference batch file at {str(path)!r}; pass a tensor or an existing .safetensors path.")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        kind = (f.metadata() or {}).get("kind", "tensor")
    tensors = load_file(str(path))
    if kind == "tensor":
        return tensors["input"]
    if kind == "tuple":
        return tuple(tensors[str(i)] for i in range(len(tensors)))
    return dict(tensors)


def _flatten(value: Any) -> tuple[str, dict[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        return "tensor", {"input": value}
    if isinstance(value, (tuple, list)) and all(isinstance(v, torch.Tensor) for v in value):
        return "tuple", {str(i): v for i, v in enumerate(value)}
    if isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        return "dict", dict(value)
    raise InvalidArgumentError(
        f"A reference batch must be a tensor, a tuple of tensors or a dict of tensors (the model input), got "
        f"{type(value).__name__}. Pass reference_batch= explicitly or batch_to_input= to pick the input."
    )
