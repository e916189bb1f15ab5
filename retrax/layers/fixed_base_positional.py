"""Fixed-base positional encoding (Trax's ``FixedBasePositionalEncoding``).

A position ``p`` is written in each of several number bases (default 11,
13, 14 and 15) with ``n_digits`` digits, least significant first. Digit
``i`` of base ``b`` (an integer ``0 .. b-1``) scales a learned vector of
width ``d_model / n_digits``; the ``n_digits`` scaled vectors side by side
make that base's embedding, and the bases' embeddings are summed. A learned
``start_vec`` is added at the first position of a sequence, so that the
model can tell where it starts even when training shifts the positions.

Weights (Trax's layout): ``(base_weights, start_vec)``, ``base_weights`` a
list (one per base) of lists (one per digit) of ``(1, d_model / n_digits)``
arrays, ``start_vec`` ``(1, 1, d_model)``; all uniform in ``[-1e-4, 1e-4)``
by default.

>>> import numpy as np
>>> from retrax import shapes
>>> pe = FixedBasePositionalEncoding(bases=[3], n_digits=2, mode='eval')
>>> (digits, start_vec), _ = pe.init(shapes.ShapeDtype((1, 5, 4)))
>>> [[w.shape for w in base] for base in digits], start_vec.shape
([[(1, 2), (1, 2)]], (1, 1, 4))
>>> y = np.asarray(pe(np.zeros((1, 5, 4), np.float32)))
>>> # position 4 is 11 in base 3: digit 1 (ones) then digit 1 (threes)
>>> bool(np.allclose(y[0, 4], np.concatenate([digits[0][0][0], digits[0][1][0]])))
True
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from retrax.fastmath import random as fastmath_random
from retrax.layers import initializers as init
from retrax.layers.attention_checks import check_positive_int, dropout_rng, static_int
from retrax.layers.base import Layer, init_rng_split
from retrax.layers.core import check_mode

__all__ = ["FixedBasePositionalEncoding"]


def random_below(key: Any, n: Any, shape: tuple) -> Any:
    """Ints in ``[0, n)`` of ``shape`` from ``key`` (counter hash; ``n < 2**31``)."""
    bits = fastmath_random.hash_bits(key, shape)
    return (bits % jnp.asarray(n).astype(jnp.uint32)).astype(jnp.int32)


def digit_embeddings(positions: Any, bases: tuple, base_weights: Any) -> Any:
    """``(..., L, d_model)``: the sum over bases of the positions' scaled digit vectors."""
    total = 0.0
    for base, digit_vectors in zip(bases, base_weights):
        rest, parts = positions, []
        for vector in digit_vectors:
            digit = jnp.mod(rest, base)
            rest = rest // base
            parts.append(digit.astype(jnp.float32)[..., None] * vector[0])
        total = total + jnp.concatenate(parts, axis=-1)
    return total


