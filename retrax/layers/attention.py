"""Attention layers, masks, shifts and positional encoding (Trax's ``attention.py``).

Shapes: B batch, L sequence length, D ``d_feature``, H heads, ``dh = D // H``.

Modes:

- ``'train'``: dropout is on.
- ``'eval'``: dropout is off.
- ``'predict'``: dropout is off, ``ShiftRight`` is the identity, and
  ``PositionalEncoding`` and ``DotProductCausalAttention`` keep the current
  position and a key/value cache in their *state*, so a model can be fed one
  token at a time. The state is an ordinary value: ``pure_fn`` takes it and
  returns the new one, so a jitted step function can carry it.
- ``'viz'``: as ``'eval'`` (Trax also stored attention weights in the state;
  retrax does not).

Weight layout and printed structure are Trax's: ``CausalAttention(d, n_heads)``
has the weights ``(Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo)`` in that depth-first
order, and the sinusoid table of ``PositionalEncoding`` is a trainable weight.

Where they live: the padding-mask attention layers (``PureAttention``,
``DotProductAttention``, ``AttentionQKV``, ``Attention``) in this module;
``dot_product_attention``, the heads and the masks in
``retrax.layers.attention_math``; ``CausalAttention``, its parts and
``predict_cache_length`` in ``retrax.layers.causal_attention``;
``PositionalEncoding`` and ``ShiftRight`` in ``retrax.layers.positional``; the
argument checks they share in ``retrax.layers.attention_checks``. This module
re-exports them all, so ``retrax.layers.attention.X`` names each, as in Trax.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> attn = tl.CausalAttention(8, n_heads=2, mode='eval')
>>> _ = attn.init(shapes.ShapeDtype((1, 5, 8)))
>>> attn(np.ones((1, 5, 8), np.float32)).shape
(1, 5, 8)
"""

from __future__ import annotations

from typing import Any

from retrax.layers import attention_math, causal_attention, positional
from retrax.layers.assert_shape import assert_shape
from retrax.layers.attention_checks import (
    check_dropout,
    check_heads,
    check_positive_int,
    dropout_rng,
)
from retrax.layers.attention_math import *  # noqa: F403
from retrax.layers.attention_math import (
    MASK_VALUE,  # noqa: F401 (attention.MASK_VALUE, as before)
    dot_product_attention,
    merge_heads,
    split_heads,
)
from retrax.layers.base import Layer
from retrax.layers.causal_attention import *  # noqa: F403
from retrax.layers.control_flow import Cache
from retrax.layers.core import Dense, check_mode
from retrax.layers.positional import *  # noqa: F403
from retrax.layers.stack_combinators import Parallel, Select, Serial

__all__ = [
    "Attention",
    "AttentionQKV",
    "PureAttention",
    "DotProductAttention",
    *causal_attention.__all__,
    *attention_math.__all__,
    *positional.__all__,
]


# --------------------------------------------------------------------------
# Attention with padding masks: (x, mask) -> (y, mask)
# --------------------------------------------------------------------------


class PureAttention(Layer):
    """Multi-head attention on projected ``(q, k, v, mask)``; returns ``(y, mask)`` (4 -> 2).

    ``q (B, Lq, D)``, ``k (B, Lk, D)``, ``v (B, Lk, D)``, ``mask`` broadcastable
    to ``(B, H, Lq, Lk)`` (usually ``(B, 1, 1, Lk)`` from ``PaddingMask`` or
    ``(B, 1, Lq, Lk)`` from ``EncoderDecoderMask``). No weights.

    >>> import numpy as np
    >>> layer = PureAttention(n_heads=2, mode='eval')
    >>> layer
    PureAttention_in4_out2
    >>> x = np.ones((1, 3, 4), np.float32)
    >>> y, mask = layer((x, x, x, np.ones((1, 1, 1, 3), bool)))
    >>> y.shape
    (1, 3, 4)
    """

    def __init__(self, n_heads: int = 1, dropout: float = 0.0, mode: str = "train"):
        super().__init__(n_in=4, n_out=2)
        self._n_heads = check_positive_int("PureAttention", "n_heads", n_heads)
        self._dropout = check_dropout("PureAttention", dropout)
        self._mode = check_mode("PureAttention", mode)

    def forward(self, inputs):
        q, k, v, mask = inputs
        for name, x in (("q", q), ("k", k), ("v", v)):
            if x.ndim != 3:
                raise ValueError(
                    f"PureAttention expects q, k, v of shape (batch, length, d_feature); "
                    f"{name} has shape {tuple(x.shape)}."
                )
        d_feature = q.shape[-1]
        if d_feature % self._n_heads:
            raise ValueError(
                f"PureAttention: d_feature ({d_feature}) is not a multiple of n_heads "
                f"({self._n_heads})."
            )
        train_dropout = self._mode == "train" and self._dropout > 0.0
        y = dot_product_attention(
            split_heads(q, self._n_heads),
            split_heads(k, self._n_heads),
            split_heads(v, self._n_heads),
            mask,
            dropout=self._dropout,
            mode=self._mode,
            rng=dropout_rng(self) if train_dropout else None,
        )
        return merge_heads(y), mask


