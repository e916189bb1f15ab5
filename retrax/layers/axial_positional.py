"""Axial positional encoding (Trax's ``AxialPositionalEncoding``), for long sequences.

Positions ``0 .. prod(shape) - 1`` are laid out on a grid of ``shape``; axis
``i`` has its own table of ``shape[i]`` embeddings of width ``d_embs[i]``, and
a position's encoding is the concatenation of its grid coordinates'
embeddings (width ``sum(d_embs)``, which must be ``d_model``). The tables
hold ``sum(shape[i] * d_embs[i])`` numbers instead of ``prod(shape) *
d_model``.

Weights (Trax's layout): one array per axis, ``(1, 1, .., shape[i], .., 1,
d_embs[i])``, initialized by ``kernel_initializer`` (normal, stddev 1).

>>> import numpy as np
>>> from retrax import shapes
>>> pe = AxialPositionalEncoding(shape=(4, 2), d_embs=(3, 1), mode='eval')
>>> w, _ = pe.init(shapes.ShapeDtype((1, 8, 4)))
>>> [a.shape for a in w]
[(1, 4, 1, 3), (1, 1, 2, 1)]
>>> y = np.asarray(pe(np.zeros((1, 8, 4), np.float32)))
>>> bool(np.all(y[0, 5, :3] == w[0][0, 2, 0]) and y[0, 5, 3] == w[1][0, 0, 1, 0])
True
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers import initializers as init
from retrax.layers.attention_checks import check_dropout, dropout_rng, static_int
from retrax.layers.base import Layer, init_rng_split
from retrax.layers.core import check_mode

__all__ = ["AxialPositionalEncoding"]


class AxialPositionalEncoding(Layer):
    """Adds axial position embeddings: ``(B, L, D) -> (B, L, D)``, ``L <= prod(shape)``.

    - ``'train'``: with ``dropout > 0`` the embeddings ``(B, *shape, D)`` are
      dropped with a mask broadcast along ``dropout_broadcast_dims`` of that
      shape (``ReformerLM`` broadcasts over the grid axes).
    - ``'eval'``: adds the encodings of positions ``0 .. L-1``.
    - ``'predict'``: the state is the next position; a call of length ``L``
      adds positions ``state .. state+L-1`` and advances the state.

    Sequences shorter than ``prod(shape)`` take the first positions (Trax
    required ``L == prod(shape)`` outside ``'predict'``).
    """

    def __init__(self, shape: Any = (64, 64, 3), d_embs: Any = (384, 384, 256),
                 kernel_initializer: Any = init.RandomNormalInitializer(1.0),
                 dropout: float = 0.0, dropout_broadcast_dims: Any = (), mode: str = "train"):
        name = type(self).__name__
        super().__init__(n_in=1, n_out=1)
        self._mode = check_mode(name, mode)
        shape, d_embs = tuple(shape), tuple(d_embs)
        if len(shape) != len(d_embs) or not shape or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape + d_embs):
            raise ValueError(
                f"{name}: shape and d_embs must be equally long tuples of positive ints (one "
                f"grid size and one embedding width per axis); got {shape} and {d_embs}.")
        self._shape, self._d_embs = shape, d_embs
        self._kernel_initializer = kernel_initializer
        self._dropout = check_dropout(name, dropout)
        self._dropout_broadcast_dims = tuple(dropout_broadcast_dims)

    def init_weights_and_state(self, input_signature):
        d_model = int(input_signature.shape[-1])
        if sum(self._d_embs) != d_model:
            raise ValueError(
                f"{self.name}: the axial widths d_embs={self._d_embs} add up to "
                f"{sum(self._d_embs)}, but the input has d_model={d_model}; choose d_embs "
                f"that sum to {d_model}.")
        weights = []
        for axis, (rng, d_emb) in enumerate(zip(init_rng_split(self.rng, len(self._d_embs)),
                                                self._d_embs)):
            table_shape = [1] * len(self._shape)
            table_shape[axis] = self._shape[axis]
            weights.append(self._kernel_initializer((1, *table_shape, d_emb), rng))
        self.weights = tuple(jnp.asarray(w) for w in weights)
        if self._mode == "predict":
            self.state = jnp.zeros((), jnp.int32)

    def _grid(self, batch: int) -> Any:
        """The encodings ``(batch, *shape, D)``."""
        return jnp.concatenate(
            [jnp.broadcast_to(w, (batch, *self._shape, w.shape[-1])) for w in self.weights],
            axis=-1)

    def forward(self, x):
        n_positions = math.prod(self._shape)
        if jnp.ndim(x) != 3:
            raise ValueError(f"{self.name}: expected (batch, length, d_model) activations; "
                             f"got shape {tuple(jnp.shape(x))}.")
        length = x.shape[1]
        if length > n_positions:
            raise ValueError(
                f"{self.name}: the input has {length} positions but the axial shape "
                f"{self._shape} covers {n_positions}; pad or cut the sequences to at most "
                f"{n_positions}, or choose a larger pos_axial_shape.")
        grid = self._grid(x.shape[0])
        if self._mode == "predict":
            start = self.state
            known = static_int(start)
            if known is not None and known + length > n_positions:
                raise ValueError(
                    f"{self.name}: decoding past position {n_positions} (the axial shape "
                    f"{self._shape}); choose a larger pos_axial_shape.")
            flat = grid.reshape(x.shape[0], n_positions, -1)
            self.state = start + length
            return x + lax.dynamic_slice_in_dim(flat, start, length, axis=1).astype(x.dtype)
        if self._mode == "train" and self._dropout > 0.0:
            noise_shape = list(grid.shape)
            for dim in self._dropout_broadcast_dims:
                noise_shape[dim] = 1
            keep_prob = 1.0 - self._dropout
            keep = fastmath_random.hash_bernoulli(dropout_rng(self), keep_prob,
                                                  tuple(noise_shape))
            grid = grid * (keep.astype(grid.dtype) / keep_prob)
        flat = grid.reshape(x.shape[0], n_positions, -1)
        return x + flat[:, :length].astype(x.dtype)
