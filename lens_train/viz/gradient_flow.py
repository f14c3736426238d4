"""Which parts of the graph the backward pass went through (``vis_gradients=True``).

Gradients come from ``log_forward_pass(..., save_gradients=True)`` and a later
``backward()``: each saved layer pass that was reached holds ``layer.gradient``. A layer
pass *carried* gradient when it holds one; a pass that was not saved (so had no hook)
carried gradient when it requires grad and one of its children carried gradient,
since autograd then sent that gradient on into it. An edge carried gradient when both
its ends did; the picture draws such edges in :data:`GRADIENT_COLOR`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..capture.printing import human_bytes
from .node_text import html, pass_ranges, shape_label

if TYPE_CHECKING:
    from ..capture.layer_log import LayerLog
    from ..capture.model_log import ModelLog

GRADIENT_COLOR = "#1E5BD6"


def has_gradients(log: ModelLog) -> bool:
    """Whether any layer pass of ``log`` holds a gradient.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Linear(2, 1), torch.ones(1, 2), save_gradients=True)
        >>> before = has_gradients(log)
        >>> log[-1].activation.sum().backward()
        >>> before, has_gradients(log)
        (False, True)
    """
    return any(layer.gradient is not None for layer in log.layers)


def gradient_flow(log: ModelLog) -> list[bool]:
    """Per layer pass (in ``log.layers`` order): whether the backward pass went through it.

    Example:
        >>> import torch, lens_train as lt
        >>> class Half(torch.nn.Module):
        ...     def forward(self, x):
        ...         return x.relu() + x.detach().exp()
        >>> x = torch.ones(2, requires_grad=True)
        >>> log = lt.log_forward_pass(Half(), x, layers_to_save=["relu", "add"], save_gradients=True)
        >>> log["add_1_4"].activation.sum().backward()
        >>> dict(zip(log.layer_labels, gradient_flow(log)))  # doctest: +NORMALIZE_WHITESPACE
        {'input_1_0': True, 'relu_1_1': True, 'detach_1_2': False, 'exp_1_3': False,
         'add_1_4': True, 'output_1_5': False}
    """
    layers = log.layers
    if not has_gradients(log):
        return [False] * len(layers)
    index = {layer.layer_label: i for i, layer in enumerate(layers)}
    carried = [False] * len(layers)
    # Children run after their parents, so one sweep from the end sees every child first.
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        if layer.gradient is not None:
            carried[i] = True
        elif not _hooked(layer):
            carried[i] = layer.requires_grad and any(carried[index[c]] for c in layer.child_layers if c in index)
    return carried


def _hooked(layer: LayerLog) -> bool:
    """Whether ``layer`` had a gradient hook, so a missing gradient means none arrived."""
    return layer.is_saved and layer.requires_grad and not layer.is_buffer


def gradient_text(passes: list[LayerLog], all_passes: int = 1) -> str | None:
    """The node line for the gradients of ``passes`` (None when none has one).

    ``grad 5x5 (100 B)``; when ``passes`` stand for a rolled node of ``all_passes``
    passes and only some got a gradient, the line says which.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Linear(5, 5), torch.ones(5, 5), save_gradients=True)
        >>> log[-1].activation.sum().backward()
        >>> gradient_text([log["linear_1_1"]])
        'grad 5x5 (100 B)'
    """
    with_grad = [layer for layer in passes if layer.gradient is not None]
    if not with_grad:
        return None
    g = with_grad[0].gradient
    shapes = list(dict.fromkeys(shape_label(tuple(layer.gradient.shape)) for layer in with_grad))
    size = "" if len(shapes) > 1 else f" ({human_bytes(g.nelement() * g.element_size())})"
    text = f"grad {', '.join(shapes)}{size}"
    if all_passes > 1 and len(with_grad) < all_passes:
        text += f", passes {pass_ranges(layer.pass_num for layer in with_grad)}"
    return text


def gradient_line(passes: list[LayerLog], all_passes: int = 1) -> str | None:
    """:func:`gradient_text` as a coloured HTML-label line (None when no gradient).

    Example:
        >>> gradient_line([])
    """
    text = gradient_text(passes, all_passes)
    return None if text is None else f'<font color="{GRADIENT_COLOR}">{html(text)}</font>'


def gradient_header(log: ModelLog) -> str | None:
    """The header line counting the layer passes that hold a gradient (None when none).

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Linear(2, 1), torch.ones(1, 2), save_gradients=True)
        >>> log[-1].activation.sum().backward()
        >>> gradient_header(log)
        'backward pass: 2 of 3 layer passes got a gradient (blue edges carried it)'
    """
    count = sum(layer.gradient is not None for layer in log.layers)
    if not count:
        return None
    return f"backward pass: {count} of {len(log)} layer passes got a gradient (blue edges carried it)"
