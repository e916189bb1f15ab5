"""Fixed sine-cosine positional encoding (Trax's ``SinCosPositionalEncoding``), no weights.

Position ``p`` gets ``[sin(p * f_0), .., sin(p * f_{D/2-1}), cos(p * f_0), ..,
cos(p * f_{D/2-1})]`` with ``f_i = 10000 ** (-2i / D)``: the sines in the
first half of the features and the cosines in the second (Trax's layout;
``tl.PositionalEncoding``'s table interleaves them). In ``'train'`` mode the
positions may start at a random offset so that the model learns relative
positions.

>>> import numpy as np
>>> pe = SinCosPositionalEncoding(mode='eval')
>>> np.asarray(pe(np.zeros((1, 2, 4), np.float32))[0], np.float64).round(3).tolist()
[[0.0, 0.0, 1.0, 1.0], [0.841, 0.01, 0.54, 1.0]]
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from retrax.fastmath import random as fastmath_random
from retrax.layers.attention_checks import check_dropout, check_positive_int, dropout_rng
from retrax.layers.base import Layer
from retrax.layers.core import check_mode

__all__ = ["SinCosPositionalEncoding"]


def sincos_table(start: Any, length: int, d_model: int) -> Any:
    """``(1, length, d_model)``: positions ``start .. start+length-1`` (sines, then cosines)."""
    position = (jnp.arange(length)[:, None] + start).astype(jnp.float32)
    freq = jnp.exp(jnp.arange(0, d_model, 2, dtype=jnp.float32) * -(np.log(10000.0) / d_model))
    return jnp.concatenate([jnp.sin(position * freq), jnp.cos(position * freq)], axis=1)[None]


class SinCosPositionalEncoding(Layer):
    """Adds fixed sine-cosine position encodings (1 -> 1): ``(B, L, D) -> (B, L, D)``, D even.

    - ``'train'``: the positions start at a random ``s`` in ``[0,
      add_offset)`` (the same for the batch), except with probability ``1 /
      start_from_zero_one_in`` where they start at 0; with ``dropout > 0``
      the encoding is dropped (and rescaled) with a mask broadcast along
      ``dropout_broadcast_dims`` of ``(1, L, D)``. Needs an rng.
    - ``'eval'``: positions ``0 .. L-1``.
    - ``'predict'``: the state is the next position; a call of length ``L``
      covers ``state .. state+L-1`` and advances it.
    """

    def __init__(self, add_offset: int = 2048, dropout: float = 0.0,
                 dropout_broadcast_dims: Any = (-2,), start_from_zero_one_in: int = 2,
                 mode: str = "train"):
        name = type(self).__name__
        super().__init__(n_in=1, n_out=1)
        self._mode = check_mode(name, mode)
        self._add_offset = check_positive_int(name, "add_offset", add_offset)
        self._dropout = check_dropout(name, dropout)
        self._dropout_broadcast_dims = tuple(dropout_broadcast_dims)
        self._start_from_zero_one_in = check_positive_int(name, "start_from_zero_one_in",
                                                          start_from_zero_one_in)

    def init_weights_and_state(self, input_signature):
        if self._mode == "predict":
            self.state = jnp.zeros((), jnp.int32)

    def forward(self, x):
        name = self.name
        if jnp.ndim(x) != 3 or x.shape[-1] % 2:
            raise ValueError(
                f"{name}: expected (batch, length, d_model) activations with an even d_model "
                f"(half sines, half cosines); got shape {tuple(jnp.shape(x))}. Use an even "
                f"d_model.")
        length, d_model = x.shape[1], x.shape[2]
        if self._mode == "predict":
            if isinstance(self.state, tuple):
                raise ValueError(f"{name} in 'predict' mode has no position in its state; "
                                 f"call init(input_signature) before decoding.")
            start = self.state
            self.state = start + length
            return x + sincos_table(start, length, d_model).astype(x.dtype)
        if self._mode == "eval":
            return x + sincos_table(0, length, d_model).astype(x.dtype)
        rng = dropout_rng(self)
        bits = fastmath_random.hash_bits(fastmath_random.hash_fold_in(rng, 0), (2,))
        offset = (bits[0] % jnp.uint32(self._add_offset)).astype(jnp.int32)
        nonzero = jnp.minimum(1, (bits[1] % jnp.uint32(self._start_from_zero_one_in))
                              .astype(jnp.int32))
        table = sincos_table(offset * nonzero, length, d_model)
        if self._dropout:
            noise_shape = list(table.shape)
            for dim in self._dropout_broadcast_dims:
                noise_shape[dim] = 1
            keep_prob = 1.0 - self._dropout
            keep = fastmath_random.hash_bernoulli(fastmath_random.hash_fold_in(rng, 1),
                                                  keep_prob, tuple(noise_shape))
            table = table * (keep.astype(table.dtype) / keep_prob)
        return x + table.astype(x.dtype)
