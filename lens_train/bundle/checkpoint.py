"""Reading Lightning / torch checkpoints without running code from them.

A ``.ckpt`` file is a pickle, and a pickle can name any function to call while it is
read (``os.system`` through ``__reduce__``). ``torch.load(weights_only=True)`` refuses
such files, but it also refuses ordinary checkpoints whose hyper-parameters hold
objects (Hydra's ``DictConfig``). :func:`read_checkpoint` reads both: plain Python
types, tensors and the functions torch rebuilds tensors with are loaded; any other
global becomes an inert :class:`Unloaded` placeholder that is never imported or called
(its arguments and state are kept, inert, for inspection). Everything lens_train
needs from a checkpoint (weights, optimizer and callback states) is plain data.

A full unpickle happens only when asked for explicitly (``trust=True``, or the CLI's
``teacher.trust_checkpoint=true``), and warns.
"""

from __future__ import annotations

import _compat_pickle
import collections
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..errors import CheckpointError, InvalidArgumentError


class Unloaded:
    """An object of a class the checkpoint named but that was not loaded: never imported, never called.

    Example:
        >>> import io, pickle, collections
        >>> data = pickle.dumps({"w": 1, "when": collections.Counter("ab")})
        >>> obj = _RestrictedUnpickler(io.BytesIO(data)).load()
        >>> obj["w"], type(obj["when"]).__name__, obj["when"].global_name
        (1, 'Unloaded[collections.Counter]', 'collections.Counter')
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Unloaded:
        obj = object.__new__(cls)
        obj.__dict__["args"], obj.__dict__["kwargs"] = args, kwargs
        obj.__dict__["state"], obj.__dict__["items"] = None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["items"].append((key, value))

    def append(self, value: Any) -> None:
        """Keep a list item pickle adds (inert)."""
        self.__dict__["items"].append(value)

    def extend(self, values: Any) -> None:
        """Keep list items pickle adds (inert)."""
        self.__dict__["items"].extend(values)

    def __repr__(self) -> str:
        return f"<unloaded {self.global_name}>"


def _placeholder(module: str, name: str) -> type:
    qualified = f"{module}.{name}"
    return type(f"Unloaded[{qualified}]", (Unloaded,), {"global_name": qualified, "__module__": __name__})


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch's rebuild of a tensor with Python state, for plain tensors and parameters only."""
    if func not in _TENSOR_REBUILDERS or new_type not in (torch.Tensor, torch.nn.Parameter):
        return _placeholder("torch._tensor", "_rebuild_from_type_v2")(func, new_type, args, state)
    return torch._tensor._rebuild_from_type_v2(func, new_type, args, state)


_TENSOR_REBUILDERS = {getattr(torch._utils, n) for n in (
    "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
    "_rebuild_parameter_with_state", "_rebuild_meta_tensor_no_storage", "_rebuild_sparse_tensor",
) if hasattr(torch._utils, n)}
_ALLOWED: dict[tuple[str, str], Any] = {
    **{("torch._utils", f.__name__): f for f in _TENSOR_REBUILDERS},
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): torch.Tensor, ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset, ("builtins", "slice"): slice,
    ("builtins", "complex"): complex, ("builtins", "bytearray"): bytearray, ("builtins", "range"): range,
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Loads the globals of :data:`_ALLOWED` and torch's dtypes; anything else is an :class:`Unloaded`."""

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 pickles (torch.save's default) name Python 2 modules: __builtin__.set
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
            return getattr(torch, name)
        return _placeholder(str(module), str(name))


class _RestrictedPickle:
    """The ``pickle_module`` handed to ``torch.load``: its unpickler never imports or calls a foreign global."""

    __name__ = "lens_train.bundle.checkpoint"
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path: str | os.PathLike, *, trust: bool = False, mmap: bool = True) -> dict[str, Any]:
    """The dict saved in the torch / Lightning checkpoint ``path``, read without running code from it.

    Args:
        path: a checkpoint file written by ``torch.save`` or Lightning (zip format).
        trust: unpickle everything, as ``torch.load(weights_only=False)`` does: only for a
            file you made yourself. Warns.
        mmap: memory-map the file, so tensors that are not used are not read.

    Raises:
        CheckpointError: the file is missing, not a zip checkpoint, or unreadable.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/a.ckpt"
        >>> torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": {"cfg": print}}, path)
        >>> ckpt = read_checkpoint(path)
        >>> ckpt["state_dict"]["w"], ckpt["hyper_parameters"]["cfg"].global_name
        (tensor([1., 1.]), 'builtins.print')
    """
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"read_checkpoint needs a file path, got {path!r}. Example: read_checkpoint('checkpoints/last.ckpt').")
    file = Path(path)
    if not file.is_file():
        raise CheckpointError(f"Checkpoint {str(file)!r} does not exist or is not a file.")
    if not zipfile.is_zipfile(file):
        raise CheckpointError(f"Checkpoint {str(file)!r} is not a zip-format torch checkpoint (torch.save since torch 1.6 and "
                              "Lightning write one); lens_train does not read the legacy format. Re-save it with a current torch.")
    if trust:
        warnings.warn(f"Unpickling {str(file)!r} in full (trust=True): a crafted checkpoint can run any code. "
                      "Do this only for files you wrote yourself.", UserWarning, stacklevel=2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            ckpt = torch.load(file, map_location="cpu", weights_only=False, mmap=mmap,
                              pickle_module=None if trust else _RestrictedPickle)
    except Exception as exc:  # any failure of a malformed file, reported as the library's own error
        raise CheckpointError(f"Checkpoint {str(file)!r} cannot be read ({type(exc).__name__}: {exc}).") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint {str(file)!r} holds a {type(ckpt).__name__}, not the dict of a Lightning checkpoint.")
    return ckpt


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading through :func:`read_checkpoint` (no code runs from a file).

    Pass it to a Trainer (``L.Trainer(plugins=[SafeCheckpointIO()])``) so that resuming
    (``fit(ckpt_path=...)``) and ``test(ckpt_path=...)`` never unpickle arbitrary objects.

    Example:
        >>> import tempfile, torch
        >>> path = tempfile.mkdtemp() + "/a.ckpt"
        >>> torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
        >>> SafeCheckpointIO().load_checkpoint(path)["state_dict"]["w"]
        tensor([0.])
    """

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at ``path``, tensors on the CPU (Lightning moves them where they belong)."""
        return read_checkpoint(path)
