"""Graph pictures of a :class:`~lens_train.ModelLog`: DOT source and rendered files."""

from .dot import to_dot
from .render import GraphvizBinary, graphviz_binaries, render_graph
from .show import show_model_graph

__all__ = ["GraphvizBinary", "graphviz_binaries", "render_graph", "show_model_graph", "to_dot"]
