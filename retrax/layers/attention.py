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

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> attn = tl.CausalAttention(8, n_heads=2, mode='eval')
>>> _ = attn.init(shapes.ShapeDtype((1, 5, 8)))
>>> attn(np.ones((1, 5, 8), np.float32)).shape
(1, 5, 8)
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers import initializers as init
from retrax.layers.assert_shape import assert_shape
from retrax.layers.base import Fn, Layer
from retrax.layers.combinators import Branch, Cache, Parallel, Select, Serial
from retrax.layers.core import Dense

__all__ = [
    "Attention",
    "AttentionQKV",
    "PureAttention",
    "DotProductAttention",
    "CausalAttention",
    "DotProductCausalAttention",
    "ConfigurableAttention",
    "SplitIntoHeads",
    "MergeHeads",
    "ShiftRight",
    "PaddingMask",
    "EncoderDecoderMask",
    "PositionalEncoding",
    "dot_product_attention",
    "predict_cache_length",
]

_MODES = ("train", "eval", "predict", "viz")
# Trax's value for masked-out attention logits (not -inf: a fully masked row
# then attends uniformly instead of producing NaN).
MASK_VALUE = -1e9


# --------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------


def _check_mode(owner: str, mode: str) -> str:
    if mode not in _MODES:
        raise ValueError(f"{owner}: mode must be one of {_MODES}; got {mode!r}.")
    return mode


def _check_positive_int(owner: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a positive int; got {value!r}.")
    return int(value)


def _check_dropout(owner: str, rate: Any) -> float:
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: dropout must be a number in [0, 1); got {rate!r}.") from None
    if not 0.0 <= rate_f < 1.0:
        raise ValueError(
            f"{owner}: dropout rate must be in [0, 1) (it is the probability of dropping an "
            f"attention weight); got {rate!r}."
        )
    return rate_f


def _check_heads(owner: str, d_feature: Any, n_heads: Any) -> tuple[int, int]:
    d_feature = _check_positive_int(owner, "d_feature", d_feature)
    n_heads = _check_positive_int(owner, "n_heads", n_heads)
    if d_feature % n_heads:
        raise ValueError(
            f"{owner}: d_feature ({d_feature}) is not a multiple of n_heads ({n_heads}); each "
            f"head gets d_feature // n_heads features, so pick n_heads dividing d_feature."
        )
    return d_feature, n_heads


# --------------------------------------------------------------------------
# Predict-mode cache length, an option of init
# --------------------------------------------------------------------------

_cache_length_option: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "predict_cache_length", default=None)


@contextlib.contextmanager
def predict_cache_length(length: int) -> Iterator[int]:
    """Inits made inside give predict-mode key/value caches of ``length`` positions.

    Without it a ``DotProductCausalAttention`` in ``'predict'`` mode sizes its
    cache by its ``max_inference_length`` (a model's ``max_len`` by default),
    as in Trax. This option reaches the state that ``init`` (or any init pass,
    also under ``jax.jit``) creates; the layers are not modified, and inits
    outside the ``with`` block (or in other threads) are not affected.
    ``autoregressive_sample`` and the other decoders use it to size their
    caches to each request.

    >>> import jax
    >>> from retrax import layers as tl, shapes
    >>> attn = tl.CausalAttention(4, n_heads=2, max_inference_length=32, mode='predict')
    >>> def key_cache_shape(state):  # (batch * heads, cache length, d_head)
    ...     return jax.tree_util.tree_leaves(state)[0].shape
    >>> with tl.predict_cache_length(8):
    ...     _, state = attn.init(shapes.ShapeDtype((1, 1, 4)))
    >>> key_cache_shape(state)
    (2, 8, 2)
    >>> key_cache_shape(attn.init(shapes.ShapeDtype((1, 1, 4)))[1])
    (2, 32, 2)
    """
    length = _check_positive_int("predict_cache_length", "length", length)
    token = _cache_length_option.set(length)
    try:
        yield length
    finally:
        _cache_length_option.reset(token)


