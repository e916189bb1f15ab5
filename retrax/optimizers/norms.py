"""Global L2 norm of a tree of arrays, in few XLA kernels (the optimizers' statistics).

Trax's optimizers report ``gradients_l2`` and ``weights_l2`` every step. Summing
each leaf's squares separately makes one small reduction per leaf (two per
weight array for a ResNet: ~190 kernels of a few microseconds each, whose
launches cost more than their arithmetic). Here the leaves of at most
:data:`SMALL_LEAF` elements (biases, BatchNorm's scales and shifts, small
kernels) are concatenated and reduced once; only the large leaves get a
reduction of their own, where copying them into one buffer would cost more than
a kernel launch. The result is the same sum in another order (float32 rounding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["SMALL_LEAF", "l2_norm", "sum_of_squares"]

# Leaves of at most this many elements share one reduction.
SMALL_LEAF = 4096


def _float(x: Any) -> jax.Array:
    """``x`` in float32 or wider (complex leaves by their modulus)."""
    x = jnp.asarray(x)
    if jnp.iscomplexobj(x):
        x = jnp.abs(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def sum_of_squares(tree: Any) -> jax.Array:
    """Sum of the squares of every element of every leaf of ``tree`` (float32 or wider).

    >>> float(sum_of_squares((jnp.array([3.0]), (), {'a': jnp.array([[4.0, 1.0]])})))
    26.0
    >>> float(sum_of_squares(()))
    0.0
    """
    leaves = [x for x in jax.tree_util.tree_leaves(tree) if jnp.size(x)]
    if not leaves:
        return jnp.float32(0.0)
    floats = [_float(x) for x in leaves]
    small = [x.reshape(-1) for x in floats if x.size <= SMALL_LEAF]
    partials = [jnp.sum(x * x) for x in floats if x.size > SMALL_LEAF]
    if small:
        dtype = jnp.result_type(*small)
        # The leaves are joined before squaring: XLA splits a sum of a concatenation
        # back into one sum per operand, but not a sum of its square.
        together = jnp.concatenate([x.astype(dtype) for x in small])
        partials.append(jnp.sum(together * together))
    if len(partials) == 1:
        return partials[0]
    dtype = jnp.result_type(*partials)
    return jnp.sum(jnp.stack([p.astype(dtype) for p in partials]))


def l2_norm(tree: Any) -> jax.Array:
    """Global L2 norm of all leaves of ``tree`` (computed in float32 or wider).

    >>> float(l2_norm((jnp.array([3.0]), (), (jnp.array([4.0]),))))
    5.0
    """
    return jnp.sqrt(sum_of_squares(tree))
