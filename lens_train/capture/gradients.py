"""Gradients of every saved layer: ``log_forward_pass(..., save_gradients=True)``.

A tensor hook is registered on each saved activation the moment its op runs, so:

* after the user's ``backward()`` (on the output, a loss, or any saved activation),
  each saved layer pass's ``layer.gradient`` holds d(whatever was differentiated)/d(its
  output); passes of a recurrent layer are distinct tensors, so each gets its own;
* a tensor later changed by an in-place op gets the gradient of the value it had
  when its op ran (autograd routes hooks registered before an in-place op that way),
  and the in-place op's own pass gets the gradient of the new value; for an in-place
  op on a view (``y[0].mul_(3)``) that is the view's slice of the base's new gradient,
  and the base's extra record gets the base's. The view as it was before the op gets
  none: autograd's gradient for it goes into the base's older value instead;
* repeated ``backward()`` calls accumulate, as ``param.grad`` does; reset with
  :func:`zero_gradients`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .records import OpRecord

if TYPE_CHECKING:
    from .layer_log import LayerLog
    from .model_log import ModelLog


class GradientHooks:
    """Collects gradients of saved activations into the layers of a log.

    ``sink`` goes into a :class:`~lens_train.capture.recorder.CapturePlan` (it sees every
    record as it is finished); ``bind`` points the hooks at the log built afterwards.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
        >>> log = lt.log_forward_pass(model, torch.ones(1, 2), save_gradients=True)
        >>> log["relu_1_2"].activation.sum().backward()
        >>> log["relu_1_2"].gradient
        tensor([[1., 1.]])
    """

    def __init__(self) -> None:
        self.layers: dict[int, LayerLog] = {}
        self.num_hooks = 0
        self._inplace_views: dict[int, tuple[int, Any, tuple]] = {}  # op id -> (record, hook handle, geometry)
        self._handles: dict[int, Any] = {}  # record index -> its hook (an edited record moves to the new tensor)

    def sink(self, rec: OpRecord) -> None:
        """Register a gradient hook on ``rec``'s tensor if it was saved and needs grad."""
        if rec.source_name == "view-base":
            self._hook_view_through_base(rec)
        if (rec.activation is None and rec.transformed_activation is None) or rec.is_buffer:
            return
        t = rec.live_tensor()
        if t is None or not t.requires_grad:
            return
        index = rec.index
        old = self._handles.pop(index, None)
        if old is not None:  # the record now describes another tensor (an intervention's edited value)
            old.remove()
            self.num_hooks -= 1
        handle = self._handles[index] = t.register_hook(lambda grad: self._store(index, grad))
        self.num_hooks += 1
        base = t._base
        if rec.is_inplace and base is not None:
            geometry = (tuple(t.shape), t.stride(), t.storage_offset() - base.storage_offset())
            self._inplace_views[rec.op_id] = (index, handle, geometry)

    def _hook_view_through_base(self, rec: OpRecord) -> None:
        """An in-place op on a view: its gradient is the slice of the base's gradient.

        Autograd sends the gradient of a view changed in place through its base, so a
        hook on the view itself sees only the view's own later uses; the base's gradient
        (after the op) holds them all.
        """
        entry = self._inplace_views.pop(rec.op_id, None)
        base = rec.live_tensor()
        if entry is None or base is None or not base.requires_grad:
            return
        index, handle, (size, stride, offset) = entry
        handle.remove()
        shape, base_stride = tuple(base.shape), base.stride()

        def store(grad: torch.Tensor) -> None:
            if grad.stride() != base_stride:
                grad = torch.empty_strided(shape, base_stride, dtype=grad.dtype, device=grad.device).copy_(grad)
            self._store(index, grad.as_strided(size, stride, grad.storage_offset() + offset).clone())

        base.register_hook(store)

    def bind(self, log: ModelLog) -> None:
        """Send gradients to ``log``'s layers (matched by operation index)."""
        self.layers = {layer.operation_index: layer for layer in log.layers}

    def _store(self, index: int, grad: torch.Tensor) -> None:
        layer = self.layers.get(index)
        if layer is not None:
            layer.gradient = grad if layer.gradient is None else layer.gradient + grad


def zero_gradients(log: ModelLog) -> None:
    """Forget the gradients collected so far (before another ``backward()``).

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Linear(2, 1), torch.ones(1, 2), save_gradients=True)
        >>> log[-1].activation.sum().backward()
        >>> zero_gradients(log); log[-1].gradient is None
        True
    """
    for layer in log.layers:
        layer.gradient = None


def gradient_layers(log: ModelLog) -> list[str]:
    """Labels of the layer passes that received a gradient.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Linear(2, 1), torch.ones(1, 2), save_gradients=True)
        >>> log[-1].activation.sum().backward()
        >>> gradient_layers(log)
        ['linear_1_1', 'output_1_2']
    """
    return [layer.layer_label for layer in log.layers if layer.gradient is not None]
