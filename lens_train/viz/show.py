"""``show_model_graph``: capture a model's metadata and draw its graph in one call."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ..capture.api import log_forward_pass
from ..errors import InvalidArgumentError
from .placement import VIS_MODES
from .render import render_graph


def show_model_graph(
    model: nn.Module,
    input_args: Any,
    input_kwargs: Mapping[str, Any] | None = None,
    vis_opt: str = "unrolled",
    vis_nesting_depth: int | None = None,
    vis_outpath: str | os.PathLike[str] = "graph",
    vis_fileformat: str = "svg",
    vis_save_only: bool = False,
    vis_module: str | None = None,
    vis_gradients: bool = False,
    random_seed: int | None = None,
) -> Path | None:
    """Run ``model`` once (saving no activations) and draw its computational graph.

    Arguments are those of :func:`lens_train.log_forward_pass` (inputs, seed) and
    :func:`lens_train.viz.render_graph` (every ``vis_*`` option). ``vis_gradients=True`` draws
    nothing extra here: no ``backward()`` has run yet. Capture with ``save_gradients=True``,
    call ``backward()``, then use ``log.render_graph(vis_gradients=True)``.

    Returns:
        The path of the written picture (None for ``vis_opt="none"``).

    Example:
        >>> import os, tempfile, torch, lens_train as lt
        >>> out = os.path.join(tempfile.mkdtemp(), "mlp")
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
        >>> lt.show_model_graph(model, torch.ones(1, 3), vis_outpath=out, vis_save_only=True).name
        'mlp.svg'
    """
    if vis_opt == "none":
        return None
    if vis_opt not in VIS_MODES:
        raise InvalidArgumentError(
            f"vis_opt must be 'unrolled', 'rolled' or 'none', got {vis_opt!r}. "
            "Example: lt.show_model_graph(model, x, vis_opt='rolled')."
        )
    log = log_forward_pass(model, input_args, input_kwargs, layers_to_save=None, random_seed=random_seed)
    return render_graph(log, vis_opt=vis_opt, vis_nesting_depth=vis_nesting_depth, vis_outpath=vis_outpath,
                        vis_fileformat=vis_fileformat, vis_save_only=vis_save_only, vis_module=vis_module,
                        vis_gradients=vis_gradients)