class FixedBasePositionalEncoding(Layer):
    """Adds the digits of each position in fixed bases, scaled by learned vectors (1 -> 1).

    ``(B, L, D) -> (B, L, D)``; ``D`` must be a multiple of ``n_digits``.
    Positions go up to ``min(bases) ** n_digits`` (11**8 by default).

    - ``'train'``: each example starts at a random position in ``[0,
      max_pos - L)``, except with probability ``1 / start_from_zero_one_in``
      where it starts at 0; with probability ``1 / base_dropout_one_in`` an
      example gets no digit embeddings at all (the same draw for every
      base, as in Trax). Needs an rng.
    - ``'eval'``: positions ``0 .. L-1``.
    - ``'predict'``: the state is the next position (int32 scalar); a call
      of length ``L`` covers ``state .. state+L-1`` and advances the state.
      ``start_vec`` is added only when the state is 0.
    """

    def __init__(self, bases: Any = (11, 13, 14, 15), n_digits: int = 8,
                 start_from_zero_one_in: int = 2, base_dropout_one_in: int = 100,
                 mode: str = "train",
                 initializer: Any = init.RandomUniformInitializer(1e-4)):
        name = type(self).__name__
        super().__init__(n_in=1, n_out=1)
        self._mode = check_mode(name, mode)
        self._bases = tuple(check_positive_int(name, "bases[i]", b) for b in bases)
        if not self._bases or min(self._bases) < 2:
            raise ValueError(f"{name}: bases must be a non-empty list of ints >= 2; "
                             f"got {list(bases)!r}.")
        self._n_digits = check_positive_int(name, "n_digits", n_digits)
        self._start_from_zero_one_in = check_positive_int(name, "start_from_zero_one_in",
                                                          start_from_zero_one_in)
        self._base_dropout_one_in = check_positive_int(name, "base_dropout_one_in",
                                                       base_dropout_one_in)
        self._initializer = initializer
        self._max_pos = min(self._bases) ** self._n_digits

    def init_weights_and_state(self, input_signature):
        d_model = int(input_signature.shape[-1])
        if d_model % self._n_digits:
            raise ValueError(
                f"{self.name}: d_model={d_model} is not a multiple of n_digits="
                f"{self._n_digits} (each digit gets d_model / n_digits features); choose "
                f"n_digits dividing {d_model}, or another d_model.")
        d_digit = d_model // self._n_digits
        digits_rng, start_rng = init_rng_split(self.rng, 2)
        digit_rngs = init_rng_split(digits_rng, self._n_digits)
        # Trax draws the same digit keys for every base.
        base_weights = [[jnp.asarray(self._initializer((1, d_digit), rng)) for rng in digit_rngs]
                        for _ in self._bases]
        start_vec = jnp.asarray(self._initializer((1, 1, d_model), start_rng))
        self.weights = (base_weights, start_vec)
        if self._mode == "predict":
            self.state = jnp.zeros((), jnp.int32)

    def forward(self, x):
        name = self.name
        if jnp.ndim(x) != 3:
            raise ValueError(f"{name}: expected (batch, length, d_model) activations; got "
                             f"shape {tuple(jnp.shape(x))}.")
        base_weights, start_vec = self.weights
        batch, length = x.shape[0], x.shape[1]
        if start_vec.shape[-1] != x.shape[-1]:
            raise ValueError(f"{name}: the weights were made for d_model={start_vec.shape[-1]} "
                             f"but the input has {x.shape[-1]} features; re-run init.")
        if length >= self._max_pos:
            raise ValueError(
                f"{name}: a sequence of {length} positions does not fit the "
                f"{self._max_pos} positions of bases {list(self._bases)} with n_digits="
                f"{self._n_digits}; raise n_digits.")
        positions = jnp.arange(length, dtype=jnp.int32)[None, :]
        keep_digits = None
        if self._mode == "train":
            rng = dropout_rng(self)
            keys = [fastmath_random.hash_fold_in(rng, i) for i in range(3)]
            nonzero = jnp.minimum(1, random_below(keys[0], self._start_from_zero_one_in,
                                                  (batch,)))
            # Positions are int32: starts stay below 2**31 even when the bases allow more.
            highest = min(self._max_pos, 2 ** 31 - 1)
            start = random_below(keys[1], highest - length, (batch,)) * nonzero
            positions = positions + start[:, None]
            keep_digits = jnp.minimum(1, random_below(keys[2], self._base_dropout_one_in,
                                                      (batch,))).astype(jnp.float32)
        elif self._mode == "predict":
            if isinstance(self.state, tuple):
                raise ValueError(f"{name} in 'predict' mode has no position in its state; "
                                 f"call init(input_signature) before decoding.")
            known = static_int(self.state)
            if known is not None and known + length > self._max_pos:
                raise ValueError(f"{name}: decoding past position {self._max_pos}; raise "
                                 f"n_digits.")
            positions = positions + self.state
        emb = digit_embeddings(positions, self._bases, base_weights)
        if keep_digits is not None:
            emb = emb * keep_digits[:, None, None]
        first = emb[:, :1] + start_vec
        if self._mode == "predict":
            first = jnp.where(self.state == 0, first, emb[:, :1])
            self.state = self.state + length
        emb = jnp.concatenate([first, emb[:, 1:]], axis=1)
        return x + emb.astype(x.dtype)
