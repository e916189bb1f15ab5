"""Weight and state trees: the values ``Layer.init`` returns and ``pure_fn`` takes.

A leaf layer's weights are whatever its ``init_weights_and_state`` assigned
(an array, a tuple of arrays, ``()``); a combinator's are a tuple with one
entry per sublayer. Where a shared layer (the same instance used twice)
occurs again, its entry is a *marker* (``GET_WEIGHTS_FROM_CACHE`` /
``GET_STATE_FROM_CACHE``): its weights are stored once, at the first
occurrence, and the pass context resolves the marker.

Checkpoints store the leaves of these trees in depth-first order (Trax's
order), which ``flatten_weights_and_state`` / ``unflatten_weights_and_state``
produce and consume.

>>> import numpy as np
>>> from retrax.layers import trees
>>> w = (np.ones(2), (trees.GET_WEIGHTS_FROM_CACHE, np.zeros(3)))
>>> [x.shape for x in trees.flatten_weights_and_state(w, ())[0]]
[(2,), (3,)]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from retrax import shapes

__all__ = [
    "EMPTY_WEIGHTS",
    "EMPTY_STATE",
    "GET_WEIGHTS_FROM_CACHE",
    "GET_STATE_FROM_CACHE",
    "is_weights_marker",
    "is_state_marker",
    "flatten_weights_and_state",
    "unflatten_weights_and_state",
    "tree_mismatch",
    "abstract",
    "to_shape_dtype",
    "signature_or_none",
    "to_device",
    "to_list",
    "check_per_sublayer",
    "child_state",
    "assign_child_state",
]

EMPTY_WEIGHTS: tuple = ()
EMPTY_STATE: tuple = ()
# Placed in a combinator's weight/state tuple where a shared layer occurs again:
# its weights are stored once, at the first occurrence.
GET_WEIGHTS_FROM_CACHE = {"__marker_for_cached_weights_": ()}
GET_STATE_FROM_CACHE = {"__marker_for_cached_state_": ()}


def is_weights_marker(x: Any) -> bool:
    """True if ``x`` is ``GET_WEIGHTS_FROM_CACHE`` (a shared layer's later occurrence)."""
    return isinstance(x, dict) and x == GET_WEIGHTS_FROM_CACHE


def is_state_marker(x: Any) -> bool:
    """True if ``x`` is ``GET_STATE_FROM_CACHE`` (a shared layer's later occurrence)."""
    return isinstance(x, dict) and x == GET_STATE_FROM_CACHE


def _is_marker(x: Any) -> bool:
    return is_weights_marker(x) or is_state_marker(x)


def _leaves(tree: Any) -> Iterator[Any]:
    if _is_marker(tree):
        return
    if isinstance(tree, (tuple, list)):
        for t in tree:
            yield from _leaves(t)
    elif isinstance(tree, dict):
        for t in tree.values():
            yield from _leaves(t)
    else:
        yield tree


def flatten_weights_and_state(weights: Any, state: Any) -> tuple[list[Any], list[Any]]:
    """Depth-first leaves of the weight and state trees (Trax checkpoint order)."""
    return list(_leaves(weights)), list(_leaves(state))


def unflatten_weights_and_state(flat_weights: Any, flat_state: Any, weights_and_state_signature: Any,
                                weights_only: bool = False) -> tuple[Any, Any]:
    """Rebuilds the trees of ``weights_and_state_signature`` from flat lists."""
    w_sig, s_sig = weights_and_state_signature
    weights = _fill(list(flat_weights), w_sig, "weights")
    state = None if weights_only else _fill(list(flat_state), s_sig, "state")
    return weights, state


def _fill(flat: list[Any], tree: Any, what: str) -> Any:
    pos = [0]

    def rec(t: Any) -> Any:
        if _is_marker(t):
            return t
        if isinstance(t, (tuple, list)):
            return type(t)(rec(x) for x in t)
        if isinstance(t, dict):
            return {k: rec(v) for k, v in t.items()}
        if pos[0] >= len(flat):
            raise ValueError(f"Not enough {what} arrays: the model needs more than {len(flat)}.")
        x = flat[pos[0]]
        pos[0] += 1
        return x

    out = rec(tree)
    if pos[0] != len(flat):
        raise ValueError(f"Too many {what} arrays: the model needs {pos[0]}, got {len(flat)}.")
    return out


def tree_mismatch(expected: Any, got: Any, path: str = "") -> str | None:
    """Describes the first difference in structure or shape, or returns None.

    >>> import numpy as np
    >>> tree_mismatch((np.ones(2),), (np.ones(3),))
    'at [0] expected shape (2,), got (3,)'
    """
    if _is_marker(expected):
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"at {path or 'top'} expected a tuple of {len(expected)}, got {type(got).__name__}"
        if len(expected) != len(got):
            return f"at {path or 'top'} expected {len(expected)} entries, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            p = tree_mismatch(e, g, f"{path}[{i}]")
            if p:
                return p
        return None
    if isinstance(expected, dict):
        return None
    e_shape = getattr(expected, "shape", None)
    if e_shape is None:
        return None
    g_shape = getattr(got, "shape", None)
    if g_shape is None:
        return f"at {path or 'top'} expected an array of shape {tuple(e_shape)}, got {type(got).__name__}"
    if tuple(e_shape) != tuple(g_shape):
        return f"at {path or 'top'} expected shape {tuple(e_shape)}, got {tuple(g_shape)}"
    return None


def abstract(sig: Any) -> Any:
    """``ShapeDtype``\\s (or arrays) to ``jax.ShapeDtypeStruct``\\s for ``jax.eval_shape``."""
    if isinstance(sig, shapes.ShapeDtype):
        return jax.ShapeDtypeStruct(sig.shape, np.dtype(sig.dtype))
    if isinstance(sig, (tuple, list)):
        return type(sig)(abstract(s) for s in sig)
    if hasattr(sig, "shape") and hasattr(sig, "dtype"):
        return jax.ShapeDtypeStruct(tuple(sig.shape), sig.dtype)
    return sig


def to_shape_dtype(tree: Any) -> Any:
    """Every array-like leaf of ``tree`` (a ``jax.ShapeDtypeStruct`` too) as a ``ShapeDtype``."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(to_shape_dtype(t) for t in tree)
    if isinstance(tree, dict):
        return {k: to_shape_dtype(v) for k, v in tree.items()}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return shapes.ShapeDtype(tuple(tree.shape), np.dtype(tree.dtype))
    return tree


def signature_or_none(x: Any) -> Any:
    """The ``ShapeDtype`` (tree) of ``x``; None for None, a type name for a non-array."""
    if x is None:
        return None
    if isinstance(x, (tuple, list)):
        return type(x)(signature_or_none(v) for v in x)
    if isinstance(x, shapes.ShapeDtype):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return shapes.ShapeDtype(tuple(x.shape), np.dtype(x.dtype))
    return type(x).__name__


def to_device(tree: Any) -> Any:
    """``tree`` with its NumPy leaves moved to the device in one ``jax.device_put``.

    Tuples, lists, dicts and every other leaf (device arrays, cache markers)
    stay as they are. Unlike ``jnp.asarray`` per leaf, which compiles a small
    program for each new shape, a transfer compiles nothing. ``Layer.init``
    stores what initializers return (NumPy arrays, often) through it.

    >>> w, (s,) = to_device((np.ones(2, np.float32), (3,)))
    >>> type(w).__name__, w.tolist(), s
    ('ArrayImpl', [1.0, 1.0], 3)
    """
    found: list[np.ndarray] = []

    def collect(t: Any) -> None:
        if _is_marker(t):
            return
        if isinstance(t, (tuple, list)):
            for x in t:
                collect(x)
        elif isinstance(t, dict):
            for x in t.values():
                collect(x)
        elif isinstance(t, np.ndarray):
            found.append(t)

    collect(tree)
    if not found:
        return tree
    moved = iter(jax.device_put(found))

    def rebuild(t: Any) -> Any:
        if _is_marker(t):
            return t
        if isinstance(t, tuple):
            return tuple(rebuild(x) for x in t)
        if isinstance(t, list):
            return [rebuild(x) for x in t]
        if isinstance(t, dict):
            return {k: rebuild(v) for k, v in t.items()}
        return next(moved) if isinstance(t, np.ndarray) else t

    return rebuild(tree)


def to_list(outputs: Any) -> Any:
    """Converts an array or a tuple of arrays to nested Python lists."""
    if isinstance(outputs, (tuple, list)):
        return [to_list(o) for o in outputs]
    return np.asarray(outputs).tolist()


def check_per_sublayer(layer: Any, tree: Any, what: str) -> None:
    """Raises unless ``tree`` (``what``: ``'weights'`` or ``'state'``) has one entry per sublayer."""
    n = len(layer.sublayers)
    if isinstance(tree, (tuple, list)) and len(tree) == n:
        return
    got = len(tree) if isinstance(tree, (tuple, list)) else type(tree).__name__
    raise ValueError(
        f"Number of {what.rstrip('s')} elements ({got}) does not equal the number of "
        f"sublayers ({n}) in {layer.name_with_arity}. Pass a tuple with one entry per "
        f"sublayer, e.g. the {what} returned by init()."
    )


def child_state(layer: Any, seen: set[int]) -> Any:
    """``layer.state_tree(seen)``, or ``GET_STATE_FROM_CACHE`` if ``layer`` was seen.

    A combinator's ``state_tree`` calls it for each child, so that a layer
    used twice keeps its state at its first occurrence only.
    """
    if id(layer) in seen:
        return GET_STATE_FROM_CACHE
    seen.add(id(layer))
    return layer.state_tree(seen)


def assign_child_state(layer: Any, state: Any, seen: set[int]) -> None:
    """``layer.assign_state_tree(state, seen)``, skipped for markers and seen layers.

    The inverse of ``child_state``: a combinator's ``assign_state_tree`` calls
    it for each child.
    """
    if is_state_marker(state) or id(layer) in seen:
        return
    seen.add(id(layer))
    layer.assign_state_tree(state, seen)
