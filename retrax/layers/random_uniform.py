"""RandomUniform: a layer with no inputs that draws uniform random values (0 -> 1).

It draws from the key the layer is given for the call (``rng`` of
``pure_fn``, the training step's key, or the layer's own key when called as
``layer(())``), so the same key gives the same values and a new key new ones.

>>> import numpy as np
>>> from retrax import layers as tl
>>> from retrax.fastmath import random
>>> noise = tl.RandomUniform(-1.0, 1.0, shape=(3,))
>>> _ = noise.init(())
>>> a, _ = noise.pure_fn((), (), (), random.get_prng(7))
>>> b, _ = noise.pure_fn((), (), (), random.get_prng(7))
>>> a.shape, bool((a == b).all()), bool(((-1.0 <= a) & (a < 1.0)).all())
((3,), True, True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.layers.base import Layer

__all__ = ["RandomUniform"]


class RandomUniform(Layer):
    """Outputs values drawn uniformly from ``[min_val, max_val)``; 0 -> 1.

    ``shape`` is the output's shape (values drawn independently) and
    ``dtype`` a floating dtype. No weights and no state. It needs a key: under
    ``pure_fn`` pass ``rng=``; a call without one raises (rather than
    returning the same "random" values every time).

    ``sync`` is Trax's flag for drawing the same values on every device; it
    is accepted and changes nothing, since retrax's data parallelism runs one
    program over all devices with one key, so the values are the same
    everywhere anyway.

    >>> from retrax import layers as tl
    >>> tl.RandomUniform(shape=(2, 3))
    RandomUniform_in0
    >>> layer = tl.RandomUniform(1.0, 2.0, shape=(1000,))
    >>> _ = layer.init(())
    >>> y = layer(())
    >>> y.shape, bool(y.min() >= 1.0), bool(y.max() < 2.0)
    ((1000,), True, True)
    """

    def __init__(self, min_val: float = 0.0, max_val: float = 1.0, shape: tuple = (),
                 dtype: Any = jnp.float32, sync: bool = False):
        try:
            shape = tuple(int(d) for d in shape)
        except TypeError:
            raise ValueError(
                f"RandomUniform: shape must be a tuple of ints; got {shape!r}. "
                f"Write e.g. shape=(2, 3), or shape=() for a scalar."
            ) from None
        if any(d < 0 for d in shape):
            raise ValueError(f"RandomUniform: shape must not have negative sizes; got {shape}.")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(
                f"RandomUniform: dtype must be a floating dtype (uniform values in "
                f"[min_val, max_val)); got {np.dtype(dtype).name}. Use jnp.float32."
            )
        if not float(min_val) < float(max_val):
            raise ValueError(
                f"RandomUniform: min_val must be smaller than max_val; got min_val={min_val!r}, "
                f"max_val={max_val!r}."
            )
        super().__init__(n_in=0, n_out=1)
        self._min_val = min_val
        self._max_val = max_val
        self._shape = shape
        self._dtype = dtype
        self._sync = sync

    def forward(self, xs):
        del xs  # No inputs.
        if not self.has_rng:
            raise ValueError(
                f"{self.name} draws random values, so it needs a key; pass rng=... to "
                f"pure_fn (e.g. trax.fastmath.random.get_prng(0))."
            )
        return jax.random.uniform(self.rng, self._shape, self._dtype, self._min_val,
                                  self._max_val)
