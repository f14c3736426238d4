"""Rendering DOT to a file: a system Graphviz ``dot`` if present, else graphviz-pure.

``graphviz-pure`` is a pip-installed, self-contained port of ``dot`` (svg, png and
the text formats, no pdf), so a plain ``pip install lens-train`` can render. A system
``dot`` is preferred when it can write the asked format; each binary is asked once
(``-T?``) which formats it writes. ``LENS_TRAIN_DOT=/path/to/dot`` forces one binary.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InvalidArgumentError, RenderError
from .display import show_inline
from .dot import graph_to_dot
from .graph import build_graph
from .placement import make_options

if TYPE_CHECKING:
    from ..capture.model_log import ModelLog

ENV_VAR = "LENS_TRAIN_DOT"
_PURE_NAME = "graphviz-pure"


@dataclass(frozen=True)
class GraphvizBinary:
    """One program that turns DOT into pictures.

    Example:
        >>> GraphvizBinary("/usr/bin/dot", "system dot").kind
        'system dot'
    """

    path: str
    kind: str

    @property
    def formats(self) -> tuple[str, ...]:
        """The output formats this binary writes (``svg``, ``png``, ...)."""
        return _formats(self.path)


def graphviz_binaries() -> list[GraphvizBinary]:
    """The Graphviz programs found, in order of preference.

    Example:
        >>> any(b.kind == "graphviz-pure" for b in graphviz_binaries())
        True
    """
    forced = os.environ.get(ENV_VAR)
    if forced:
        if not (os.path.isfile(forced) and os.access(forced, os.X_OK)):
            raise RenderError(
                f"{ENV_VAR}={forced!r} is not an executable file. Point it at Graphviz's dot "
                f"(e.g. {ENV_VAR}=/usr/bin/dot) or unset it to use dot on PATH or graphviz-pure."
            )
        return [GraphvizBinary(forced, f"${ENV_VAR}")]
    found = []
    system = shutil.which("dot")
    if system:
        found.append(GraphvizBinary(system, "system dot"))
    pure = _find_pure()
    if pure:
        found.append(GraphvizBinary(pure, _PURE_NAME))
    return found


def _find_pure() -> str | None:
    # pip puts the binary in the environment's scripts folder, which need not be on PATH.
    on_path = shutil.which(_PURE_NAME)
    if on_path:
        return on_path
    name = _PURE_NAME + (".exe" if os.name == "nt" else "")
    folders = [sysconfig.get_path("scripts"), os.path.join(sys.prefix, "Scripts" if os.name == "nt" else "bin"),
               os.path.dirname(sys.executable)]
    for folder in folders:
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


@functools.lru_cache(maxsize=8)
def _formats(path: str) -> tuple[str, ...]:
    # Both dot and graphviz-pure answer an unknown -T with "... Use one of: fmt fmt:renderer ...".
    try:
        proc = subprocess.run([path, "-T?"], input=b"", capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    text = (proc.stderr + proc.stdout).decode(errors="replace")
    _, sep, tail = text.partition("Use one of:")
    if not sep:
        return ()
    return tuple(dict.fromkeys(word.split(":")[0] for word in tail.split()))


def pick_binary(fmt: str) -> GraphvizBinary:
    """The first Graphviz program that writes ``fmt``, or an error naming what is possible.

    Example:
        >>> pick_binary("svg").kind in ("system dot", "graphviz-pure", "$LENS_TRAIN_DOT")
        True
    """
    found = graphviz_binaries()
    for binary in found:
        if fmt in binary.formats:
            return binary
    if not found:
        raise RenderError(
            "No Graphviz program found: neither `dot` on PATH nor the graphviz-pure binary next to this Python "
            f"({sys.executable}). Reinstall with `pip install graphviz-pure`, or install Graphviz "
            "(apt install graphviz / brew install graphviz / conda install graphviz). "
            "The DOT source is always available: log.to_dot()."
        )
    listing = "; ".join(f"{b.kind} ({b.path}) writes {', '.join(b.formats) or 'nothing it could list'}" for b in found)
    raise InvalidArgumentError(
        f"No Graphviz program here can write vis_fileformat={fmt!r}: {listing}. "
        f"Use one of those, e.g. log.render_graph(vis_fileformat='svg'), or install the full Graphviz "
        "(apt install graphviz / brew install graphviz / conda install graphviz) to get pdf and the other formats."
    )


def render_dot(source: str, outpath: str | os.PathLike[str], fmt: str = "svg") -> Path:
    """Render DOT ``source`` to ``outpath`` (``.fmt`` appended unless already there).

    Example:
        >>> import tempfile, os
        >>> out = render_dot("digraph { a -> b }", os.path.join(tempfile.mkdtemp(), "g"), "svg")
        >>> out.name, "<svg" in out.read_text()
        ('g.svg', True)
    """
    fmt = _check_format(fmt)
    binary = pick_binary(fmt)
    out = Path(outpath)
    if out.suffix.lower() != "." + fmt:
        out = out.with_name(out.name + "." + fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([binary.path, f"-T{fmt}", "-o", str(out)], input=source.encode(), capture_output=True)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise RenderError(
            f"{binary.kind} ({binary.path}) failed to render {out} (exit {proc.returncode}): {err or 'no message'}. "
            "Save the DOT source with open('graph.gv', 'w').write(log.to_dot()) to inspect it."
        )
    return out


def _check_format(fmt: object) -> str:
    if not isinstance(fmt, str) or not fmt or not fmt.replace("_", "").replace(".", "").replace("-", "").isalnum():
        raise InvalidArgumentError(f"vis_fileformat must be a format name like 'svg' or 'png', got {fmt!r}.")
    return fmt.lower()


def render_graph(
    log: ModelLog,
    vis_opt: str = "unrolled",
    vis_nesting_depth: int | None = None,
    vis_outpath: str | os.PathLike[str] = "graph",
    vis_fileformat: str = "svg",
    vis_save_only: bool = False,
    vis_module: str | None = None,
    vis_gradients: bool = False,
) -> Path | None:
    """Draw the graph of ``log`` and write it to ``vis_outpath.vis_fileformat``.

    Args:
        log: a captured (or loaded) :class:`~lens_train.ModelLog`; activations are not needed.
        vis_opt: ``"unrolled"`` (one node per layer pass), ``"rolled"`` (passes merged,
            nodes marked ``(xN)``) or ``"none"`` (draw nothing, return None).
        vis_nesting_depth: show this many levels of modules; each module at the last
            level is drawn as one node. None shows every module.
        vis_outpath: file path; the format's extension is appended when missing.
        vis_fileformat: ``"svg"``, ``"png"``, or any format the Graphviz program writes.
        vis_save_only: only write the file; otherwise a notebook also shows it inline.
        vis_module: draw only the inside of this module (``"blocks.3"``, or ``"blocks.3:2"``
            for one call), with the tensors entering and leaving it.
        vis_gradients: also draw the backward pass, after a ``backward()`` on a log made with
            ``save_gradients=True``: edges that carried gradient in blue, and each node
            that got a gradient says its shape and size (``grad 5x5 (100 B)``).

    Returns:
        The path of the written file (None for ``vis_opt="none"``).

    Example:
        >>> import os, tempfile, torch, lens_train as lt
        >>> log = lt.log_forward_pass(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.ones(1, 2), layers_to_save=None)
        >>> path = render_graph(log, vis_outpath=os.path.join(tempfile.mkdtemp(), "g"), vis_save_only=True)
        >>> path.name, "linear_1_1" in path.read_text()
        ('g.svg', True)
    """
    if vis_opt == "none":
        return None
    opts = make_options(log, vis_opt, vis_nesting_depth, vis_module, vis_gradients)
    fmt = _check_format(vis_fileformat)
    out = render_dot(graph_to_dot(build_graph(log, opts)), vis_outpath, fmt)
    if not vis_save_only:
        show_inline(out)
    return out
