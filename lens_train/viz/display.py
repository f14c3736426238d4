"""Showing a rendered graph inline when running inside a Jupyter kernel.

IPython is optional: outside a notebook (or without IPython) nothing is shown and
the caller just gets the file path.
"""

from __future__ import annotations

import sys
from pathlib import Path


def in_notebook() -> bool:
    """Whether code runs in a Jupyter kernel (IPython already imported, with a kernel).

    Example:
        >>> in_notebook()
        False
    """
    ipython = sys.modules.get("IPython")
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_inline(path: Path) -> bool:
    """Display an svg/png/jpeg file in the running notebook; return whether it was shown.

    Example:
        >>> show_inline(Path("graph.svg"))  # not in a notebook: nothing to do
        False
    """
    if not in_notebook():
        return False
    from IPython import display  # present: in_notebook() found it imported

    suffix = path.suffix.lower()
    if suffix == ".svg":
        display.display(display.SVG(filename=str(path)))
    elif suffix in (".png", ".jpg", ".jpeg", ".jpe"):
        display.display(display.Image(filename=str(path)))
    else:
        return False
    return True
