"""Positions of unbounded range (Trax's ``InfinitePositionalEncoding``).

Channel pairs ``(2i, 2i+1)`` are a cosine and a sine of ``cycles = freq_i *
t + noise_i(t) / 4`` (the sine as a cosine a quarter cycle later), with
frequencies ``freq_i`` spaced geometrically from 0.5 down to ``0.5 *
drift'**2`` and a slow random walk ``noise_i(t)`` (scaled by
``sqrt(drift)``) that keeps far-apart positions distinct. The walk's steps
are fixed (Trax's counter-mode threefry stream under key
``PRNGKey(234234535)``), so any position's encoding is defined without a
table. ``affine`` adds a random phase per channel, drawn from the call's rng
(in ``'predict'`` mode from the one stored at init); ``transform`` is a
learned map of the encoding: ``'any'`` a ``(D, D)`` matrix (orthogonal at
init), ``'diag'`` a per-channel scale ``softplus(w)``, ``'none'`` nothing.
``time_bin_length`` replaces the last 3 channels with
``TimeBinPositionalEncoding``'s features.

>>> import numpy as np
>>> from retrax import shapes
>>> pe = InfinitePositionalEncoding(affine=False, transform='none', mode='eval')
>>> _ = pe.init(shapes.ShapeDtype((1, 4, 6)))
>>> y = np.asarray(pe(np.zeros((1, 4, 6), np.float32)))
>>> y.shape, bool(np.abs(y).max() <= 1.0)
((1, 4, 6), True)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import random as jax_extend_random

from retrax.fastmath import random as fastmath_random
from retrax.layers import initializers as init
from retrax.layers.base import Layer
from retrax.layers.core import check_mode
from retrax.layers.time_bin_positional import N_FEATURES, time_bin_features

__all__ = ["InfinitePositionalEncoding"]

NOISE_SEED = 234234535  # Trax's fixed key for the random walk


def noise_steps(counters: Any) -> Any:
    """The walk's steps at ``counters`` (uint32): Trax's threefry stream, in ``[0, 2 sqrt(3)]``."""
    key = jax.random.split(jax.random.PRNGKey(NOISE_SEED))[0]
    flat = counters.reshape(-1).astype(jnp.uint32)
    words = jax_extend_random.threefry_2x32(key, jnp.concatenate([flat, jnp.zeros_like(flat)]))
    first = words[:flat.shape[0]].reshape(counters.shape)
    return first.astype(jnp.float32) / np.float32(2 ** 31 - 1) * np.float32(3 ** 0.5)


class InfinitePositionalEncoding(Layer):
    """Adds position encodings that never run out (1 -> 1): ``(B, L, D) -> (B, L, D)``.

    ``'train'`` and ``'eval'`` encode positions ``0 .. L-1``. In
    ``'predict'`` mode the state is ``(positions (B,), phase_rng,
    walk (B, ceil(D/2)))``: each example's next position, the key of the
    affine phase and the random walk so far (Trax's state had the first
    two; the walk is carried so that a call under ``jit`` needs no table).
    """

    def __init__(self, drift: float = .03, affine: bool = True, transform: str = "any",
                 time_bin_length: int | None = None, mode: str = "train"):
        name = type(self).__name__
        super().__init__(n_in=1, n_out=1)
        if transform not in ("any", "diag", "none"):
            raise ValueError(f"{name}: transform must be 'any', 'diag' or 'none'; got "
                             f"{transform!r}.")
        if not drift > 0:
            raise ValueError(f"{name}: drift must be > 0; got {drift!r}.")
        self._mode = check_mode(name, mode)
        self._drift, self._affine, self._transform = float(drift), affine, transform
        self._time_bin_length = time_bin_length

    def init_weights_and_state(self, input_signature):
        d = int(input_signature.shape[-1])
        if self._transform == "diag":
            self.weights = jnp.zeros((d,), jnp.float32) + 1e-4
        elif self._transform == "any":
            self.weights = jnp.asarray(init.OrthogonalInitializer()((d, d), self.rng))
        if self._mode == "predict":
            batch = input_signature.shape[0]
            self.state = (jnp.zeros((batch,), jnp.int32),
                          jnp.asarray(fastmath_random.key_data(self.rng)),
                          jnp.zeros((batch, (d + 1) // 2), jnp.float32))

    def _embeddings(self, t: Any, walk: Any, d: int, rng: Any) -> Any:
        """``t`` ``(..., L)`` positions, ``walk`` ``(..., L, ceil(d/2))`` -> ``(..., L, d)``."""
        half = (d + 1) // 2
        channel = np.arange(d)
        drift = self._drift ** (half / (d // 2)) if d > 2 else self._drift
        freq = jnp.geomspace(.5, .5 * drift ** 2, num=half)[channel // 2]
        noise = walk * np.float32(self._drift ** .5)
        cycles = (channel % 2) / 4 + freq * t[..., None] + noise[..., channel // 2] / 4
        if self._affine:
            bits = fastmath_random.hash_bits(fastmath_random.hash_fold_in(rng, 0), (1, d))
            cycles = cycles + bits.astype(jnp.float32) * np.float32(2.0 ** -32)
        emb = jnp.cos(2 * np.pi * cycles)
        if self._time_bin_length is not None and d >= N_FEATURES:
            features = time_bin_features(t, self._time_bin_length)
            emb = jnp.concatenate([emb[..., :-N_FEATURES], features], axis=-1)
        return emb

    def forward(self, x):
        name = self.name
        if jnp.ndim(x) != 3:
            raise ValueError(f"{name}: expected (batch, length, d_model) activations; got "
                             f"shape {tuple(jnp.shape(x))}.")
        length, d = x.shape[1], x.shape[2]
        half = (d + 1) // 2

        def steps_of(t):  # the walk's steps at positions t, one per channel pair
            return noise_steps(t[..., None] * half + jnp.arange(half))

        if self._mode == "predict":
            if not (isinstance(self.state, tuple) and len(self.state) == 3):
                raise ValueError(f"{name} in 'predict' mode has no positions in its state; "
                                 f"call init(input_signature) before decoding.")
            start, phase_rng, walk = self.state
            t = start[:, None] + jnp.arange(length, dtype=jnp.int32)  # (B, L)
            walks = walk[:, None, :] + jnp.cumsum(steps_of(t), axis=1)
            emb = self._embeddings(t, walks, d, phase_rng)
            self.state = (start + length, phase_rng, walks[:, -1])
        else:
            t = jnp.arange(length, dtype=jnp.int32)
            emb = self._embeddings(t, jnp.cumsum(steps_of(t), axis=0), d,
                                   self.rng if self._affine else None)[None]
        if self._transform == "diag":
            emb = emb * jax.nn.softplus(self.weights)
        elif self._transform == "any":
            emb = emb @ self.weights
        return x + emb.astype(x.dtype)
