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
# raw flat walk -> its resolution, shared by every capture (a model runs the same statements each
# pass). Exact: a walk names codes by id, and _CODE_INFO holds each of those codes, so an id in
# here never names another code; both caches are cleared together.
_WALKS: dict[tuple, tuple[tuple, tuple]] = {}
_MAX_WALKS = 200_000
# call-site key -> its number, shared by every capture (numbers only tell keys apart, so one numbering
# serves all, and the C side keeps each raw site's number from one capture to the next: see
# shared_sites). A new dict when it grows past _MAX_SITES or when _CODE_INFO is cleared.
_SITES: dict[tuple, int] = {}
_MAX_SITES = 100_000


def shared_sites() -> dict[tuple, int]:
    """The call-site numbering a capture resolves its records in (keep it: one capture, one dict).

    Example:
        >>> shared_sites() is shared_sites()
        True
    """
    if len(_SITES) >= _MAX_SITES:
        _new_numbering()
    return _SITES


def find_callsite(stop: Any, codes: dict[int, Any], above: dict[int, tuple[Any, tuple]] | None = None,
                  frame: Any = None) -> tuple[tuple, None]:
    """The raw call site of the caller: (code id, instruction offset) of every frame below ``stop``.

    The hot path of capture only walks the frames; :func:`resolve_callsite` turns the
    raw site into the grouping key and the user frames afterwards, once per distinct
    site. ``codes`` collects the code objects by id (the caller keeps them alive).
    ``above`` (see :class:`OpenCalls`) holds the finished walk above each open module
    call, so an op's walk stops at its module's frame; the raw site is then
    ``(frames walked, that shared walk)``, not a copy of both.

    Example:
        >>> codes = {}
        >>> raw = [resolve_callsite(find_callsite(None, codes)[0], codes)[0] for _ in range(2)]
        >>> raw[0] == raw[1], resolve_callsite(find_callsite(None, codes)[0], codes)[0] == raw[0]
        (True, False)
    """
    f = sys._getframe(1) if frame is None else frame
    out = []
    append = out.append
    while f is not None:
        code = f.f_code
        if code is stop:
            break
        i = id(code)
        codes[i] = code
        append(i)
        append(f.f_lasti)
        if above:
            known = above.get(id(f))
            if known is not None and known[0] is f:
                return (tuple(out), known[1]), None
        f = f.f_back
    return tuple(out), None


class OpenCalls:
    """The raw call site above each open module call, walked once per call instead of once per op.

    ``enter(frame)`` is called from a module's forward pre-hook with the frame that runs
    the module's hooks and ``forward`` (torch's ``inner``): the frames above it keep their
    instruction offsets for the whole call, so their walk is shared by every op inside.

    Example:
        >>> import sys
        >>> calls, codes = OpenCalls(None, {}), {}
        >>> def forward():
        ...     here = sys._getframe(1)  # the frame running the call, suspended meanwhile
        ...     return find_callsite(None, codes, calls.above, here)[0], find_callsite(None, codes, None, here)[0]
        >>> def call():
        ...     calls.enter(sys._getframe())
        ...     try:
        ...         return forward()
        ...     finally:
        ...         calls.exit(sys._getframe())
        >>> cached, walked = call()
        >>> resolve_callsite(cached, codes) == resolve_callsite(walked, codes), calls.above
        (True, {})
    """

    def __init__(self, stop: Any, codes: dict[int, Any], walk: Any = None, note: Any = None) -> None:
        self.stop = stop
        self.codes = codes
        self.above: dict[int, tuple[Any, tuple]] = {}
        # walk(stop, codes, above, frame): find_callsite's raw site (its C version, when built)
        self._walk = walk or (lambda stop, codes, above, frame: find_callsite(stop, codes, above, frame)[0])
        self._note = note  # note(code) of every frame put in ``above`` (the C walk looks up no other frame)

    def enter(self, frame: Any) -> None:
        """A module call starts in ``frame``."""
        if self._note is not None:
            self._note(frame.f_code)
        parent = frame.f_back
        self.above[id(frame)] = (frame, self._walk(self.stop, self.codes, self.above, parent) if parent else ())

    def exit(self, frame: Any) -> None:
        """The module call running in ``frame`` returns."""
        known = self.above.get(id(frame))
        if known is not None and known[0] is frame:
            del self.above[id(frame)]


def resolve_callsite(raw: tuple, codes: dict[int, Any]) -> tuple[tuple, tuple]:
    """(call-site key, user frames innermost first) of a raw site from :func:`find_callsite`.

    The key holds (code, canonical instruction offset) of every frame, library frames
    included, so two statements never share a key while a loop body always does.
    Only user-code frames are kept for display, as (code, line). A raw site that ends in
    a shared walk (``(frames, walk above)``) resolves to the same key as the flat walk.
    """
    if not raw or type(raw[0]) is not tuple:
        return _resolve_walk(raw, codes)
    return _join(_resolve_walk(raw[0], codes), resolve_callsite(raw[1], codes))


