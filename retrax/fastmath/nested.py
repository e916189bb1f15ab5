"""Trax's helpers over nested lists, tuples, dicts and namedtuples of values.

``nested_map(f, obj)`` applies ``f`` to the leaves (any value that is not a
list, tuple or dict; namedtuples keep their type), ``nested_zip`` turns a list
of equally shaped structures into one structure of tuples, ``nested_stack``
stacks the arrays at each position.

>>> from retrax import fastmath
>>> fastmath.nested_map(lambda x: x + 1, {'a': ([0, 1], 2)})
{'a': ([1, 2], 3)}
>>> fastmath.nested_zip([(1, [2]), (3, [4])])
[(1, 3), [(2, 4)]]
>>> [a.tolist() for a in fastmath.nested_stack([{'w': [1, 2]}, {'w': [3, 4]}])['w']]
[[1, 3], [2, 4]]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as onp

__all__ = ["nested_map", "nested_map_multiarg", "nested_zip", "nested_stack"]

_CONTAINERS = (list, tuple, dict)


def _is_namedtuple(x: Any) -> bool:
    return isinstance(x, tuple) and hasattr(x, "_fields")


def _children(obj: Any) -> list[Any]:
    return list(obj.values()) if isinstance(obj, dict) else list(obj)


def _leaves(obj: Any) -> list[Any]:
    if not isinstance(obj, _CONTAINERS):
        return [obj]
    return [leaf for child in _children(obj) for leaf in _leaves(child)]


def _at_level(obj: Any, level: int) -> bool:
    """Whether ``obj`` is ``level`` containers above its leaves (0: a leaf)."""
    leaf = not isinstance(obj, _CONTAINERS)
    if level == 0 or leaf:
        return (level == 0) == leaf
    children = _children(obj)
    return bool(children) and all(_at_level(c, level - 1) for c in children)


def _only_nones(obj: Any) -> bool:
    leaves = _leaves(obj)
    return bool(leaves) and all(x is None for x in leaves)


def _rebuild(like: Any, children: list[Any]) -> Any:
    if isinstance(like, dict):
        return dict(zip(like.keys(), children))
    if _is_namedtuple(like):
        return type(like)(*children)
    return type(like)(children) if isinstance(like, list) else tuple(children)


def nested_map(f: Callable[[Any], Any], obj: Any, level: int = 0,
               ignore_nones: bool = True) -> Any:
    """``obj`` with each part ``level`` containers above the leaves replaced by ``f(part)``.

    With ``ignore_nones`` a part made only of Nones stays None without calling ``f``.
    """
    if _at_level(obj, level):
        return None if ignore_nones and _only_nones(obj) else f(obj)
    if not isinstance(obj, _CONTAINERS):
        raise ValueError(f"nested_map: {obj!r} is a leaf, below level {level}.")
    return _rebuild(obj, [nested_map(f, c, level, ignore_nones) for c in _children(obj)])


def nested_map_multiarg(f: Callable[..., Any], *objs: Any, ignore_nones: bool = True) -> Any:
    """``f`` applied to the leaves of equally shaped ``objs`` taken together."""
    first = objs[0]
    if isinstance(first, dict):
        return {k: nested_map_multiarg(f, *[o[k] for o in objs], ignore_nones=ignore_nones)
                for k in first}
    if isinstance(first, (list, tuple)):
        parts = [nested_map_multiarg(f, *[o[i] for o in objs], ignore_nones=ignore_nones)
                 for i in range(len(first))]
        return parts if isinstance(first, list) else tuple(parts)
    if ignore_nones and _only_nones(list(objs)):
        return None
    return f(*objs)


def nested_zip(objs: Any) -> Any:
    """One structure like each of ``objs`` whose leaves are tuples of theirs."""
    if not isinstance(objs, (list, tuple)) or not objs:
        raise ValueError(f"nested_zip needs a non-empty list of structures; got {objs!r}.")
    if _at_level(objs, 1):
        return tuple(objs)
    first = objs[0]
    if isinstance(first, dict):
        return {k: nested_zip([o[k] for o in objs]) for k in first}
    if isinstance(first, (list, tuple)):
        # As in Trax, plain tuples come back as lists; namedtuples keep their type.
        zipped = [nested_zip([o[i] for o in objs]) for i in range(len(first))]
        return type(first)(*zipped) if _is_namedtuple(first) else zipped
    raise ValueError(f"nested_zip: cannot zip the leaves {objs!r} with structures.")


def nested_stack(objs: Any, axis: int = 0, np_module: Any = onp) -> Any:
    """One structure like each of ``objs`` whose leaves are their values stacked on ``axis``."""
    return nested_map(lambda xs: np_module.stack(xs, axis=axis), nested_zip(objs), level=1)
