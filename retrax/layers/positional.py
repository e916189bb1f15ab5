"""Positions: ``PositionalEncoding`` and ``ShiftRight``.

``PositionalEncoding`` adds a learned, sinusoid-initialized table (in
``'predict'`` mode it keeps the next position in its state); ``ShiftRight``
shifts decoder inputs by a position (the identity in ``'predict'`` mode).
Both decide their mode-dependent behaviour when they run. Re-exported by
``retrax.layers.attention`` and as ``tl.X``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers import initializers as init
from retrax.layers.assert_shape import assert_shape
from retrax.layers.attention_checks import (
    check_dropout,
    check_positive_int,
    dropout_rng,
    static_int,
)
from retrax.layers.base import Fn, Layer
from retrax.layers.core import check_mode

__all__ = ["ShiftRight", "PositionalEncoding"]


# --------------------------------------------------------------------------
# Shifts
# --------------------------------------------------------------------------


@assert_shape("...d->...d")
def ShiftRight(n_positions: int = 1, mode: str = "train") -> Layer:
    """Shifts axis 1 right by ``n_positions``, filling with zeros (1 -> 1).

    ``(B, L, ...) -> (B, L, ...)``, same dtype. In ``'predict'`` mode it is the
    identity (the decoder feeds the start token itself).

    >>> import numpy as np
    >>> ShiftRight()(np.array([[1, 2, 3]])).tolist()
    [[0, 1, 2]]
    """
    if (
        isinstance(n_positions, bool)
        or not isinstance(n_positions, (int, np.integer))
        or n_positions < 0
    ):
        raise ValueError(f"ShiftRight: n_positions must be an int >= 0; got {n_positions!r}.")
    check_mode("ShiftRight", mode)
    n = int(n_positions)

    def f(x):
        if mode == "predict" or n == 0:
            return x
        if x.ndim < 2:
            raise ValueError(
                f"ShiftRight({n}) shifts axis 1 and needs inputs of rank >= 2 (batch, "
                f"length, ...); got shape {tuple(x.shape)}."
            )
        pad = [(0, 0)] * x.ndim
        pad[1] = (n, 0)
        return jnp.pad(x, pad)[:, : x.shape[1]]

    return Fn(f"ShiftRight({n_positions})", f)


# --------------------------------------------------------------------------
# Positional encoding
# --------------------------------------------------------------------------


def _sinusoid_table(max_len: int, d: int) -> np.ndarray:
    """``(max_len, d)``: sin in even columns, cos in odd ones (Trax's table)."""
    position = np.arange(max_len)[:, None]
    div_term = np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))
    table = np.zeros((max_len, d), np.float32)
    table[:, 0::2] = np.sin(position * div_term)
    table[:, 1::2] = np.cos(position * div_term[: d // 2])
    return table


class PositionalEncoding(Layer):
    """Adds a learned, sinusoid-initialized position embedding (1 -> 1).

    ``(B, L, D) -> (B, L, D)``. The weight is the table ``(max_len, D)`` (old
    Trax checkpoints store ``(1, max_len, D)``; both work); with ``d_feature``
    the table is ``(max_len, d_feature)`` plus a projection ``(d_feature, D)``.

    - ``'train'``: with ``dropout > 0`` the table entries are dropped with a
      mask broadcast along ``dropout_broadcast_dims`` of ``(1, L, D)``; with
      ``start_from_zero_prob < 1`` the table is read from a random offset in
      ``[0, max_offset_to_add)`` with probability ``1 - start_from_zero_prob``.
    - ``'eval'``: adds rows ``0..L-1``.
    - ``'predict'``: the state is the next position (int32 scalar); a call of
      length ``L`` adds rows ``state..state+L-1`` and advances the state by
      ``L``. Going past ``max_len`` raises a ``ValueError`` in eager calls and
      gives NaN under ``jax.jit`` (Trax clamped silently).

    >>> import numpy as np
    >>> from retrax import shapes
    >>> pe = PositionalEncoding(max_len=8)
    >>> w, _ = pe.init(shapes.ShapeDtype((1, 3, 4)))
    >>> w.shape
    (8, 4)
    >>> np.asarray(pe(np.zeros((1, 2, 4), np.float32))[0], np.float64).round(3).tolist()
    [[0.0, 1.0, 0.0, 1.0], [0.841, 0.54, 0.01, 1.0]]
    """

    def __init__(
        self,
        max_len: int = 2048,
        dropout: float = 0.0,
        dropout_broadcast_dims: Any = (-2,),
        use_bfloat16: bool = False,
        start_from_zero_prob: float = 1.0,
        max_offset_to_add: int = 0,
        d_feature: int | None = None,
        mode: str = "train",
    ):
        super().__init__()
        self._max_len = check_positive_int("PositionalEncoding", "max_len", max_len)
        dropout = check_dropout("PositionalEncoding", dropout)
        self._mode = check_mode("PositionalEncoding", mode)
        self._dropout = dropout  # applied in 'train' mode only, decided when it runs
        self._dropout_broadcast_dims = tuple(dropout_broadcast_dims)
        self._use_bfloat16 = use_bfloat16
        if not 0.0 <= start_from_zero_prob <= 1.0:
            raise ValueError(
                f"PositionalEncoding: start_from_zero_prob must be in [0, 1]; got "
                f"{start_from_zero_prob!r}."
            )
        self._start_from_zero_prob = float(start_from_zero_prob)
        if start_from_zero_prob < 1.0 and max_offset_to_add < 1:
            raise ValueError(
                "PositionalEncoding: start_from_zero_prob < 1 needs max_offset_to_add >= 1 "
                f"(random offsets are drawn from [0, max_offset_to_add)); got {max_offset_to_add!r}."
            )
        self._max_offset_to_add = int(max_offset_to_add)
        self._d_feature = (
            None
            if d_feature is None
            else check_positive_int("PositionalEncoding", "d_feature", d_feature)
        )

    def init_weights_and_state(self, input_signature):
        d_in = input_signature.shape[-1]
        d = d_in if self._d_feature is None else self._d_feature
        table = jnp.asarray(_sinusoid_table(self._max_len, d))
        if self._use_bfloat16:
            table = table.astype(jnp.bfloat16)
        if self._d_feature is None:
            self.weights = table
        else:
            self.weights = (table, init.GlorotUniformInitializer()((d, d_in), self.rng))
        if self._mode == "predict":
            self.state = jnp.zeros((), jnp.int32)

    def _table(self) -> tuple[Any, Any]:
        weights = self.weights
        table, proj = weights if self._d_feature is not None else (weights, None)
        if table.ndim == 3:  # old checkpoints: (1, max_len, d)
            table = table[0]
        return table, proj

    def forward(self, x):
        table, proj = self._table()
        if x.ndim != 3:
            raise ValueError(
                f"PositionalEncoding expects activations of shape (batch, length, d); got "
                f"shape {tuple(x.shape)}."
            )
        length, max_len = x.shape[1], table.shape[0]
        if self._mode == "predict":
            return self._forward_predict(x, table, proj)
        if length > max_len:
            raise ValueError(
                f"PositionalEncoding: input length {length} exceeds max_len={max_len}; build "
                f"the model with a larger max_len."
            )
        if self._mode == "train" and self._start_from_zero_prob < 1.0:
            rng_start, rng_coin = jax.random.split(dropout_rng(self))[:2]
            offset = jax.random.randint(rng_start, (), 0, self._max_offset_to_add)
            coin = jax.random.uniform(rng_coin, ())
            start = jnp.where(coin < self._start_from_zero_prob, 0, offset)
            rows = lax.dynamic_slice_in_dim(table, start, length, axis=0)
        else:
            rows = table[:length]
        px = self._project(rows, proj, x)[None]  # (1, L, D)
        if self._mode != "train" or self._dropout == 0.0:
            return x + px
        noise_shape = list(px.shape)
        for dim in self._dropout_broadcast_dims:
            noise_shape[dim] = 1
        keep_prob = 1.0 - self._dropout
        rng = fastmath_random.hash_fold_in(dropout_rng(self), 1)
        keep = fastmath_random.hash_bernoulli(rng, keep_prob, tuple(noise_shape))
        return x + px * (keep.astype(x.dtype) / keep_prob)

    def _forward_predict(self, x, table, proj):
        if isinstance(self.state, tuple):
            raise ValueError(
                "PositionalEncoding in 'predict' mode has no position in its state; call "
                "init(input_signature) on the model before decoding."
            )
        position = self.state
        length, max_len = x.shape[1], table.shape[0]
        start = static_int(position)
        if length > max_len or (start is not None and start + length > max_len):
            at = "" if start is None else f" at position {start}"
            raise ValueError(
                f"PositionalEncoding: cannot add {length} position(s){at}: the table has "
                f"max_len={max_len} rows. Build the model with a larger max_len, or re-init "
                f"the state to start a new sequence."
            )
        rows = lax.dynamic_slice_in_dim(table, position, length, axis=0)
        y = x + self._project(rows, proj, x)[None]
        if start is None:  # traced: signal an overflow with NaN (no silent clamping)
            y = jnp.where(position + length > max_len, jnp.asarray(jnp.nan, y.dtype), y)
        self.state = position + length
        return y

    def _project(self, rows, proj, x):
        if proj is not None:
            rows = jnp.dot(rows, proj)
        if rows.shape[-1] != x.shape[-1]:
            raise ValueError(
                f"PositionalEncoding: the table has {rows.shape[-1]} features but the input "
                f"has {x.shape[-1]}; re-run init with the input signature."
            )
        return rows