def _join(inner: tuple[tuple, tuple], outer: tuple[tuple, tuple]) -> tuple[tuple, tuple]:
    return inner[0] + outer[0], inner[1] + outer[1]


def _resolve_walk(raw: tuple, codes: dict[int, Any]) -> tuple[tuple, tuple]:
    """:func:`resolve_callsite` of a flat walk: (code id, instruction offset) pairs."""
    found = _WALKS.get(raw)
    if found is not None:
        return found
    key = []
    frames = []
    info = _CODE_INFO
    cleared = False
    for j in range(0, len(raw), 2):
        code_id = raw[j]
        code = codes[code_id]
        entry = info.get(code_id)
        if entry is None or entry[0] is not code:
            if len(info) >= _MAX_CODES:
                info.clear()
                _WALKS.clear()
                _new_numbering()
                cleared = True
            entry = info[code_id] = (code, _frame_kind(code), _canonical_offsets(code), _line_numbers(code))
        kind = entry[1]
        if kind:
            key.append(code_id)
            canon = entry[2]
            i = raw[j + 1] >> 1
            key.append(canon[i] if 0 <= i < len(canon) else -1 - i)
            if kind == 2:
                lines = entry[3]
                frames.append((code, lines[i] if 0 <= i < len(lines) and lines[i] is not None else code.co_firstlineno))
    found = tuple(key), tuple(frames)
    if len(_WALKS) >= _MAX_WALKS:
        _WALKS.clear()
    if not cleared:  # every code it names is held by _CODE_INFO
        _WALKS[raw] = found
    return found


def _new_numbering() -> None:
    """Captures resolved from now on number their sites in a new dict (a code id may soon name another code)."""
    global _SITES
    _SITES = {}


def resolve_callsites(records: Any, codes: dict[int, Any], sites: dict[tuple, int] | None = None,
                      loop: Any = None) -> None:
    """Give every record whose call site is still raw its site number and user frames.

    The number stands for the call-site key (see :func:`resolve_callsite`) in ``sites``
    (key -> number; records numbered with one dict compare alike), so pass grouping
    compares small numbers, not long keys. Each distinct walk is resolved once: the
    walk above each module call (shared by every op inside it) and each op's own walk
    up to it, and the records of one statement in every call of a module share their
    number and frames. ``loop``: the C version of this function's loop and :func:`_site`
    (``_hotpath.resolve_sites``), which calls :func:`_resolve_walk` for walks not resolved before;
    given the same ``sites`` dict (:func:`shared_sites`) capture after capture, it finds most raw
    sites resolved already, by object.
    """
    sites = {} if sites is None else sites
    done: dict[Any, tuple[int, tuple]] = {}
    aboves: dict[int, tuple[Any, int, tuple]] = {}
    if loop is not None:
        loop(records, codes, sites, done, aboves, _WALKS, _resolve_walk)
        return
    for rec in records:
        if rec.frames is None:
            rec.callsite, rec.frames = _site(rec.callsite, codes, sites, done, aboves)


def _site(raw: tuple, codes: dict[int, Any], sites: dict[tuple, int], done: dict[Any, tuple[int, tuple]],
          aboves: dict[int, tuple[Any, int, tuple]]) -> tuple[int, tuple]:
    """(site number, user frames) of one raw site, through the caches of one :func:`resolve_callsites`.

    ``done`` is keyed by the raw walk, or for a walk that ends in a shared one by
    ``(own walk, number of the walk above)`` (equal walks above meet there).
    """
    if raw and type(raw[0]) is tuple:
        own, above = raw
        outer = _shared_walk(above, codes, aboves, sites)
        seen: Any = (own, outer[1])
    else:
        own, outer, seen = raw, None, raw
    found = done.get(seen)
    if found is None:
        resolved = _resolve_walk(own, codes)
        key, frames = _join(resolved, outer[2]) if outer is not None else resolved
        found = done[seen] = (sites.setdefault(key, len(sites)), frames)
    return found


def _shared_walk(walk: tuple, codes: dict[int, Any], aboves: dict[int, tuple[Any, int, tuple]],
                 sites: dict[tuple, int]) -> tuple[Any, int, tuple[tuple, tuple]]:
    """(walk, number of its key, (key, frames)) of the walk above a module call, resolved once per walk object."""
    found = aboves.get(id(walk))
    if found is None or found[0] is not walk:
        if walk and type(walk[0]) is tuple:
            resolved = _join(_resolve_walk(walk[0], codes), _shared_walk(walk[1], codes, aboves, sites)[2])
        else:
            resolved = _resolve_walk(walk, codes)
        # the aboves (and the records) hold each walk alive: an id here never names another walk
        found = aboves[id(walk)] = (walk, sites.setdefault(resolved[0], len(sites)), resolved)
    return found


def _line_numbers(code: Any) -> list[int | None]:
    """Instruction index -> its source line."""
    positions = getattr(code, "co_positions", None)
    if positions is not None:
        return [pos[0] for pos in positions()]
    lines: list[int | None] = [None] * (len(code.co_code) // 2)
    for start, end, line in code.co_lines():
        for i in range(start // 2, end // 2):
            lines[i] = line
    return lines
