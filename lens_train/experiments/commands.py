"""Command lines that ``lens-train`` prints: they work pasted into bash as they are.

A path can hold characters that bash splits on (a space, ``$``, quotes) and characters that
Hydra's override grammar rejects in a plain value (``=``, as in Lightning's
``epoch=1-step=40.ckpt``). :func:`override` quotes a value for Hydra first (inside double
quotes) and then the whole override for the shell (inside single quotes), and only when
needed, so an ordinary path prints as ``ckpt_path=logs/.../last.ckpt``.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

# A Hydra value that needs no quotes: no "=", spaces, quotes, brackets, "$" or commas.
_PLAIN_HYDRA = re.compile(r"[\w./:+@%-]+\Z")


def hydra_value(text: str) -> str:
    """``text`` as a Hydra override value that parses back to exactly ``text`` (a string).

    Example:
        >>> hydra_value("logs/run/last.ckpt")
        'logs/run/last.ckpt'
        >>> print(hydra_value("logs/epoch=1.ckpt"))
        "logs/epoch=1.ckpt"
    """
    if _PLAIN_HYDRA.match(text) and not text[:1].isdigit() and text.lower() not in ("null", "true", "false"):
        return text
    # Inside Hydra's quotes a backslash escapes only a quote or another backslash before a
    # quote, and "${" still starts an interpolation: escape the quote characters and "${".
    body = re.sub(r"(\\+)(?=\"|$)", lambda m: m[1] * 2, text)
    return '"' + body.replace('"', '\\"').replace("${", "\\${") + '"'


def override(key: str, value: str | os.PathLike) -> str:
    """One shell word that bash turns into the Hydra override ``key=<value>``.

    Example:
        >>> override("ckpt_path", "logs/run/checkpoints/last.ckpt")
        'ckpt_path=logs/run/checkpoints/last.ckpt'
        >>> print(override("ckpt_path", "old run/epoch=1.ckpt"))
        'ckpt_path="old run/epoch=1.ckpt"'
    """
    return shlex.quote(f"{key}={hydra_value(str(value))}")


def shell_path(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``base`` (default: the current directory), quoted for bash where needed.

    Example:
        >>> shell_path("/tmp/a b", "/tmp")
        "'a b'"
    """
    try:
        text = os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        text = str(path)
    return shlex.quote(text)


def command(*words: str) -> str:
    """A ``lens-train`` command line from already-quoted words.

    Example:
        >>> command("flow=eval", override("ckpt_path", Path("run/last.ckpt")))
        'lens-train flow=eval ckpt_path=run/last.ckpt'
    """
    return " ".join(["lens-train", *words])


def relative(path: str | os.PathLike) -> str:
    """``path`` relative to the current directory when that is shorter to read, else absolute.

    Example:
        >>> relative(Path.cwd() / "logs" / "x.ckpt")
        'logs/x.ckpt'
    """
    absolute = Path(path).absolute()
    try:
        text = os.path.relpath(absolute)
    except ValueError:
        return str(absolute)
    return str(absolute) if text.startswith(".." + os.sep + "..") else text
