"""LocallyConnected1d: a 1-D convolution whose filters differ at every position.

Shapes: L positions (steps), D input features, F = ``filters``, K = ``kernel_size``.

Weights (Trax's layout): ``w`` of shape ``(L, K, D, F)`` and, with ``use_bias``,
``b`` of shape ``(L_out, F)``. ``w[l, k]`` is the ``(D, F)`` matrix applied to
the input at position ``l`` when it is the ``k``-th position of a window, so
the number of positions is fixed at ``init``.

How position ``l``'s contributions reach the outputs (Trax's arithmetic, kept
so Trax checkpoints compute the same numbers), with ``y[l, k] = x[l] @ w[l, k]``
and ``h = (K - 1) // 2``:

- ``'SAME'``: ``out[o] = sum_k y[o + k - h, k]`` over positions inside
  ``[0, L)``; ``L_out = L``.
- ``'WRAP'``: the same with positions taken modulo ``L`` (a ring); ``L_out = L``.
- ``'VALID'``: ``out[o] = sum_k y[o + K - 1 - k, k]`` for ``o < L - K + 1``;
  ``L_out = L - K + 1``. (The window is read right to left here, unlike the
  other paddings; Trax computes it that way.)

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> layer = tl.LocallyConnected1d(4, 3, padding='SAME')
>>> w, b = layer.init(shapes.ShapeDtype((2, 5, 6)))[0]
>>> w.shape, b.shape
((5, 3, 6, 4), (5, 4))
>>> layer(np.ones((2, 5, 6), np.float32)).shape
(2, 5, 4)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from retrax.fastmath.random import init_rng_split
from retrax.layers import initializers as init
from retrax.layers.base import Layer

__all__ = ["LocallyConnected1d"]

PADDINGS = ("VALID", "SAME", "WRAP")


def _positive_int(arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"LocallyConnected1d: {arg} must be a positive int; got {value!r}.")
    return int(value)


class LocallyConnected1d(Layer):
    """Locally connected layer over ``(..., L, D)`` inputs, stride 1; 1 -> 1.

    Like ``Conv1d``, but each position has its own filters: weights ``w`` of
    shape ``(L, kernel_size, D, filters)`` and bias ``b`` of shape
    ``(L_out, filters)`` (``w`` alone when ``use_bias=False``). Outputs are
    ``(..., L_out, filters)`` with ``L_out = L`` for ``'SAME'`` (zeros past
    the ends) and ``'WRAP'`` (the ends wrap around), ``L - kernel_size + 1``
    for ``'VALID'``. ``kernel_size`` must be odd. See the module docstring for
    the exact sums.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> layer = tl.LocallyConnected1d(1, 1, use_bias=False)
    >>> _ = layer.init(shapes.ShapeDtype((3, 1)))
    >>> layer.weights = np.array([1.0, 2.0, 3.0], np.float32).reshape(3, 1, 1, 1)
    >>> layer(np.ones((3, 1), np.float32)).tolist()   # each position its own weight
    [[1.0], [2.0], [3.0]]
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        kernel_initializer: Callable = init.GlorotUniformInitializer(),
        bias_initializer: Callable = init.RandomNormalInitializer(1e-6),
        use_bias: bool = True,
        padding: str = "VALID",
    ):
        filters = _positive_int("filters", filters)
        kernel_size = _positive_int("kernel_size", kernel_size)
        if kernel_size % 2 != 1:
            raise ValueError(
                f"LocallyConnected1d: kernel_size must be odd (a window centred on each "
                f"position); got {kernel_size}. Use {kernel_size - 1} or {kernel_size + 1}."
            )
        if padding not in PADDINGS:
            raise ValueError(
                f"LocallyConnected1d: padding must be one of {PADDINGS}; got {padding!r}."
            )
        super().__init__(name=f"LocallyConnected1d_{filters}_{kernel_size}")
        self._filters = filters
        self._kernel_size = kernel_size
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer
        self._use_bias = use_bias
        self._padding = padding

    def _n_out_positions(self, n_positions: int) -> int:
        if self._padding == "VALID":
            return n_positions - self._kernel_size + 1
        return n_positions

    def _check_input(self, shape: tuple, n_positions: int | None = None,
                     n_features: int | None = None) -> None:
        """Raises unless ``shape`` is ``(..., L, D)`` with a usable L (and the L, D given)."""
        if len(shape) < 2:
            raise ValueError(
                f"{self.name} expects inputs of shape (..., positions, features), at least 2 "
                f"axes; got shape {tuple(shape)}. Add a features axis, e.g. x[..., None]."
            )
        length, depth = shape[-2], shape[-1]
        if n_positions is not None and (length, depth) != (n_positions, n_features):
            raise ValueError(
                f"{self.name} was initialized for {n_positions} positions of {n_features} "
                f"features (its weights have one set of filters per position), but got inputs "
                f"of shape {tuple(shape)}. Feed (..., {n_positions}, {n_features}) inputs, or "
                f"re-run init() with the new input signature."
            )
        if self._n_out_positions(length) < 1:
            raise ValueError(
                f"{self.name} with padding='VALID' needs at least kernel_size="
                f"{self._kernel_size} positions; got inputs of shape {tuple(shape)} "
                f"({length} positions). Use padding='SAME' or a smaller kernel_size."
            )

    def init_weights_and_state(self, input_signature):
        shape = tuple(input_signature.shape)
        self._check_input(shape)
        length, depth = shape[-2], shape[-1]
        rng_w, rng_b = init_rng_split(self.rng, 2)
        w = self._kernel_initializer((length, self._kernel_size, depth, self._filters), rng_w)
        if not self._use_bias:
            self.weights = w
            return
        b = self._bias_initializer((self._n_out_positions(length), self._filters), rng_b)
        self.weights = (w, b)

    def forward(self, x):
        if self._use_bias:
            if not isinstance(self.weights, (tuple, list)) or len(self.weights) != 2:
                raise ValueError(
                    f"{self.name} (use_bias=True) expects weights (w, b); got "
                    f"{type(self.weights).__name__}. Use the weights init() returns."
                )
            w, b = self.weights
        else:
            w, b = self.weights, None
        x = jnp.asarray(x)
        self._check_input(x.shape, w.shape[0], w.shape[2])
        # y[..., l, k, :] = x[..., l, :] @ w[l, k]: every position through every tap.
        y = jnp.einsum("...lp,lkpd->...lkd", x, w)
        out = self._gather_taps(y)
        return out if b is None else out + b

    def _gather_taps(self, y: Any) -> Any:
        """Sums tap ``k`` of each position into the output position it feeds."""
        k_size, length = self._kernel_size, y.shape[-3]
        half = (k_size - 1) // 2
        total = None
        for k in range(k_size):
            tap = y[..., k, :]                      # (..., L, F)
            if self._padding == "VALID":
                start = k_size - 1 - k               # out[o] = tap[o + start]
                part = tap[..., start:start + length - k_size + 1, :]
            elif self._padding == "WRAP":
                part = jnp.roll(tap, half - k, axis=-2)   # out[o] = tap[(o + k - h) % L]
            else:
                part = _shift_with_zeros(tap, k - half)   # out[o] = tap[o + k - h] or 0
            total = part if total is None else total + part
        return total


def _shift_with_zeros(tap: Any, offset: int) -> Any:
    """``out[..., o, :] = tap[..., o + offset, :]``, zero where that is outside."""
    if offset == 0:
        return tap
    length = tap.shape[-2]
    pad = [(0, 0)] * tap.ndim
    if offset > 0:
        pad[-2] = (0, min(offset, length))
        return jnp.pad(tap[..., offset:, :], pad)
    pad[-2] = (min(-offset, length), 0)
    return jnp.pad(tap[..., :max(length + offset, 0), :], pad)
