"""Data dependences that exist only to steer XLA's scheduler.

XLA's CPU scheduler starts work as early as its operands allow. Inside a deep
stack, whatever a layer computes from its key and weights alone (dropout
masks, biases broadcast to the activations' shape, zero buffers for a loop's
carry) would then be computed for every layer at the start of the pass and
held until the layer runs: memory that grows with depth.
``jax.lax.optimization_barrier`` does not prevent it, since the CPU pipeline
removes barriers before scheduling. Tying such values to the layer's inputs,
which changes nothing in value, makes the work start only when the layer does.

>>> import jax.numpy as jnp
>>> zero = zero_from([jnp.array([1.5, 2.0])])
>>> int(zero), tied(jnp.ones(2), zero).tolist()
(0, [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["zero_from", "tied"]


def zero_from(arrays: Iterable[Any]) -> Any:
    """A ``uint32`` zero that XLA can only compute once the first float array exists.

    ``min(bits, 0)`` of an unsigned number is always 0, but XLA does not fold it
    away, so the data dependence is real. None when no array is a non-empty float.
    """
    for x in arrays:
        if x is not None and jnp.size(x) and jnp.issubdtype(jnp.result_type(x), jnp.floating):
            first = jnp.ravel(x)[0].astype(jnp.float32)
            return jnp.minimum(jax.lax.bitcast_convert_type(first, jnp.uint32), jnp.uint32(0))
    return None


def tied(tree: Any, zero: Any) -> Any:
    """``tree`` unchanged in value, but made (for XLA) to depend on ``zero``.

    Arrays and PRNG keys are tied; None, non-arrays and float0 leaves pass
    through. A ``zero`` of None returns ``tree`` itself. A leaf that is a
    constant zero is not tied (XLA folds ``where(keep, 0, 0)``): use
    ``jnp.where(zero == 0, leaf, 1)`` for it.
    """
    if zero is None:
        return tree
    keep = zero == 0

    def one(v: Any) -> Any:
        if v is None or not hasattr(v, "dtype") or v.dtype == jax.dtypes.float0:
            return v
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(v)
            return jax.random.wrap_key_data(jnp.where(keep, data, jnp.zeros_like(data)),
                                            impl=jax.random.key_impl(v))
        return jnp.where(keep, v, jnp.zeros_like(v))

    return jax.tree_util.tree_map(one, tree)
