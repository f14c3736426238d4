"""Reading rendered SVG graphs back: nodes, edges and clusters with their text and colours."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

_NS = "{http://www.w3.org/2000/svg}"
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Shape:
    """One node, edge or cluster of a rendered SVG."""

    title: str
    kind: str
    texts: list[str] = field(default_factory=list)
    fill: str | None = None
    stroke: str | None = None
    dashed: bool = False
    outline: str = ""
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    @property
    def text(self) -> str:
        """All text lines joined by newlines."""
        return "\n".join(self.texts)

    def contains(self, other: Shape) -> bool:
        """Whether ``other``'s bounding box lies inside this one's."""
        x0, y0, x1, y1 = self.box
        a0, b0, a1, b1 = other.box
        return x0 <= a0 and y0 <= b0 and a1 <= x1 and b1 <= y1


@dataclass
class SvgGraph:
    """The parsed picture."""

    nodes: dict[str, Shape]
    edges: dict[tuple[str, str], list[Shape]]
    clusters: dict[str, Shape]
    header: list[str]


def parse_svg(path: str | Path) -> SvgGraph:
    """Parse a Graphviz SVG file into nodes (by name), edges (by (tail, head)) and clusters."""
    root = ET.parse(path).getroot()
    graph = root.find(f"{_NS}g")
    nodes: dict[str, Shape] = {}
    edges: dict[tuple[str, str], list[Shape]] = {}
    clusters: dict[str, Shape] = {}
    header = [t.text or "" for t in graph.findall(f"{_NS}text")]
    for g in graph.findall(f"{_NS}g"):
        kind = g.get("class")
        shape = _shape(g, kind)
        if kind == "node":
            nodes[shape.title] = shape
        elif kind == "edge":
            tail, head = shape.title.split("->")
            edges.setdefault((tail, head), []).append(shape)
        elif kind == "cluster":
            clusters[shape.title.removeprefix("cluster_")] = shape
    return SvgGraph(nodes, edges, clusters, header)


def _shape(g: ET.Element, kind: str) -> Shape:
    title = g.find(f"{_NS}title").text or ""
    shape = Shape(title, kind, texts=[t.text or "" for t in g.iter(f"{_NS}text")])
    for child in g.iter():  # tooltips wrap the drawing in <g><a>...</a></g>
        tag = child.tag.removeprefix(_NS)
        if tag in ("ellipse", "polygon", "path") and shape.outline == "":
            shape.outline = tag
            shape.fill = child.get("fill")
            shape.stroke = child.get("stroke")
            shape.dashed = child.get("stroke-dasharray") is not None
            shape.box = _bbox(child)
        elif tag == "polyline":
            shape.outline += "+polyline"
    return shape


def _bbox(el: ET.Element) -> tuple[float, float, float, float]:
    if el.tag.endswith("ellipse"):
        cx, cy, rx, ry = (float(el.get(k)) for k in ("cx", "cy", "rx", "ry"))
        return (cx - rx, cy - ry, cx + rx, cy + ry)
    nums = [float(n) for n in _NUM.findall(el.get("points") or el.get("d") or "")]
    xs, ys = nums[0::2], nums[1::2]
    return (min(xs), min(ys), max(xs), max(ys))


def render_svg(log, tmp_path: Path, name: str = "graph", **vis) -> SvgGraph:  # noqa: ANN001
    """Render ``log`` to ``tmp_path/name.svg`` with ``vis_*`` options and parse it."""
    path = log.render_graph(vis_outpath=tmp_path / name, vis_fileformat="svg", vis_save_only=True, **vis)
    return parse_svg(path)