def _static_int(x: Any) -> int | None:
    """``int(x)`` when ``x`` is concrete; ``None`` while JAX is tracing it."""
    try:
        return int(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


def _dropout_rng(layer: Layer) -> Any:
    # Like tl.Dropout: an explicit rng is required for train-mode randomness.
    if not layer.has_rng:
        raise ValueError(
            f"{layer.name}: dropout and random offsets in 'train' mode need an rng; pass "
            f"rng=... to pure_fn (or build the layer with mode='eval' for deterministic "
            f"outputs)."
        )
    return layer.rng


# --------------------------------------------------------------------------
# The core computation
# --------------------------------------------------------------------------


def dot_product_attention(
    q: Any,
    k: Any,
    v: Any,
    mask: Any = None,
    *,
    dropout: float = 0.0,
    mode: str = "train",
    rng: Any = None,
) -> Any:
    """Scaled dot-product attention over the last two axes, Trax's semantics.

    ``softmax(q @ k^T / sqrt(dh))`` with masked logits set to ``-1e9``, then (in
    ``'train'`` mode with ``dropout > 0``) dropout on the attention
    probabilities, then ``@ v``. One batched einsum for all heads.

    Args:
      q: queries ``(..., Lq, dh)``.
      k: keys ``(..., Lk, dh)``.
      v: values ``(..., Lk, dv)``.
      mask: ``None`` or an array broadcastable to ``(..., Lq, Lk)``; true
        (nonzero) where a query may attend to a key.
      dropout: probability of dropping an attention weight (train mode only).
      mode: ``'train'`` applies the dropout; other modes do not.
      rng: PRNG key, needed only when dropout applies.

    Returns:
      ``(..., Lq, dv)``.

    >>> import numpy as np
    >>> q = k = np.eye(2, dtype=np.float32)[None]
    >>> v = np.array([[[1.0], [3.0]]], np.float32)
    >>> causal = np.tril(np.ones((2, 2), bool))
    >>> np.asarray(dot_product_attention(q, k, v, causal), np.float64).round(4).tolist()
    [[[1.0], [2.3395]]]
    """
    if dropout >= 1.0:
        raise ValueError(f"dot_product_attention: dropout rate must be < 1; got {dropout}.")
    dots = jnp.einsum("...qd,...kd->...qk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            mask = mask != 0
        dots = jnp.where(mask, dots, jnp.asarray(MASK_VALUE, dots.dtype))
    probs = jnp.exp(dots - jax.nn.logsumexp(dots, axis=-1, keepdims=True))
    if mode == "train" and dropout > 0.0:
        keep = fastmath_random.hash_bernoulli(rng, 1.0 - dropout, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout), jnp.zeros_like(probs))
    return jnp.einsum("...qk,...kd->...qd", probs, v)


def _split_heads(x: Any, n_heads: int) -> Any:
    """``(B, L, D) -> (B, H, L, dh)``."""
    b, length, d = x.shape
    return x.reshape(b, length, n_heads, d // n_heads).transpose(0, 2, 1, 3)


def _merge_heads(x: Any) -> Any:
    """``(B, H, L, dh) -> (B, L, H * dh)``."""
    b, h, length, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, length, h * dh)


# --------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------


@assert_shape("bld->...lh")
def SplitIntoHeads(n_heads: int, merged_batch_and_head: bool = True) -> Layer:
    """Splits features into heads: ``(B, L, D) -> (B*H, L, dh)`` (1 -> 1).

    With ``merged_batch_and_head=False`` the result is ``(B, H, L, dh)``.

    >>> import numpy as np
    >>> SplitIntoHeads(2)(np.zeros((3, 5, 8))).shape
    (6, 5, 4)
    """
    n_heads = _check_positive_int("SplitIntoHeads", "n_heads", n_heads)

    def f(x):
        if x.ndim != 3:
            raise ValueError(
                f"SplitIntoHeads expects (batch, length, d_feature) inputs; got shape "
                f"{tuple(x.shape)}."
            )
        if x.shape[-1] % n_heads:
            raise ValueError(
                f"SplitIntoHeads: feature size {x.shape[-1]} is not a multiple of n_heads "
                f"({n_heads})."
            )
        y = _split_heads(x, n_heads)
        if merged_batch_and_head:
            y = y.reshape((-1,) + y.shape[2:])
        return y

    return Fn("SplitIntoHeads", f)


@assert_shape("...lh->bld")
def MergeHeads(n_heads: int, merged_batch_and_head: bool = True) -> Layer:
    """Inverse of ``SplitIntoHeads``: ``(B*H, L, dh) -> (B, L, H*dh)`` (1 -> 1).

    With ``merged_batch_and_head=False`` the input is ``(B, H, L, dh)``.

    >>> import numpy as np
    >>> MergeHeads(2)(np.zeros((6, 5, 4))).shape
    (3, 5, 8)
    """
    n_heads = _check_positive_int("MergeHeads", "n_heads", n_heads)

    def f(x):
        if merged_batch_and_head:
            if x.ndim != 3 or x.shape[0] % n_heads:
                raise ValueError(
                    f"MergeHeads expects (batch * n_heads, length, d_head) inputs with the "
                    f"leading axis a multiple of n_heads ({n_heads}); got shape {tuple(x.shape)}."
                )
            x = x.reshape((x.shape[0] // n_heads, n_heads) + x.shape[1:])
        elif x.ndim != 4 or x.shape[1] != n_heads:
            raise ValueError(
                f"MergeHeads expects (batch, n_heads={n_heads}, length, d_head) inputs; got "
                f"shape {tuple(x.shape)}."
            )
        return _merge_heads(x)

    return Fn("MergeHeads", f)


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
        self._n_heads = _check_positive_int("PureAttention", "n_heads", n_heads)
        self._dropout = _check_dropout("PureAttention", dropout)
        self._mode = _check_mode("PureAttention", mode)

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
            _split_heads(q, self._n_heads),
            _split_heads(k, self._n_heads),
            _split_heads(v, self._n_heads),
            mask,
            dropout=self._dropout,
            mode=self._mode,
            rng=_dropout_rng(self) if train_dropout else None,
        )
        return _merge_heads(y), mask


class DotProductAttention(Layer):
    """Attention on tensors already split into heads: ``(q, k, v, mask) -> y`` (4 -> 1).

    ``q (..., Lq, dh)``, ``k``/``v (..., Lk, dh)``, mask broadcastable to
    ``(..., Lq, Lk)``. No weights.
    """

    def __init__(self, dropout: float = 0.0, mode: str = "train"):
        super().__init__(n_in=4, n_out=1)
        self._dropout = _check_dropout("DotProductAttention", dropout)
        self._mode = _check_mode("DotProductAttention", mode)

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
            rng=_dropout_rng(self) if train_dropout else None,
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
    _check_heads("AttentionQKV", d_feature, n_heads)
    _check_dropout("AttentionQKV", dropout)
    _check_mode("AttentionQKV", mode)

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


# --------------------------------------------------------------------------
# Causal attention and its predict-mode KV cache
# --------------------------------------------------------------------------


@assert_shape("bld->bld")
def ConfigurableAttention(
    q_layer: Layer,
    k_layer: Layer,
    v_layer: Layer,
    final_layer: Layer,
    qkv_attention_layer: Layer,
    n_heads: int = 1,
    *,
    merged_batch_and_head: bool = True,
) -> Layer:
    """Self-attention from configurable parts (1 -> 1).

    ``Serial(Branch([q_layer, SplitIntoHeads], [k_layer, SplitIntoHeads],
    [v_layer, SplitIntoHeads]), qkv_attention_layer, MergeHeads, final_layer)``.
    ``merged_batch_and_head`` (keyword-only, retrax) selects the per-head
    layout: ``(B*H, L, dh)`` as in Trax, or ``(B, H, L, dh)``.
    """
    n_heads = _check_positive_int("ConfigurableAttention", "n_heads", n_heads)
    merged = merged_batch_and_head
    return Serial(
        Branch(
            [q_layer, SplitIntoHeads(n_heads, merged)],
            [k_layer, SplitIntoHeads(n_heads, merged)],
            [v_layer, SplitIntoHeads(n_heads, merged)],
        ),
        qkv_attention_layer,
        MergeHeads(n_heads, merged),
        final_layer,
    )


@assert_shape("bld->bld")
def CausalAttention(
    d_feature: int,
    n_heads: int = 1,
    dropout: float = 0.0,
    max_inference_length: int = 2048,
    use_dconv: bool = False,
    mode: str = "train",
) -> Layer:
    """Multi-head self-attention where position t sees positions <= t (1 -> 1).

    ``(B, L, D) -> (B, L, D)``; weights ``(Wq, bq), (Wk, bk), (Wv, bv), (Wo, bo)``.
    In ``'predict'`` mode the ``DotProductCausalAttention`` inside keeps a
    key/value cache of ``max_inference_length`` positions in its state (layout
    ``(B*H, max_inference_length, dh)``, as in Trax; ``predict_cache_length``
    around the init sets another length). ``use_dconv=True``
    (Trax's depthwise convolutions) is not implemented.
    """
    d_feature, n_heads = _check_heads("CausalAttention", d_feature, n_heads)
    if use_dconv:
        raise NotImplementedError(
            "CausalAttention: use_dconv=True (CausalDepthwiseConv on Q, K, V) is not "
            "implemented in retrax."
        )
    return ConfigurableAttention(
        Dense(d_feature),
        Dense(d_feature),
        Dense(d_feature),
        Dense(d_feature),
        n_heads=n_heads,
        qkv_attention_layer=DotProductCausalAttention(
            dropout=dropout, max_inference_length=max_inference_length, mode=mode
        ),
        merged_batch_and_head=False,
    )


class DotProductCausalAttention(Layer):
    """Causal attention on tensors split into heads: ``(q, k, v) -> y`` (3 -> 1).

    ``q``, ``k``, ``v``: ``(..., L, dh)`` (``(B, H, L, dh)`` inside
    ``CausalAttention``). Query ``t`` attends to keys ``0..t``.

    In ``'predict'`` mode the state is ``(k_cache, v_cache, index)`` with caches
    of shape ``(N, max_inference_length, dh)``, ``N`` the product of the leading
    axes of the init signature (``B*H``; dtype from the signature) and
    ``index`` an int32 scalar; an init inside ``with predict_cache_length(n)``
    makes caches of ``n`` positions instead. Each call writes its
    ``L`` new keys and values at ``index``, lets query ``i`` attend to cache
    positions ``<= index + i``, and advances ``index`` by ``L``; the first call
    may carry a whole prompt. Going past ``max_inference_length`` raises a
    ``ValueError`` when the index is concrete (eager calls); under ``jax.jit``
    the index is traced and cannot raise, so the outputs of such a call are
    NaN instead (Trax silently clamped the write).

    >>> import numpy as np
    >>> layer = DotProductCausalAttention(mode='eval')
    >>> layer
    DotProductCausalAttention_in3
    >>> x = np.ones((2, 4, 3), np.float32)
    >>> layer((x, x, x)).shape
    (2, 4, 3)
    """

    def __init__(self, dropout: float = 0.0, max_inference_length: int = 2048, mode: str = "train"):
        super().__init__(n_in=3, n_out=1)
        self._dropout = _check_dropout("DotProductCausalAttention", dropout)
        self._max_len = _check_positive_int(
            "DotProductCausalAttention", "max_inference_length", max_inference_length
        )
        self._mode = _check_mode("DotProductCausalAttention", mode)

    def init_weights_and_state(self, input_signature):
        if self._mode != "predict":
            return
        _, k_sig, v_sig = input_signature
        cache_len = _cache_length_option.get() or self._max_len

        def zeros(sig):
            shape = tuple(sig.shape)
            if len(shape) < 2:
                raise ValueError(
                    f"{self.name}: expected inputs of shape (..., length, d_head); got {shape}."
                )
            # Leading axes are merged, (B*H, L, dh) as in Trax: with a separate
            # size-1 batch axis XLA copied whole caches on every decoded token.
            return jnp.zeros((_cache_rows(shape), cache_len, shape[-1]),
                             np.dtype(sig.dtype))

        self.state = (zeros(k_sig), zeros(v_sig), jnp.array(0, jnp.int32))

    def forward(self, inputs):
        q, k, v = inputs
        if not q.ndim == k.ndim == v.ndim >= 2:
            raise ValueError(
                f"{self.name}_in3 expects q, k, v of shape (..., length, d_head); got "
                f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}."
            )
        if self._mode == "predict":
            return self._forward_predict(q, k, v)
        length = q.shape[-2]
        mask = jnp.tril(jnp.ones((length, k.shape[-2]), jnp.bool_))
        train_dropout = self._mode == "train" and self._dropout > 0.0
        return dot_product_attention(
            q,
            k,
            v,
            mask,
            dropout=self._dropout,
            mode=self._mode,
            rng=_dropout_rng(self) if train_dropout else None,
        )

    def _forward_predict(self, q, k, v):
        if not (isinstance(self.state, tuple) and len(self.state) == 3):
            raise ValueError(
                f"{self.name} in 'predict' mode has no key/value cache in its state; call "
                f"init(input_signature) on the model before decoding."
            )
        k_cache, v_cache, index = self.state
        length, cache_len = k.shape[-2], k_cache.shape[-2]
        lead = _cache_rows(k.shape)
        if lead != k_cache.shape[0] or k.shape[-1] != k_cache.shape[-1]:
            raise ValueError(
                f"{self.name}: the key/value cache was initialized for {k_cache.shape[0]} "
                f"rows (batch x heads) of width {k_cache.shape[-1]} but got keys of shape "
                f"{tuple(k.shape)}. Re-run init with the batch size used for decoding."
            )
        out_shape = q.shape
        q, k, v = (x.reshape((lead,) + x.shape[-2:]) for x in (q, k, v))
        start = _static_int(index)
        if length > cache_len or (start is not None and start + length > cache_len):
            at = "" if start is None else f" at position {start}"
            raise ValueError(
                f"{self.name}: cannot write {length} position(s){at} into a key/value cache of "
                f"length {cache_len} (max_inference_length). Build the model with a larger "
                f"max_inference_length (or max_len), or re-init the state to start a new "
                f"sequence."
            )
        k_cache = lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), index, -2)
        v_cache = lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), index, -2)
        query_pos = index + jnp.arange(length, dtype=jnp.int32)
        mask = jnp.arange(cache_len, dtype=jnp.int32)[None, :] <= query_pos[:, None]
        y = dot_product_attention(q, k_cache, v_cache, mask, mode="predict")
        if start is None:  # traced: signal an overflow with NaN (no silent clamping)
            y = jnp.where(index + length > cache_len, jnp.asarray(jnp.nan, y.dtype), y)
        self.state = (k_cache, v_cache, index + length)
        return y.reshape(out_shape[:-1] + (y.shape[-1],))