class DotProductAttention(Layer):
    """Attention on tensors already split into heads: ``(q, k, v, mask) -> y`` (4 -> 1).

    ``q (..., Lq, dh)``, ``k``/``v (..., Lk, dh)``, mask broadcastable to
    ``(..., Lq, Lk)``. No weights.
    """

    def __init__(self, dropout: float = 0.0, mode: str = "train"):
        super().__init__(n_in=4, n_out=1)
        self._dropout = check_dropout("DotProductAttention", dropout)
        self._mode = check_mode("DotProductAttention", mode)

    def forward(self, inputs):
        q, k, v, mask = inputs
        train_dropout = self._mode == "train" and self._dropout > 0.0
        return dot_product_attention(
            q,
            k,
            v,
            mask,
            dropout=self._dropout,
            mode=self._mode,
            rng=dropout_rng(self) if train_dropout else None,
        )


@assert_shape("bSq,blk,blv,b1xl->bSd,b1xl")
def AttentionQKV(
    d_feature: int,
    n_heads: int = 1,
    dropout: float = 0.0,
    mode: str = "train",
    cache_KV_in_predict: bool = False,
    q_sparsity: Any = None,
    result_sparsity: Any = None,
) -> Layer:
    """Attention from separate sources: ``(aq, ak, av, mask) -> (y, mask)`` (4 -> 2).

    ``Serial(Parallel(Dense(D), Dense(D), Dense(D)), PureAttention, Dense(D))``.
    Used for encoder-decoder attention (queries from the decoder, keys and
    values from the encoder). With ``cache_KV_in_predict`` the key and value
    projections are wrapped in ``Cache`` in ``'predict'`` mode: they are
    computed on the first call and reused after. ``q_sparsity`` and
    ``result_sparsity`` accept ``None`` (a ``Dense``) or ``'noop'`` (identity);
    Trax's sparse variants are not implemented.
    """
    check_heads("AttentionQKV", d_feature, n_heads)
    check_dropout("AttentionQKV", dropout)
    check_mode("AttentionQKV", mode)

    def projection(sparsity: Any, what: str) -> Layer:
        if sparsity is None:
            return Dense(d_feature)
        if sparsity == "noop":
            return Serial()
        raise NotImplementedError(
            f"AttentionQKV: {what}={sparsity!r} (Trax's sparse projections) is not "
            f"implemented; use None or 'noop'."
        )

    def kv_projection() -> Layer:
        if cache_KV_in_predict and mode == "predict":
            return Cache(Dense(d_feature))
        return Dense(d_feature)

    return Serial(
        Parallel(projection(q_sparsity, "q_sparsity"), kv_projection(), kv_projection()),
        PureAttention(n_heads=n_heads, dropout=dropout, mode=mode),
        projection(result_sparsity, "result_sparsity"),
    )


@assert_shape("bld,b11l->bld,b11l")
def Attention(d_feature: int, n_heads: int = 1, dropout: float = 0.0, mode: str = "train") -> Layer:
    """Multi-head self-attention with a padding mask: ``(x, mask) -> (y, mask)`` (2 -> 2).

    ``x (B, L, D)``, ``mask (B, 1, 1, L)`` (true where a key is real content).
    Weights: ``(Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo)``.

    >>> import numpy as np
    >>> from retrax import shapes
    >>> attn = Attention(4, n_heads=2, mode='eval')
    >>> _ = attn.init((shapes.ShapeDtype((1, 3, 4)), shapes.ShapeDtype((1, 1, 1, 3), bool)))
    >>> y, mask = attn((np.ones((1, 3, 4), np.float32), np.ones((1, 1, 1, 3), bool)))
    >>> y.shape
    (1, 3, 4)
    """
    return Serial(
        Select([0, 0, 0]),
        AttentionQKV(d_feature, n_heads=n_heads, dropout=dropout, mode=mode),
    )
