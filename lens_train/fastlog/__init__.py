"""Predicate recording: keep chosen tensors over one pass or thousands of rollouts.

For users who know which events they want and need no full :class:`~lens_train.ModelLog`
(RL rollouts, iterative inference): ``lt.fastlog.record`` for one pass,
``lt.fastlog.Recorder`` for many, ``lt.fastlog.dry_run`` to try predicates,
``lt.fastlog.recover`` to read what a crashed run committed.

Example:
    >>> import torch, lens_train as lt
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    >>> rec = lt.fastlog.record(model, torch.ones(1, 3), keep_op=lambda ctx: ctx.layer_type == "relu")
    >>> rec["relu_1"].shape
    torch.Size([1, 3])
"""

from .context import CaptureSpec, RecordContext
from .recorder import Recorder, dry_run, record
from .recording import Entry, Recording, Rollout
from .storage import load, recover

__all__ = ["CaptureSpec", "Entry", "RecordContext", "Recorder", "Recording", "Rollout", "dry_run", "load", "recover", "record"]
