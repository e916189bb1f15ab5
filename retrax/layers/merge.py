"""Layers that merge stack items into one, or take one item apart.

Arithmetic on the top items (``Add``, ``SubtractTop``, ``Multiply``, ``Gate``),
``Concatenate`` and its inverse ``Split``, and ``FlattenList``. None of them
has weights; each is a ``Fn``/``PureLayer`` with a fixed arity. Re-exported by
``retrax.layers.combinators`` and as ``tl.X``.

>>> import numpy as np
>>> from retrax import layers as tl
>>> tl.Serial(tl.Split(), tl.Add())(np.array([1.0, 2.0, 3.0, 4.0])).tolist()
[4.0, 6.0]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from retrax.layers.base import Fn, Layer, PureLayer
from retrax.layers.stack import as_stack

__all__ = [
    "Add",
    "SubtractTop",
    "Multiply",
    "Gate",
    "Concatenate",
    "Split",
    "FlattenList",
]


def Add() -> Layer:  # noqa: N802
    """``(a, b) -> a + b``; 2 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Add()((np.array([1.0, 2.0]), np.array([10.0, 20.0]))).tolist()
    [11.0, 22.0]
    """
    return Fn("Add", lambda x0, x1: x0 + x1)


def SubtractTop() -> Layer:  # noqa: N802
    """``(a, b) -> b - a`` (subtracts the top item from the one below); 2 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.SubtractTop()((np.array(2.0), np.array(10.0))).item()
    8.0
    """
    return Fn("SubtractTop", lambda x0, x1: x1 - x0)


def Multiply() -> Layer:  # noqa: N802
    """``(a, b) -> a * b``; 2 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Multiply()((np.array(2.0), np.array(3.0))).item()
    6.0
    """
    return Fn("Multiply", lambda x0, x1: x0 * x1)


def Gate() -> Layer:  # noqa: N802
    """``(m, g, c) -> g * m + (1 - g) * c`` (a highway gate); 3 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Gate()((np.array(2.0), np.array(0.25), np.array(6.0))).item()
    5.0
    """
    return Fn("Gate", lambda m, g, c: g * m + (1.0 - g) * c)


def _check_n_items(owner: str, n_items: int) -> None:
    if not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"{owner}: n_items must be a positive int; got {n_items!r}.")


def Concatenate(n_items: int = 2, axis: int = -1) -> Layer:  # noqa: N802
    """Concatenates the top ``n_items`` arrays along ``axis``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Concatenate()((np.ones((1, 2)), np.zeros((1, 1)))).tolist()
    [[1.0, 1.0, 0.0]]
    """
    _check_n_items("Concatenate", n_items)
    name = "Concatenate" if axis == -1 else f"Concatenate_axis{axis}"

    def concat(xs: Any) -> Any:
        return jnp.concatenate(as_stack(xs), axis)

    return PureLayer(concat, n_in=n_items, name=name)


def Split(n_items: int = 2, axis: int = -1) -> Layer:  # noqa: N802
    """Splits the top array into ``n_items`` equal parts along ``axis``; 1 -> n_items.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.tolist() for a in tl.Split()(np.array([1.0, 2.0, 3.0, 4.0]))]
    [[1.0, 2.0], [3.0, 4.0]]
    """
    _check_n_items("Split", n_items)

    def split(x: Any) -> Any:
        if x.shape[axis] % n_items:
            raise ValueError(
                f"Split: axis {axis} of size {x.shape[axis]} is not divisible into "
                f"{n_items} equal parts."
            )
        parts = tuple(jnp.split(x, n_items, axis))
        return parts[0] if n_items == 1 else parts

    return PureLayer(split, n_out=n_items, name="Split")


def FlattenList() -> Layer:  # noqa: N802
    """Deep-flattens a nested tuple/list into a flat tuple; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.item() for a in tl.FlattenList()((np.array(1.0), [np.array(2.0)]))]
    [1.0, 2.0]
    """

    def flatten(x: Any) -> Any:
        return tuple(jax.tree_util.tree_leaves(x))

    return PureLayer(flatten, name="FlattenList")
