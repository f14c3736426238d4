"""A :class:`ModelLog` as a drawable graph: nodes, edges and module clusters.

The graph is plain data (no Graphviz here); :mod:`lens_train.viz.dot` writes it as DOT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .gradient_flow import GRADIENT_COLOR, gradient_flow, gradient_header, gradient_line
from .node_text import (
    IF_EDGE_COLOR,
    arg_text,
    buffer_update_text,
    cluster_label,
    header_label,
    html,
    labels_arguments,
    layer_label,
    layer_style,
    module_label,
    module_style,
    pass_ranges,
)
from .placement import Placement, VisOptions, module_key, place_layers

if TYPE_CHECKING:
    from ..capture.model_log import ModelLog


@dataclass
class VisNode:
    """One box or oval: a layer (pass) or a collapsed module.

    Example:
        >>> VisNode("relu_1_1", "<b>relu_1_1</b>", {"shape": "oval"}).cluster
        ()
    """

    key: str
    label: str
    attrs: dict[str, str]
    cluster: tuple[str, ...] = ()


@dataclass
class VisEdge:
    """One arrow: data flow, or ``IF`` from a condition to the branch it chose.

    Example:
        >>> VisEdge("input_1_0", "relu_1_1").label
        ''
    """

    tail: str
    head: str
    label: str = ""
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class VisCluster:
    """One module (call) drawn as a box around its layers.

    Example:
        >>> VisCluster("block:1", "<b>@block</b> (Inception)", None, 0).depth
        0
    """

    key: str
    label: str
    parent: str | None
    depth: int


@dataclass
class VisGraph:
    """Everything the picture shows, in drawing order.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.ones(1, 2), layers_to_save=None)
        >>> g = build_graph(log, VisOptions("unrolled"))
        >>> [n.key for n in g.nodes], [(e.tail, e.head) for e in g.edges]
        (['input_1_0', 'linear_1_1', 'output_1_2'], [('input_1_0', 'linear_1_1'), ('linear_1_1', 'output_1_2')])
    """

    name: str
    header: str
    nodes: list[VisNode]
    edges: list[VisEdge]
    clusters: dict[str, VisCluster]


@dataclass
class _EdgeFacts:
    tail_passes: set[int] = field(default_factory=set)
    head_passes: set[int] = field(default_factory=set)
    positions: set[Any] = field(default_factory=set)
    dashed: bool = False
    gradient: bool = False


def build_graph(log: ModelLog, opts: VisOptions) -> VisGraph:
    """Lay out ``log`` as nodes, edges and clusters according to ``opts``.

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.ReLU(), torch.ones(2), layers_to_save=None)
        >>> [n.attrs["fillcolor"] for n in build_graph(log, VisOptions("rolled")).nodes]
        ['#98FB98', 'white', '#FF9999']
    """
    placement = place_layers(log, opts)
    members: dict[str, list[int]] = {}
    for i, key in enumerate(placement.node_of):
        if key is not None:
            members.setdefault(key, []).append(i)
    from_input = _from_input(log)
    flow = gradient_flow(log) if opts.gradients else [False] * len(log.layers)
    clusters = _clusters(log, placement, members, opts.rolled)
    nodes = [_node(log, key, idx, placement, from_input, opts.rolled) for key, idx in members.items()]
    for node in nodes:
        node.cluster = tuple(c for c in placement.cluster_path[node.key] if c in clusters)
        if opts.gradients:
            _add_gradient_line(node, log, members[node.key], placement, opts.rolled)
    edges = _data_edges(log, placement, members, from_input, flow) + _if_edges(log, placement)
    return VisGraph(log.model_name, _header(log, opts), nodes, edges, clusters)


def _header(log: ModelLog, opts: VisOptions) -> str:
    line = gradient_header(log) if opts.gradients else None
    return header_label(log, opts) + (f'{html(line)}<br align="left"/>' if line else "")


def _add_gradient_line(node: VisNode, log: ModelLog, idx: list[int], placement: Placement, rolled: bool) -> None:
    """Append the gradient shape and size to a node whose tensor got a gradient."""
    if node.key in placement.module_nodes:
        address, _, num = placement.module_nodes[node.key].rpartition(":")
        calls = log.modules[address].calls if rolled else [log.modules[address].calls[int(num) - 1]]
        passes = [log[call["outputs"][0]] for call in calls if call["outputs"]]
    else:
        passes = [log.layers[i] for i in idx]
    line = gradient_line(passes, len(passes))
    if line:
        node.label += "<br/>" + line


def _from_input(log: ModelLog) -> list[bool]:
    """Per layer pass: whether it descends from a model input."""
    seen: dict[str, bool] = {}
    for layer in log.layers:
        seen[layer.layer_label] = layer.is_input or any(seen.get(p, False) for p in layer.parent_layers)
    return [seen[layer.layer_label] for layer in log.layers]


def _node(log: ModelLog, key: str, idx: list[int], placement: Placement, from_input: list[bool], rolled: bool) -> VisNode:
    if key in placement.module_nodes:
        address, _, num = placement.module_nodes[key].rpartition(":")
        module = log.modules[address]
        call = module.calls[0 if rolled else int(num) - 1]
        text = module_label(module, call, log, rolled) + buffer_update_text(module.calls if rolled else [call])
        return VisNode(key, text, module_style(module))
    passes = [log.layers[i] for i in idx]
    boundary = placement.boundary.get(key)
    text = layer_label(passes, log, rolled, boundary) + buffer_update_text(_output_calls(log, passes))
    return VisNode(key, text, layer_style(passes[0], from_input[idx[0]], boundary))


def _output_calls(log: ModelLog, passes: list) -> list[dict]:
    """The innermost module calls these layer passes are the output of."""
    calls = []
    for layer in passes:
        if layer.module_outputs:
            address, _, num = layer.module_outputs[0].rpartition(":")
            calls.append(log.modules[address].calls[int(num) - 1])
    return calls


def _clusters(log: ModelLog, placement: Placement, members: dict[str, list[int]], rolled: bool) -> dict[str, VisCluster]:
    """Modules drawn as boxes: those whose one call holds at least two operation nodes.

    A module with a single operation per call is not boxed (its node shows ``@address``),
    even when rolled mode merges several calls of it (a ResNet block's one ``relu`` used
    twice); buffers it reads (BatchNorm's running statistics) do not count as operations.
    """
    counts = _nodes_per_call(log, placement, members, rolled)
    clusters: dict[str, VisCluster] = {}
    for key in members:
        parent = None
        for mod in placement.cluster_path[key]:
            if counts.get(mod, 0) < 2:
                continue
            if mod not in clusters:
                module = log.modules[mod if rolled else mod.rsplit(":", 1)[0]]
                depth = 0 if parent is None else clusters[parent].depth + 1
                clusters[mod] = VisCluster(mod, cluster_label(module, mod, rolled), parent, depth)
            parent = mod
    return clusters


def _nodes_per_call(log: ModelLog, placement: Placement, members: dict[str, list[int]], rolled: bool) -> dict[str, int]:
    """Per cluster key: the most operation nodes (buffers aside) that one call of it holds."""
    per_call: dict[str, dict[str, set[str]]] = {}
    for key, idx in members.items():
        if key not in placement.module_nodes and all(log.layers[i].is_buffer for i in idx):
            continue
        path = set(placement.cluster_path[key])
        for i in idx:
            for entry in log.layers[i].containing_modules:
                mod = module_key(entry, rolled)
                if mod in path:
                    per_call.setdefault(mod, {}).setdefault(entry, set()).add(key)
    return {mod: max(len(keys) for keys in calls.values()) for mod, calls in per_call.items()}


def _data_edges(log: ModelLog, placement: Placement, members: dict[str, list[int]], from_input: list[bool],
                flow: list[bool]) -> list[VisEdge]:
    index = {layer.layer_label: i for i, layer in enumerate(log.layers)}
    facts: dict[tuple[str, str], _EdgeFacts] = {}
    node_of, boundary = placement.node_of, placement.boundary
    for i, layer in enumerate(log.layers):
        head = node_of[i]
        if head is None or boundary.get(head) == "in":
            continue
        with_args = head not in placement.module_nodes and labels_arguments(layer)
        for parent in layer.parent_layers:
            j = index[parent]
            tail = node_of[j]
            if tail is None or (tail in boundary and head in boundary) or _inside_one(placement, tail, head, i, j):
                continue
            f = facts.setdefault((tail, head), _EdgeFacts())
            f.tail_passes.add(placement.node_pass[j])
            f.head_passes.add(placement.node_pass[i])
            f.dashed = f.dashed or not (from_input[j] or log.layers[j].is_buffer)
            # Rolled: one pass that carried gradient makes the merged edge blue.
            f.gradient = f.gradient or (flow[i] and flow[j])
            if with_args:
                f.positions.update(layer.parent_layer_arg_locs.get(parent, ()))
    node_passes = {key: {placement.node_pass[i] for i in idx} for key, idx in members.items()}
    return [_data_edge(tail, head, f, node_passes) for (tail, head), f in facts.items()]


def _inside_one(placement: Placement, tail: str, head: str, i: int, j: int) -> bool:
    """Whether passes ``i`` and ``j`` are inside one collapsed module call (no arrow).

    Rolled nodes keep arrows to themselves: they are a loop from one pass to the next.
    """
    return tail == head and tail in placement.module_nodes and placement.node_pass[i] == placement.node_pass[j]


def _data_edge(tail: str, head: str, f: _EdgeFacts, node_passes: dict[str, set[int]]) -> VisEdge:
    lines = [arg_text(f.positions)] if f.positions else []
    # Rolled nodes hold several passes; say which passes an edge belongs to when not all.
    if len(node_passes[tail]) > 1 and f.tail_passes != node_passes[tail]:
        lines.append(f"out {pass_ranges(f.tail_passes)}")
    if len(node_passes[head]) > 1 and f.head_passes != node_passes[head]:
        lines.append(f"in {pass_ranges(f.head_passes)}")
    attrs = {"style": "dashed"} if f.dashed else {}
    if f.gradient:
        attrs["color"] = GRADIENT_COLOR
    return VisEdge(tail, head, "<br/>".join(lines), attrs)


def _if_edges(log: ModelLog, placement: Placement) -> list[VisEdge]:
    index = {layer.layer_label: i for i, layer in enumerate(log.layers)}
    seen: dict[tuple[str, str], None] = {}
    for i, layer in enumerate(log.layers):
        tail = placement.node_of[i]
        for start in layer.branch_start_layers:
            j = index[start]
            head = placement.node_of[j]
            if tail is not None and head is not None and not _inside_one(placement, tail, head, j, i):
                seen.setdefault((tail, head), None)
    attrs = {"style": "bold", "color": IF_EDGE_COLOR, "fontcolor": IF_EDGE_COLOR}
    return [VisEdge(tail, head, "<b>IF</b>", dict(attrs)) for tail, head in seen]
