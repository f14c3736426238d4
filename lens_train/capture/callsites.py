"""Where in the user's code an operation was called, cheaply: ``sys._getframe`` walks, no ``inspect``.

A call site is the key that tells loop passes apart from distinct statements (see
:mod:`lens_train.capture.passes`); the user-code frames are kept raw ``(code, line)``
and turned into readable records only when printed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)
_LENS_DIR = os.path.dirname(os.path.dirname(__file__))


def _canonical_offsets(code: Any) -> list[int]:
    """Instruction index -> the first instruction index with the same source position.

    Python compiles some code twice (a ``while`` condition before the loop and again at
    its end; ``finally`` bodies): both copies must give one call site.
    """
    positions = getattr(code, "co_positions", None)
    if positions is None:  # Python 3.10: instruction offsets only
        return list(range(len(code.co_code) // 2))
    first: dict[Any, int] = {}
    return [i if pos[0] is None else first.setdefault(pos, i) for i, pos in enumerate(positions())]


def _frame_kind(code: Any) -> int:
    """0: lens_train's own frame (ignored), 1: library frame, 2: user-code frame."""
    f = code.co_filename
    if f.startswith(_LENS_DIR):
        return 0
    return 1 if f.startswith(_TORCH_DIR) or f.startswith("<frozen") else 2


# Code that runs inside the hooks of torch's sharding wrappers (FSDP): all-gathers, parameter views.
_SHARDING_DIRS = tuple(os.path.join(_TORCH_DIR, "distributed", d) + os.sep for d in ("fsdp", "_composable"))


def inside_sharding_hooks(stop: Any) -> bool:
    """Whether the caller runs inside FSDP's own code (below code object ``stop``).

    Example:
        >>> inside_sharding_hooks(None)
        False
    """
    f = sys._getframe(1)
    while f is not None and f.f_code is not stop:
        if f.f_code.co_filename.startswith(_SHARDING_DIRS):
            return True
        f = f.f_back
    return False


# id(code) -> (code, frame kind, canonical offsets), shared by every capture: working out
# the offsets of a large library function costs ~100 us, and code objects hash slowly
# (~0.5 us), so entries are keyed by id; holding the code keeps that id from being reused.
_CODE_INFO: dict[int, tuple[Any, int, list[int]]] = {}
_MAX_CODES = 50_000  # code compiled at run time (exec, doctests) must not grow the cache forever


def find_callsite(stop: Any) -> tuple[tuple, tuple]:
    """(call-site key, user frames) of the caller: every frame below code object ``stop``, innermost first.

    The key holds (code, instruction offset) of every frame, library frames
    included, so two statements never share a key while a loop body always does.
    Only user-code frames are kept for display.

    Example:
        >>> in_a_loop = [find_callsite(None)[0] for _ in range(2)]
        >>> in_a_loop[0] == in_a_loop[1], find_callsite(None)[0] == in_a_loop[0]
        (True, False)
    """
    f = sys._getframe(1)
    key = []
    frames = []
    info = _CODE_INFO
    while f is not None:
        code = f.f_code
        if code is stop:
            break
        entry = info.get(id(code))
        if entry is None or entry[0] is not code:
            if len(info) >= _MAX_CODES:
                info.clear()
            entry = info[id(code)] = (code, _frame_kind(code), _canonical_offsets(code))
        kind = entry[1]
        if kind:
            key.append(id(code))
            canon = entry[2]
            i = f.f_lasti >> 1
            key.append(canon[i] if 0 <= i < len(canon) else -1 - i)
            if kind == 2:
                frames.append((code, f.f_lineno))
        f = f.f_back
    return tuple(key), tuple(frames)
