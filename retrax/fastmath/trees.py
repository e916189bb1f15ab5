"""Trax's own tree flattening, used for checkpoint weight order.

Unlike ``jax.tree_util``, it recurses into lists, tuples and dict *values* in
insertion order and treats everything else (arrays, ``None``) as a leaf; empty
tuples vanish. That is the order of ``flat_weights`` in Trax checkpoints.

>>> tree_flatten(((1, ()), [2, {'a': 3}], None))
[1, 2, 3, None]
>>> tree_unflatten([7, 8, 9, 0], ((1, ()), [2, {'a': 3}], None))[0]
((7, ()), [8, {'a': 9}], 0)
"""

from __future__ import annotations

from typing import Any

__all__ = ["tree_flatten", "tree_leaves", "tree_unflatten"]


def tree_flatten(tree: Any) -> list[Any]:
    """Depth-first leaves of ``tree`` (lists, tuples and dict values recurse)."""
    out: list[Any] = []
    _flatten_into(tree, out)
    return out


def _flatten_into(tree: Any, out: list[Any]) -> None:
    if isinstance(tree, (list, tuple)):
        for sub in tree:
            _flatten_into(sub, out)
    elif isinstance(tree, dict):
        for sub in tree.values():
            _flatten_into(sub, out)
    else:
        out.append(tree)


tree_leaves = tree_flatten


def tree_unflatten(flat: list[Any], tree: Any, copy_from_tree: list[Any] | None = None):
    """Fills the structure of ``tree`` with leaves from ``flat``.

    Returns ``(new_tree, rest_of_flat)``. Subtrees equal to an entry of
    ``copy_from_tree`` are copied unchanged (Trax uses this for empty tuples and
    cache markers).
    """
    flat = list(flat)
    new_tree = _unflatten(flat, tree, copy_from_tree or [])
    return new_tree, flat


def _unflatten(flat: list[Any], tree: Any, copy_from: list[Any]) -> Any:
    for c in copy_from:
        if _same(tree, c):
            return tree
    if isinstance(tree, (list, tuple)):
        items = [_unflatten(flat, sub, copy_from) for sub in tree]
        return items if isinstance(tree, list) else tuple(items)
    if isinstance(tree, dict):
        return {k: _unflatten(flat, v, copy_from) for k, v in tree.items()}
    if not flat:
        raise ValueError("tree_unflatten: ran out of leaves while filling the tree.")
    return flat.pop(0)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b) or not isinstance(a, (tuple, list, dict)):
        return False
    try:
        return bool(a == b)
    except Exception:  # arrays inside: not a marker
        return False
