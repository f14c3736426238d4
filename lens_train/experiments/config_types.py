"""Check a composed config's values against the signatures its ``_target_`` entries name.

Hydra passes a config value to the class or function its ``_target_`` names as is, so
``trainer.max_epochs=abc`` would reach ``lightning.Trainer`` as the string ``'abc'`` and fail
minutes later, deep inside the fit. :func:`check_config_types` walks the config before anything
is built and compares each value with the annotation of the parameter it fills. Parameters
without an annotation, annotations that cannot be resolved and types it does not know (a
class, ``Any``, a callable) are not checked: the check only refuses what cannot work.
"""

from __future__ import annotations

import collections.abc as abc
import inspect
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ..errors import ConfigError

_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
          list: "a list", tuple: "a list", dict: "a mapping"}
_PLURALS = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}
_EXAMPLES = {int: "3", float: "0.1", bool: "true", str: "text", list: "[1,2]", tuple: "[1,2]", dict: "{a: 1}"}


def check_config_types(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the first value whose type its ``_target_`` refuses.

    Example:
        >>> from omegaconf import OmegaConf
        >>> cfg = OmegaConf.create({"trainer": {"_target_": "lightning.pytorch.Trainer", "max_epochs": "abc"}})
        >>> check_config_types(cfg)
        Traceback (most recent call last):
        ...
        lens_train.errors.ConfigError: trainer.max_epochs: expected an integer, got 'abc'. Example: trainer.max_epochs=3
        >>> check_config_types(OmegaConf.create({"trainer": {"_target_": "lightning.pytorch.Trainer", "max_epochs": 3}}))
    """
    for key, value, annotation in _checked_values(cfg):
        problem = mismatch(value, annotation)
        if problem is not None:
            example = _EXAMPLES.get(_first_type(annotation))
            fix = f". Example: {key}={example}" if example else ""
            raise ConfigError(f"{key}: expected {problem}, got {value!r}{fix}")


def _checked_values(node: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(node, DictConfig):
        target = node.get("_target_") if "_target_" in node else None
        hints = parameter_types(target) if isinstance(target, str) else {}
        for key in node.keys():
            key = str(key)
            child = _value(node, key)
            where = f"{path}.{key}" if path else key
            if key in hints and not key.startswith("_") and child is not _UNREADABLE:
                yield where, _plain(child), hints[key]
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _checked_values(child, where)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = _value(node, i)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _checked_values(child, f"{path}.{i}")


_UNREADABLE = object()


def _value(node: DictConfig | ListConfig, key: str | int) -> Any:
    # A missing value (???) or an interpolation that cannot resolve yet is Hydra's to report.
    try:
        return node[key]
    except Exception:
        return _UNREADABLE


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:
            return OmegaConf.to_container(value, resolve=False)
    return value


def parameter_types(target: str) -> dict[str, Any]:
    """``{parameter: annotation}`` of the callable ``target`` names (``{}`` when it cannot be found).

    Example:
        >>> parameter_types("lightning.pytorch.callbacks.EarlyStopping")["patience"]
        <class 'int'>
    """
    from hydra.utils import _locate

    try:
        obj = _locate(target)
    except Exception:
        return {}  # Hydra reports a target it cannot import
    func = obj.__init__ if isinstance(obj, type) else obj
    try:
        hints = typing.get_type_hints(func)
    except Exception:
        hints = _hints_one_by_one(func)
    try:
        names = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    return {name: hints[name] for name in names if name in hints and name != "self"}


def _hints_one_by_one(func: Callable) -> dict[str, Any]:
    # get_type_hints fails as a whole on one unresolvable name; keep the others.
    found = {}
    namespace = getattr(func, "__globals__", {})
    for name, annotation in getattr(func, "__annotations__", {}).items():
        if not isinstance(annotation, str):
            found[name] = annotation
            continue
        probe = types.FunctionType((lambda: None).__code__, namespace)  # resolved by typing, as a lone annotation
        probe.__annotations__ = {name: annotation}
        try:
            found[name] = typing.get_type_hints(probe)[name]
        except Exception:
            continue
    return found


def mismatch(value: Any, annotation: Any) -> str | None:
    """What ``annotation`` expects, when ``value`` (a plain config value) cannot be one; else ``None``.

    Example:
        >>> mismatch("abc", int | None), mismatch(3, float), mismatch([1, "a"], list[int])
        ('an integer', None, 'a list of integers')
    """
    if isinstance(value, Mapping) and "_target_" in value:
        return None  # instantiated into whatever the target returns
    origin = typing.get_origin(annotation)
    if annotation is Any or isinstance(annotation, typing.TypeVar):
        return None
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if any(mismatch(value, option) is None for option in options):
            return None
        return _describe(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)
    if origin is not None:
        return _generic_mismatch(value, annotation, origin)
    return _simple_mismatch(value, annotation)


def _simple_mismatch(value: Any, annotation: Any) -> str | None:
    if annotation is type(None):
        return None if value is None else "null"
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    if annotation in (os.PathLike, typing.Text) or getattr(annotation, "__name__", "") in ("Path", "PurePath"):
        return None if isinstance(value, str) else "a path"
    return None  # a class or protocol the config cannot hold literally: left to the target


def _generic_mismatch(value: Any, annotation: Any, origin: Any) -> str | None:
    args = typing.get_args(annotation)
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence, set, frozenset):
        if not isinstance(value, list):
            return None if origin is abc.Sequence and isinstance(value, str) else _describe(annotation)
        item = args[0] if args and not (origin is tuple and (len(args) != 2 or args[1] is not Ellipsis)) else Any
        if any(mismatch(v, item) is not None for v in value):
            return _describe(annotation)
        return None
    if origin in (dict, abc.Mapping, abc.MutableMapping):
        return None if isinstance(value, dict) else _describe(annotation)
    return None


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        # "an integer", not "an integer or null": null is rarely what the user meant to type.
        options = [a for a in typing.get_args(annotation) if a is not type(None)] or [type(None)]
        return " or ".join(dict.fromkeys(_describe(a) for a in options))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    if origin in (list, tuple, abc.Sequence, abc.MutableSequence, set, frozenset):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        item = _PLURALS.get(args[0], "values of one type") if len(args) == 1 and args[0] is not Any else ""
        return "a list" + (f" of {item}" if item else "")
    if origin in (dict, abc.Mapping, abc.MutableMapping):
        return "a mapping"
    return _NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _first_type(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _first_type(options[0]) if options else None
    return origin or annotation
