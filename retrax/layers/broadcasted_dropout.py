"""``apply_broadcasted_dropout``: dropout with one mask shared by every row.

Trax 1.4.1 exposes it as ``trax.layers.apply_broadcasted_dropout`` (it comes
from the LSH attention code): a function, not a layer. The mask has one
value per feature (the last axis) and is broadcast over all other axes, so a
whole feature is kept or dropped everywhere; kept values are scaled by
``1 / (1 - dropout_rate)``. For a layer with a mask shared along chosen axes
use ``tl.Dropout(rate, shared_axes=...)``.

>>> import numpy as np
>>> from retrax import layers as tl
>>> from retrax.fastmath import random
>>> y = tl.apply_broadcasted_dropout(np.ones((4, 6), np.float32), 0.5, random.get_prng(0))
>>> bool((y == y[0]).all())   # every row has the same mask
True
>>> sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [0.0], [2.0])
True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from retrax.fastmath import random as fastmath_random

__all__ = ["apply_broadcasted_dropout"]


def apply_broadcasted_dropout(vecs: Any, dropout_rate: float, rng: Any) -> Any:
    """Drops whole features (last axis) of ``vecs`` with probability ``dropout_rate``.

    ``dropout_rate`` is a Python number in ``[0, 1)``; with 0 ``vecs`` comes
    back unchanged and ``rng`` may be None. Otherwise ``rng`` is a PRNG key:
    the same key gives the same mask.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.apply_broadcasted_dropout(np.array([[1.0, 2.0]]), 0.0, None).tolist()
    [[1.0, 2.0]]
    """
    if isinstance(dropout_rate, jax.core.Tracer):
        raise TypeError(
            "apply_broadcasted_dropout: dropout_rate must be a Python number (it decides "
            "whether to draw a mask), not a traced value. Pass it as a static argument."
        )
    rate = float(dropout_rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"apply_broadcasted_dropout: dropout_rate must be in [0, 1); got {dropout_rate!r}."
        )
    if rate == 0.0:
        return vecs
    if rng is None:
        raise ValueError(
            f"apply_broadcasted_dropout: dropout_rate={rate} needs an rng (a PRNG key, e.g. "
            f"trax.fastmath.random.get_prng(0)); got None."
        )
    vecs = jnp.asarray(vecs)
    if vecs.ndim < 1:
        raise ValueError(
            "apply_broadcasted_dropout: vecs needs a last (features) axis to draw the mask "
            "over; got a scalar."
        )
    keep = fastmath_random.hash_bernoulli(rng, 1.0 - rate, (vecs.shape[-1],))
    out = jnp.where(keep, vecs / (1.0 - rate), 0.0)
    # Floats keep their dtype; integers scaled by 1 / (1 - rate) become floats (as in Trax).
    return out.astype(vecs.dtype) if jnp.issubdtype(vecs.dtype, jnp.floating) else out
