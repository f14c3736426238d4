"""Bookkeeping: buffer updates that are not part of the data path, and so are not numbered.

In train mode a BatchNorm runs ``num_batches_tracked.add_(1)``; a model may keep a step
counter (``self.step += 1``). Such an op does not compute anything from the data, and
numbering it would shift every later label of its type between train and eval mode.
The rule, applied to the records of one pass:

- a record is *data-free* when nothing of the model's input or parameters reaches it:
  a buffer read, a constant tensor, a factory op (``torch.ones``), or an op whose every
  tensor input is data-free and that uses no parameter;
- a data-free op that writes in place into a buffer (``add_``, ``+=``, ``fill_``,
  ``copy_``, ``out=``, or through a view of the buffer) is bookkeeping unless a data-path
  op reads its result later in the pass;
- a data-free record all of whose consumers are bookkeeping (the buffer read that feeds
  the counter update, the constant it adds) is bookkeeping too.

Bookkeeping never has a data-path descendant, so removing it changes no data-path
record's parents. It is labelled in its own family (``add_bk_1``, ``buffer_bk_1``) and
listed in ``log.buffer_updates`` and on the module call that ran it, never in ``log.layers``.

Ops that a sharding wrapper runs inside its own hooks (FSDP's all-gathers and the views
of the unsharded parameters) are set aside the same way, so a model has the same labels
before and after ``fully_shard``; the data path reads their parameters as parameters.
They are counted in ``log.meta["sharding_ops"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .records import OpRecord


def bookkeeping_flags(records: Sequence[OpRecord], candidates: bool | None = None) -> bytearray:
    """``flags[i]`` is 1 when record ``i`` is bookkeeping (see the module docstring).

    ``candidates``: whether some record wrote into a buffer or ran inside a sharding
    wrapper, when the caller knows (``_hotpath.scan_records``); without one none is bookkeeping.

    Example:
        >>> import torch, lens_train as lt
        >>> bn = torch.nn.BatchNorm1d(3).train()
        >>> log = lt.log_forward_pass(bn, torch.randn(4, 3), layers_to_save=None)
        >>> log.layer_labels, [u["label"] for u in log.buffer_updates]
        (['input_1_0', 'buffer_1_1', 'buffer_2_2', 'batchnorm_1_3', 'output_1_4'], ['buffer_bk_1', 'add_bk_1'])
    """
    n = len(records)
    flags = bytearray(n)
    if candidates is None:
        candidates = any(r.buffer_write is not None or r.framework for r in records)
    if not candidates:
        return flags
    free = bytearray(n)
    consumers: list[list[int]] = [[] for _ in records]
    for rec in records:
        i = rec.index
        for parent, _pos in rec.parents:
            consumers[parent].append(i)
        own = own_data_freedom(rec)
        free[i] = all(free[p] for p, _ in rec.parents) if own is None else own
    for rec in reversed(records):
        i = rec.index
        kids = consumers[i]
        if rec.framework:  # run by FSDP's hooks: not numbered unless the data path reads it
            flags[i] = all(flags[k] for k in kids)
            continue
        if not free[i]:
            continue
        if rec.buffer_write is not None or kids:
            flags[i] = all(flags[k] for k in kids)
    return flags


def own_data_freedom(rec: OpRecord) -> bool | None:
    """Whether ``rec`` is data-free by itself (True/False), or None when its parents decide.

    Inputs, outputs and ops with parameters are not; buffers, constants and factory ops
    (no tensor parents) are; any other op is data-free when all its parents are.
    """
    if rec.is_input or rec.is_output or rec.param_ids:
        return False
    if rec.func is None:
        return rec.is_buffer or rec.is_internally_generated
    return True if not rec.parents else None
