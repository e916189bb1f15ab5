"""Mixed precision for a Loop's compiled steps: ``Loop(..., compute_dtype='bfloat16')``.

The Loop keeps its *master* weights and optimizer slots in float32. Inside the
train (and eval) step the float weights and the model's float inputs are cast
to the compute dtype, so the model's matmuls and activations run in it; the
model's float outputs are cast back to float32 before the loss and metric
layers (log-softmax, cross-entropy and the weighted means in float32); the
gradient flows back through the casts, so it arrives in float32 and the
optimizer updates the float32 master weights. The model state (BatchNorm
statistics) is neither cast in nor out: new state keeps the old state's dtypes.

bfloat16 has float32's exponent range, so no loss scaling is needed (float16
would need it, and is not offered).

>>> import numpy as np
>>> tree = (np.ones(2, np.float32), np.arange(3), ())
>>> [getattr(x, 'dtype', x) for x in cast_floats(tree, 'bfloat16')]
[dtype(bfloat16), dtype('int64'), ()]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["COMPUTE_DTYPES", "check_compute_dtype", "cast_floats", "like_dtypes"]

COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(value: Any) -> str:
    """``value`` as one of :data:`COMPUTE_DTYPES` (None means ``'float32'``), or a clear error.

    Dtype objects are accepted too (``jnp.bfloat16``, ``np.float32``).

    >>> check_compute_dtype(None), check_compute_dtype(jnp.bfloat16)
    ('float32', 'bfloat16')
    >>> check_compute_dtype('float16')
    Traceback (most recent call last):
    ...
    ValueError: Loop: compute_dtype='float16' is not supported; choose one of 'float32' (the default) or 'bfloat16' (float32 master weights and optimizer slots, forward and backward in bfloat16). float16 would need loss scaling, which retrax does not do.
    """
    if value is None:
        return "float32"
    try:
        name = np.dtype(value).name
    except TypeError:
        name = None
    if name in COMPUTE_DTYPES:
        return name
    raise ValueError(
        f"Loop: compute_dtype={value!r} is not supported; choose one of 'float32' (the default) "
        f"or 'bfloat16' (float32 master weights and optimizer slots, forward and backward in "
        f"bfloat16). float16 would need loss scaling, which retrax does not do."
    )


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with every floating-point array cast to ``dtype`` (other leaves as they are)."""
    dtype = jnp.dtype(dtype)
    return jax.tree_util.tree_map(
        lambda x: x.astype(dtype) if _is_float(x) and x.dtype != dtype else x, tree)


def like_dtypes(tree: Any, reference: Any) -> Any:
    """``tree`` with each array cast to the dtype of the matching array of ``reference``.

    Used for the model state: a state computed from bfloat16 activations goes
    back to the dtypes it came in with (a step's outputs must match its inputs).
    """
    if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(reference):
        return tree
    return jax.tree_util.tree_map(
        lambda x, r: x.astype(r.dtype) if hasattr(x, "dtype") and x.dtype != r.dtype else x,
        tree, reference)