def _cache_rows(shape: tuple) -> int:
    """Rows of a key/value cache for inputs ``(..., L, dh)``: the leading axes merged."""
    return int(np.prod(shape[:-2], dtype=np.int64))


# --------------------------------------------------------------------------
# Shifts and masks
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
    _check_mode("ShiftRight", mode)
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


@assert_shape("...->b11l")
def PaddingMask(pad: int = 0) -> Layer:
    """Marks content positions: ``(B, L)`` ids ``-> (B, 1, 1, L)`` bool, false at ``pad`` (1 -> 1).

    >>> import numpy as np
    >>> PaddingMask()(np.array([[5, 0]])).tolist()
    [[[[True, False]]]]
    """

    def f(x):
        if x.ndim != 2:
            raise ValueError(
                f"PaddingMask({pad}) expects a 2-D array of token ids (batch, length); got "
                f"shape {tuple(x.shape)}."
            )
        return (x != pad).reshape(x.shape[0], 1, 1, x.shape[1])

    return Fn(f"PaddingMask({pad})", f)


def EncoderDecoderMask() -> Layer:
    """Mask for encoder-decoder attention (2 -> 1).

    ``(decoder_activations (B, Ld, D), padding_mask (B, 1, 1, Le)) -> (B, 1, Ld, Le)``.
    The result is boolean (Trax returned the same values as float32).

    >>> import numpy as np
    >>> m = EncoderDecoderMask()((np.zeros((1, 2, 4)), np.array([[[[True, False]]]])))
    >>> m.shape, m[0, 0].tolist()
    ((1, 1, 2, 2), [[True, False], [True, False]])
    """

    def f(decoder_input, mask):
        if decoder_input.ndim != 3:
            raise ValueError(
                f"EncoderDecoderMask expects decoder activations of shape (batch, "
                f"decoder_length, d_model); got shape {tuple(decoder_input.shape)}."
            )
        b, le = mask.shape[0], mask.shape[-1]
        mask = jnp.reshape(mask, (b, 1, 1, le))
        if mask.dtype != jnp.bool_:
            mask = mask != 0
        return jnp.broadcast_to(mask, (b, 1, decoder_input.shape[1], le))

    return Fn("EncoderDecoderMask", f)


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
        self._max_len = _check_positive_int("PositionalEncoding", "max_len", max_len)
        dropout = _check_dropout("PositionalEncoding", dropout)
        self._mode = _check_mode("PositionalEncoding", mode)
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
            else _check_positive_int("PositionalEncoding", "d_feature", d_feature)
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
            rng_start, rng_coin = jax.random.split(_dropout_rng(self))[:2]
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
        rng = fastmath_random.hash_fold_in(_dropout_rng(self), 1)
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
        start = _static_int(position)
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
