"""Which node of the picture each layer pass becomes.

Three choices decide it:

* ``mode``: ``"unrolled"`` draws one node per layer pass and one cluster per module
  call; ``"rolled"`` merges the passes of a layer into one node and the calls of a
  module into one cluster.
* ``module`` (focus): draw only the inside of one module (``"blocks.3"``, or one call
  ``"blocks.3:2"``), plus the tensors that enter and leave it as boundary nodes.
* ``nesting_depth=k``: show ``k`` levels of modules (counted from the focused module
  when there is one); each module at level ``k`` that holds more than one layer, or
  submodules, is drawn as one node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError, LayerNotFoundError, suggestion_text

if TYPE_CHECKING:
    from ..capture.layer_log import LayerLog
    from ..capture.model_log import ModelLog

VIS_MODES = ("unrolled", "rolled")


@dataclass(frozen=True)
class VisOptions:
    """A validated picture request.

    Example:
        >>> VisOptions("rolled", nesting_depth=2).rolled
        True
    """

    mode: str
    nesting_depth: int | None = None
    module: str | None = None
    gradients: bool = False

    @property
    def rolled(self) -> bool:
        """Whether passes of a layer are merged into one node."""
        return self.mode == "rolled"


def make_options(log: ModelLog, vis_opt: str, vis_nesting_depth: int | None, vis_module: str | None,
                 vis_gradients: bool = False) -> VisOptions:
    """Check the ``vis_*`` arguments against ``log`` and return them as :class:`VisOptions`.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.ReLU()), torch.ones(2), layers_to_save=None)
        >>> make_options(log, "rolled", 1, "0", vis_gradients=True)
        VisOptions(mode='rolled', nesting_depth=1, module='0', gradients=True)
    """
    if vis_opt not in VIS_MODES:
        raise InvalidArgumentError(
            f"vis_opt must be 'unrolled' or 'rolled' to draw a graph, got {vis_opt!r}. "
            "Example: log.render_graph(vis_opt='rolled')."
        )
    depth = vis_nesting_depth
    if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int) or depth < 1):
        raise InvalidArgumentError(
            f"vis_nesting_depth must be None (show every module) or an int >= 1, got {depth!r}. "
            "Example: log.render_graph(vis_nesting_depth=2)."
        )
    if vis_module is not None:
        _check_module(log, vis_module)
    if not isinstance(vis_gradients, bool):
        raise InvalidArgumentError(
            f"vis_gradients must be True or False, got {vis_gradients!r}. "
            "Example: log.render_graph(vis_gradients=True) after a backward() on a log_forward_pass(..., save_gradients=True)."
        )
    return VisOptions(vis_opt, depth, vis_module, vis_gradients)


def _check_module(log: ModelLog, name: object) -> None:
    if not isinstance(name, str):
        raise InvalidArgumentError(f"vis_module must be a module address string like 'blocks.3', got {name!r}.")
    address, _, num = name.rpartition(":")
    if name in log.modules or (address in log.modules and num.isdigit() and 0 < int(num) <= log.modules[address].num_passes):
        return
    raise LayerNotFoundError(
        f"vis_module={name!r} is not a module called in this forward pass." + suggestion_text(name, log.modules, "list(log.modules)")
    )


def module_key(entry: str, rolled: bool) -> str:
    """``"fc:3"`` -> ``"fc"`` when rolled (all calls merged), else unchanged.

    Example:
        >>> module_key("blocks.0:2", rolled=True), module_key("blocks.0:2", rolled=False)
        ('blocks.0', 'blocks.0:2')
    """
    return entry.rsplit(":", 1)[0] if rolled else entry


def layer_key(layer: LayerLog, rolled: bool) -> str:
    """The node name of a layer pass: its label, or its pass-free label when rolled.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2), layers_to_save=None)
        >>> layer_key(log["relu_1_1"], rolled=True)
        'relu_1_1'
    """
    return layer.layer_label_no_pass if rolled else layer.layer_label


@dataclass
class Placement:
    """Where every layer pass goes: its node, that node's clusters, and node roles.

    Example:
        >>> Placement(node_of=["input_1_0"], node_pass=[1]).boundary
        {}
    """

    node_of: list[str | None]
    node_pass: list[int]
    cluster_path: dict[str, tuple[str, ...]] = field(default_factory=dict)
    module_nodes: dict[str, str] = field(default_factory=dict)
    boundary: dict[str, str] = field(default_factory=dict)


def place_layers(log: ModelLog, opts: VisOptions) -> Placement:
    """Assign every layer pass of ``log`` to a node (None: not drawn).

    Example:
        >>> import torch, lens_train as lt
        >>> m = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU()))
        >>> log = lt.log_forward_pass(m, torch.ones(1, 2), layers_to_save=None)
        >>> place_layers(log, VisOptions("unrolled", nesting_depth=1)).node_of
        ['input_1_0', '@0:1', '@0:1', 'output_1_3']
    """
    layers = log.layers
    paths = [tuple(module_key(e, opts.rolled) for e in layer.containing_modules) for layer in layers]
    focus_at = [_focus_index(layer, opts.module) for layer in layers]
    inside = [opts.module is None or f is not None for f in focus_at]
    cut = _collapse_levels(opts, focus_at)
    collapsible = _collapsible(layers, paths, cut, inside, opts.rolled)
    placement = Placement([None] * len(layers), [layer.pass_num for layer in layers])
    for i, layer in enumerate(layers):
        if not inside[i]:
            continue
        start = focus_at[i] or 0
        k = cut[i]
        if k is not None and len(paths[i]) >= k and paths[i][k - 1] in collapsible:
            key = "@" + paths[i][k - 1]
            placement.module_nodes[key] = layer.containing_modules[k - 1]
            placement.node_pass[i] = int(layer.containing_modules[k - 1].rsplit(":", 1)[1])
            placement.cluster_path[key] = paths[i][start : k - 1]
        else:
            key = layer_key(layer, opts.rolled)
            placement.cluster_path[key] = paths[i][start:]
        placement.node_of[i] = key
    if opts.module is not None:
        _add_boundary(log, inside, placement, opts.rolled)
    return placement


def _focus_index(layer: LayerLog, focus: str | None) -> int | None:
    if focus is None:
        return None
    for i, entry in enumerate(layer.containing_modules):
        if entry == focus or entry.rsplit(":", 1)[0] == focus:
            return i
    return None


def _collapse_levels(opts: VisOptions, focus_at: list[int | None]) -> list[int | None]:
    # Nesting depth counts from the focused module: its direct submodules are level 1.
    if opts.nesting_depth is None:
        return [None] * len(focus_at)
    return [opts.nesting_depth + (0 if f is None else f + 1) for f in focus_at]


def _collapsible(layers: list[LayerLog], paths: list[tuple[str, ...]], cut: list[int | None],
                 inside: list[bool], rolled: bool) -> set[str]:
    """Modules at the cut level that hold more than one layer or any submodule."""
    members: dict[str, set[str]] = {}
    deeper: set[str] = set()
    for i, layer in enumerate(layers):
        k = cut[i]
        if k is None or not inside[i] or len(paths[i]) < k:
            continue
        mod = paths[i][k - 1]
        members.setdefault(mod, set()).add(layer_key(layer, rolled))
        if len(paths[i]) > k:
            deeper.add(mod)
    return {mod for mod, keys in members.items() if len(keys) > 1 or mod in deeper}


def _add_boundary(log: ModelLog, inside: list[bool], placement: Placement, rolled: bool) -> None:
    """Draw the tensors entering (parents) and leaving (children) the focused module."""
    index = {layer.layer_label: i for i, layer in enumerate(log.layers)}
    for i, layer in enumerate(log.layers):
        if not inside[i]:
            continue
        for role, names in (("in", layer.parent_layers), ("out", layer.child_layers)):
            for name in names:
                j = index[name]
                if inside[j] or placement.node_of[j] is not None:
                    continue
                key = layer_key(log.layers[j], rolled)
                placement.node_of[j] = key
                placement.cluster_path[key] = ()
                placement.boundary.setdefault(key, role)
