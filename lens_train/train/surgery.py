"""Helpers for users of surgeon-pytorch: ``get_layers``, ``get_nodes`` and ``Inspect``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..arguments import check_bool
from ..errors import InvalidArgumentError
from .selection import ModuleIndex
from .taps import Taps, _example_log


def get_layers(model: nn.Module) -> list[str]:
    """Every module address ``lt.Taps`` accepts (wrapper prefixes removed).

    Example:
        >>> import torch, lens_train as lt
        >>> lt.get_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
        ['0', '1']
    """
    return ModuleIndex(model).addresses()


def get_nodes(model: nn.Module, input_args: Any, input_kwargs: Mapping[str, Any] | None = None) -> list[str]:
    """Every node of one forward pass, in execution order, as ``lt.Taps``, ``lt.Extract`` and ``layers_to_save`` accept it.

    A layer run several times (a loop) is listed once per pass, as ``label:N``.

    Example:
        >>> import torch, lens_train as lt
        >>> lt.get_nodes(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()), torch.ones(1, 2))
        ['linear_1_1', 'relu_1_2']
        >>> class Loop(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.cell = torch.nn.Linear(2, 2)
        ...     def forward(self, x):
        ...         for _ in range(2):
        ...             x = self.cell(x)
        ...         return x
        >>> lt.get_nodes(Loop(), torch.ones(1, 2))
        ['linear_1_1:1', 'linear_1_1:2']
    """
    log = _example_log(ModuleIndex(model).root, input_args, input_kwargs)
    return [layer.layer_label for layer in log.layers if not layer.is_input and not layer.is_output]


class Inspect(nn.Module):
    """A model whose forward also returns tapped activations: ``out, taps = inspected(x)``.

    ``layer`` is a name (one tensor comes back), a list (a list comes back) or
    ``{layer: name}`` (a dict keyed by your names). With ``keep_output=False`` only the
    activations are returned. The activations are graph-connected.

    Example:
        >>> import torch, lens_train as lt
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> out, acts = lt.Inspect(model, layer={"0": "x1"})(torch.ones(1, 2))
        >>> list(acts), acts["x1"].shape
        (['x1'], torch.Size([1, 3]))
    """

    def __init__(self, model: nn.Module, layer: str | list[str] | Mapping[str, str], keep_output: bool = True,
                 **taps_options: Any) -> None:
        super().__init__()
        if not isinstance(layer, (str, list, tuple, Mapping)) or not layer:
            raise InvalidArgumentError(f"layer must be a name, a list of names or {{layer: name}}, got {layer!r}. "
                                       "Example: lt.Inspect(model, layer={'layer2': 'features'}).")
        check_bool("keep_output", keep_output, "lt.Inspect(model, 'layer2', keep_output=False)")
        self.model = model
        self.layer = layer
        self.keep_output = keep_output
        names = list(layer) if not isinstance(layer, str) else [layer]
        self._taps = Taps(model, names, **taps_options)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self._taps:
            out = self.model(*args, **kwargs)
        if isinstance(self.layer, str):
            acts: Any = self._taps[self.layer]
        elif isinstance(self.layer, Mapping):
            acts = {alias: self._taps[name] for name, alias in self.layer.items()}
        else:
            acts = [self._taps[name] for name in self.layer]
        self._taps.clear()
        return (out, acts) if self.keep_output else acts
