"""Cotangents for hand-written VJPs: what ``jax.vjp`` accepts for a given primal.

>>> import jax, jax.numpy as jnp
>>> ct = cotangent_like((jnp.ones(2), jnp.arange(2)), (None, None))
>>> ct[0].tolist(), ct[1].dtype == jax.dtypes.float0
([0.0, 0.0], True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["is_float", "cotangent_like"]


def is_float(x: Any) -> bool:
    """True when ``x`` has a floating (or complex) dtype: it can carry a gradient."""
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def cotangent_like(primal: Any, ct: Any) -> Any:
    """``ct`` made a valid cotangent for ``primal``, leaf by leaf.

    Integer leaves get float0 zeros; a float leaf whose cotangent is None or
    float0 gets zeros of its own dtype; the others keep their cotangent.
    """

    def one(p: Any, c: Any) -> Any:
        if not is_float(p):
            return np.zeros(jnp.shape(p), jax.dtypes.float0)
        if c is None or jnp.result_type(c) == jax.dtypes.float0:
            return jnp.zeros(jnp.shape(p), jnp.result_type(p))
        return c

    return jax.tree_util.tree_map(one, primal, ct, is_leaf=lambda v: v is None)
