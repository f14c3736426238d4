"""Graphviz DOT source for a :class:`ModelLog` (valid for system ``dot`` and graphviz-pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .graph import VisCluster, VisGraph, VisNode, build_graph
from .placement import make_options

if TYPE_CHECKING:
    from ..capture.model_log import ModelLog

_GRAPH_ATTRS = {"labelloc": "t", "labeljust": "l", "fontsize": "12", "nodesep": "0.25", "ranksep": "0.35"}
_NODE_ATTRS = {"shape": "box", "style": "filled", "fillcolor": "white", "fontsize": "10", "margin": "0.08,0.04"}
_EDGE_ATTRS = {"fontsize": "8", "arrowsize": "0.7"}
_CLUSTER_PEN = (3.0, 2.0, 1.5, 1.0)


def to_dot(log: ModelLog, vis_opt: str = "unrolled", vis_nesting_depth: int | None = None, vis_module: str | None = None,
           vis_gradients: bool = False) -> str:
    """The DOT source of the graph picture of ``log`` (see :func:`lens_train.viz.render_graph`).

    Args:
        log: a captured (or loaded) :class:`~lens_train.ModelLog`.
        vis_opt: ``"unrolled"`` (one node per layer pass) or ``"rolled"`` (one per layer).
        vis_nesting_depth: show this many levels of modules; deeper ones become one node.
        vis_module: draw only the inside of this module (``"blocks.3"`` or ``"blocks.3:2"``).
        vis_gradients: also draw the backward pass, after a ``backward()`` on a log made with
            ``save_gradients=True``: edges that carried gradient in blue, and each node
            that got a gradient says its shape and size (``grad 5x5 (100 B)``).

    Example:
        >>> import torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.ones(1, 2), layers_to_save=None)
        >>> source = to_dot(log)
        >>> source.startswith('digraph "Sequential"'), '"input_1_0" -> "linear_1_1"' in source
        (True, True)
    """
    return graph_to_dot(build_graph(log, make_options(log, vis_opt, vis_nesting_depth, vis_module, vis_gradients)))


def quote(text: str) -> str:
    """A DOT double-quoted ID.

    Example:
        >>> print(quote('fc:1 "a"'))
        "fc:1 \\"a\\""
    """
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(attrs: dict[str, str], label: str | None = None) -> str:
    parts = [f"label=<{label}>"] if label else []
    parts += [f"{k}={quote(v)}" for k, v in attrs.items()]
    return f" [{', '.join(parts)}]" if parts else ""


def graph_to_dot(graph: VisGraph) -> str:
    """Write a :class:`~lens_train.viz.graph.VisGraph` as DOT text.

    Example:
        >>> from lens_train.viz.graph import VisEdge, VisGraph, VisNode
        >>> g = VisGraph("M", "<b>M</b>", [VisNode("a", "a", {}), VisNode("b", "b", {})], [VisEdge("a", "b")], {})
        >>> print(graph_to_dot(g).splitlines()[-2])
          "a" -> "b";
    """
    lines = [f"digraph {quote(graph.name)} {{", f"  graph{_attrs(_GRAPH_ATTRS, graph.header)};",
             f"  node{_attrs(_NODE_ATTRS)};", f"  edge{_attrs(_EDGE_ATTRS)};"]
    by_cluster: dict[str | None, list[VisNode]] = {}
    for node in graph.nodes:
        by_cluster.setdefault(node.cluster[-1] if node.cluster else None, []).append(node)
    children: dict[str | None, list[VisCluster]] = {}
    for cluster in graph.clusters.values():
        children.setdefault(cluster.parent, []).append(cluster)
    _write_level(lines, None, by_cluster, children, "  ")
    for edge in graph.edges:
        lines.append(f"  {quote(edge.tail)} -> {quote(edge.head)}{_attrs(edge.attrs, edge.label or None)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _write_level(lines: list[str], cluster: str | None, by_cluster: dict[str | None, list[VisNode]],
                 children: dict[str | None, list[VisCluster]], indent: str) -> None:
    for node in by_cluster.get(cluster, ()):
        lines.append(f"{indent}{quote(node.key)}{_attrs(node.attrs, node.label)};")
    for sub in children.get(cluster, ()):
        pen = _CLUSTER_PEN[min(sub.depth, len(_CLUSTER_PEN) - 1)]
        lines.append(f"{indent}subgraph {quote('cluster_' + sub.key)} {{")
        lines.append(f"{indent}  label=<{sub.label}>; style=\"rounded\"; penwidth={pen}; labeljust=\"l\"; fontsize=\"11\";")
        _write_level(lines, sub.key, by_cluster, children, indent + "  ")
        lines.append(f"{indent}}}")
