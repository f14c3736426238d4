"""Helpers every lens callback shares: batch unpacking, quiet extra passes, run dirs.

Batches are unpacked by ``batch_to_input`` / ``batch_to_targets``. Each is ``None``
(the defaults below), an ``int`` (an index into a tuple/list batch), a ``str`` (a key
of a dict batch) or a callable ``batch -> value``. The defaults understand ``(x, y)``
tuples/lists, dicts with an input key (``"x"``, ``"input"``, ``"image"``...) and a
target key (``"y"``, ``"target"``, ``"label"``...), and a bare tensor (input only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..capture.api import forked_rng, preserved_buffers
from ..capture.inputs import normalize_inputs
from ..errors import InvalidArgumentError

INPUT_KEYS = ("x", "input", "inputs", "image", "images", "input_ids", "features", "data")
TARGET_KEYS = ("y", "target", "targets", "label", "labels")

BatchGetter = Callable[[Any], Any] | str | int | None


def default_batch_to_input(batch: Any) -> Any:
    """The model input of a batch: ``x`` of ``(x, y)``, a dict's input key, or the tensor.

    Example:
        >>> import torch
        >>> default_batch_to_input((torch.ones(2, 3), torch.zeros(2))).shape
        torch.Size([2, 3])
    """
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if key in batch:
                return batch[key]
    raise InvalidArgumentError(_batch_message(batch, "input", "batch_to_input", INPUT_KEYS))


def default_batch_to_targets(batch: Any) -> Any:
    """The targets of a batch: ``y`` of ``(x, y)`` or a dict's target key.

    Example:
        >>> import torch
        >>> default_batch_to_targets({"image": torch.ones(2, 3), "label": torch.tensor([0, 1])}).tolist()
        [0, 1]
    """
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[1]
    if isinstance(batch, Mapping):
        for key in TARGET_KEYS:
            if key in batch:
                return batch[key]
    raise InvalidArgumentError(_batch_message(batch, "targets", "batch_to_targets", TARGET_KEYS))


def _batch_message(batch: Any, what: str, arg: str, keys: tuple[str, ...]) -> str:
    if isinstance(batch, Mapping):
        found = f"a dict with keys {sorted(map(str, batch))}"
    elif isinstance(batch, (tuple, list)):
        found = f"a {type(batch).__name__} of {len(batch)} items"
    else:
        found = f"a {type(batch).__name__}"
    return (
        f"Cannot find the {what} in the batch: got {found}. The default understands (x, y) tuples and dicts "
        f"with one of the keys {list(keys)}. Pass {arg}= to the callback: an index ({arg}=0), a dict key "
        f"({arg}='pixels') or a function ({arg}=lambda batch: batch.x)."
    )


def make_getter(getter: BatchGetter, default: Callable[[Any], Any], arg: str) -> Callable[[Any], Any]:
    """Compile a ``batch_to_input``/``batch_to_targets`` argument into a function.

    Example:
        >>> make_getter("img", default_batch_to_input, "batch_to_input")({"img": 1})
        1
    """
    if getter is None:
        return default
    if callable(getter):
        return getter
    if isinstance(getter, bool) or not isinstance(getter, (int, str)):
        raise InvalidArgumentError(
            f"{arg} must be None, an int index, a str key or a function of the batch, got {getter!r}. "
            f"Example: {arg}=0 or {arg}='image' or {arg}=lambda batch: batch[0]."
        )
    return lambda batch: _pick(batch, getter, arg)


def _pick(batch: Any, key: int | str, arg: str) -> Any:
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError):
        kind = f"dict with keys {sorted(map(str, batch))}" if isinstance(batch, Mapping) else type(batch).__name__
        raise InvalidArgumentError(
            f"{arg}={key!r} does not select anything in a batch of type {kind}. "
            f"Pass a valid index/key or a function, e.g. {arg}=lambda batch: batch[0]."
        ) from None


def model_inputs(module: nn.Module, value: Any) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``module``: a dict input becomes keyword arguments.

    Example:
        >>> import torch
        >>> model_inputs(torch.nn.Identity(), {"input": torch.ones(1)})[1].keys()
        dict_keys(['input'])
    """
    if isinstance(value, Mapping):
        return normalize_inputs(module, None, value)
    return normalize_inputs(module, value)


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DDP/DataParallel/Lightning wrappers.

    Example:
        >>> m = torch.nn.Linear(1, 1)
        >>> unwrap(torch.nn.DataParallel(m)) is m
        True
    """
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_forward_module", None)
        if not isinstance(inner, nn.Module) or inner is module:
            return module
        module = inner


@contextmanager
def quiet_forward(module: nn.Module, seed: int = 0) -> Iterator[None]:
    """A block for extra forward passes that must not disturb training.

    Eval mode, ``no_grad``, a forked and seeded RNG, and every buffer (BatchNorm
    running statistics included) and training flag restored on exit.

    Example:
        >>> bn = torch.nn.BatchNorm1d(2).train()
        >>> with quiet_forward(bn):
        ...     bn.training, bool(bn(torch.randn(4, 2)).isfinite().all())
        (False, True)
        >>> bn.training, bn.num_batches_tracked.item()
        (True, 0)
    """
    flags = [(m, m.training) for m in module.modules()]
    devices = sorted({b.device.index or 0 for b in module.buffers() if b.is_cuda} | {p.device.index or 0 for p in module.parameters() if p.is_cuda})
    try:
        with forked_rng(seed, devices), torch.no_grad(), preserved_buffers(module):
            module.eval()
            yield
    finally:
        for m, was_training in flags:
            m.training = was_training


def run_dir(trainer: Any) -> Path:
    """The directory a run writes its lens files to: the logger's ``log_dir``, else the root dir.

    Call it on every rank: ``trainer.log_dir`` broadcasts from rank zero.

    Example:
        >>> class T: log_dir = "runs/a"; default_root_dir = "runs"
        >>> run_dir(T()).parts[-2:]
        ('runs', 'a')
    """
    return Path(trainer.log_dir or trainer.default_root_dir).absolute()


def first_batch(trainer: Any, stage: str = "train") -> Any | None:
    """The first batch of the train (or ``"val"``) data, read without touching the training RNG.

    Returns ``None`` when that stage has no data.
    """
    loop = trainer.fit_loop if stage == "train" else trainer.fit_loop.epoch_loop.val_loop
    # The loop's data source resolves datamodule, fit(dataloaders=...) and module hooks the
    # same way Lightning does. The RNG is forked: a shuffling sampler draws from it.
    source = loop._data_source
    if source is None or not source.is_defined():
        return None
    with forked_rng(None):
        loaders = source.dataloader()
        loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
        if isinstance(loader, Mapping):
            loader = next(iter(loader.values()), None)
        if loader is None:
            return None
        return next(iter(loader), None)


def average_gradients(params: list[torch.nn.Parameter], strategy: Any) -> None:
    """Average the gradients of ``params`` across ranks in one collective (missing ones count as 0).

    Parameters that live outside the DDP-wrapped module (auxiliary heads, adapters,
    probes) are not averaged by DDP; this does it once per optimizer step.

    Example:
        >>> p = torch.nn.Parameter(torch.ones(2)); p.grad = torch.full((2,), 4.0)
        >>> class OneRank:
        ...     def reduce(self, t, reduce_op): return t
        >>> average_gradients([p], OneRank()); p.grad.tolist()
        [4.0, 4.0]
    """
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = strategy.reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()


def refuse_sharded(callback: Any, trainer: Any, module: nn.Module) -> None:
    """Raise on every rank when ``module`` is sharded (FSDP2) across ranks.

    Graphs and snapshots run an extra forward pass on rank zero alone; a sharded model's
    forward gathers its parameters from every rank, so that pass would wait forever.

    Example:
        >>> class OneRank: world_size = 1
        >>> refuse_sharded(object(), OneRank(), torch.nn.Linear(1, 1))
    """
    if trainer.world_size <= 1 or not any(type(p).__name__ == "DTensor" for p in module.parameters()):
        return
    raise InvalidArgumentError(
        f"{type(callback).__name__} runs an extra forward pass on rank zero alone, which a sharded (FSDP2) model "
        "cannot do: its forward gathers parameters from every rank. Leave it out of sharded runs, or take graphs "
        "and snapshots from a checkpoint on one process: lt.log_forward_pass(model, x) after loading it."
    )
