"""Causal self-attention and its predict-mode key/value cache.

``CausalAttention`` (position t sees positions <= t), built by
``ConfigurableAttention`` around ``DotProductCausalAttention``, which keeps a
key/value cache in its state in ``'predict'`` mode; ``predict_cache_length``
sets the length of the caches that an init creates. Re-exported by
``retrax.layers.attention`` and as ``tl.X``; the modes are described there.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.fastmath.linalg import dense_dot
from retrax.layers.assert_shape import assert_shape
from retrax.layers.attention_checks import (
    check_dropout,
    check_heads,
    check_positive_int,
    dropout_rng,
    static_int,
)
from retrax.layers.attention_math import (
    MergeHeads,
    SplitIntoHeads,
    dot_product_attention,
    normalize_after_attention,
    split_heads,
)
from retrax.layers.base import Layer
from retrax.layers.core import Dense, check_mode
from retrax.layers.stack_combinators import Branch, Serial

__all__ = [
    "CausalAttention",
    "DotProductCausalAttention",
    "ConfigurableAttention",
    "predict_cache_length",
]


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
    length = check_positive_int("predict_cache_length", "length", length)
    token = _cache_length_option.set(length)
    try:
        yield length
    finally:
        _cache_length_option.reset(token)


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
    mode: str | None = None,
) -> Layer:
    """Self-attention from configurable parts (1 -> 1).

    ``Serial(Branch([q_layer, SplitIntoHeads], [k_layer, SplitIntoHeads],
    [v_layer, SplitIntoHeads]), qkv_attention_layer, MergeHeads, final_layer)``.
    ``merged_batch_and_head`` (keyword-only, retrax) selects the per-head
    layout: ``(B*H, L, dh)`` as in Trax, or ``(B, H, L, dh)``. ``mode``
    (keyword-only, retrax): with ``'predict'``, three ``Dense`` layers as
    ``q_layer``, ``k_layer``, ``v_layer`` run as one product (``ProjectQKV``).
    """
    n_heads = check_positive_int("ConfigurableAttention", "n_heads", n_heads)
    merged = merged_batch_and_head
    return Serial(
        ProjectQKV(q_layer, k_layer, v_layer, n_heads, merged, mode=mode),
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
    around the init sets another length), and the q/k/v projections run as
    one product (``ProjectQKV``). ``use_dconv=True``
    (Trax's depthwise convolutions) is not implemented.
    """
    d_feature, n_heads = check_heads("CausalAttention", d_feature, n_heads)
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
        mode=mode,
    )


class ProjectQKV(Serial):
    """``Branch([q_dense, SplitIntoHeads], [k_dense, ...], [v_dense, ...])`` (1 -> 3).

    ``(B, L, D) -> q, k, v`` of shape ``(B, H, L, dh)``, each from its own
    ``Dense``. Weights, state and printed structure are those of that
    ``Branch`` (Trax's layout: three separate ``(W, b)``). In ``'predict'``
    mode the three products run as one, ``x @ [Wq | Wk | Wv]``: decoding a
    token then launches one matrix product instead of three (XLA hoists the
    concatenation of the weights out of a decoding loop). Other modes (and
    ``mode=None``, a layer without a mode of its own; or layers other than
    three biased ``Dense``) run the ``Branch`` as it is.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> layer = ProjectQKV(tl.Dense(4), tl.Dense(4), tl.Dense(4), n_heads=2, mode='predict')
    >>> _ = layer.init(shapes.ShapeDtype((1, 3, 4)))
    >>> [y.shape for y in layer(np.ones((1, 3, 4), np.float32))]
    [(1, 2, 3, 2), (1, 2, 3, 2), (1, 2, 3, 2)]
    """

    def __init__(self, q_layer: Layer, k_layer: Layer, v_layer: Layer, n_heads: int,
                 merged_batch_and_head: bool = False, mode: str | None = None):
        n_heads = check_positive_int("ProjectQKV", "n_heads", n_heads)
        merged = merged_batch_and_head
        branches = [[layer, SplitIntoHeads(n_heads, merged)] for layer in (q_layer, k_layer, v_layer)]
        branch = Branch(*branches)
        super().__init__(*branch.sublayers, name="Branch", sublayers_to_print=branches)
        self._n_heads = n_heads
        self._merged = merged
        self._dense = all(type(layer) is Dense for layer in (q_layer, k_layer, v_layer))
        self._mode = None if mode is None else check_mode("ProjectQKV", mode)

    def forward_in_pass(self, x, weights, state, rng, ctx):
        fuse = self._mode == "predict" and self._dense
        dense = _dense_weights(x, weights, self._n_heads) if fuse else None
        if dense is None:  # not predict, or not three biased Dense of x's width: the Branch
            return super().forward_in_pass(x, weights, state, rng, ctx)
        w = jnp.concatenate([w for w, _ in dense], axis=1)
        b = jnp.concatenate([b for _, b in dense], axis=0)
        y = dense_dot(x, w) + b
        sizes = np.cumsum([w.shape[1] for w, _ in dense])[:-1]
        qkv = [split_heads(part, self._n_heads) for part in jnp.split(y, sizes, axis=-1)]
        if self._merged:
            qkv = [part.reshape((-1,) + part.shape[2:]) for part in qkv]
        return tuple(qkv), state


def _dense_weights(x, weights, n_heads):
    """The three ``(W, b)`` of ``ProjectQKV``'s weights if one product can replace them."""
    try:
        _, branch_weights = weights
        dense = [branch[0] for branch in branch_weights]
        ok = len(dense) == 3 and all(
            len(wb) == 2 and wb[0].ndim == 2 and wb[1].shape == wb[0].shape[1:]
            and wb[0].shape[0] == x.shape[-1] and wb[0].shape[1] % n_heads == 0
            for wb in dense)
    except (TypeError, ValueError, AttributeError, IndexError):
        return None
    if not ok or x.ndim != 3 or len({wb[0].dtype for wb in dense}) != 1:
        return None
    return dense


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
    positions ``<= index + i`` (``normalize_after_attention``: the softmax
    normalized after the product with the values), and advances ``index`` by
    ``L``; the first call may carry a whole prompt. Going past ``max_inference_length`` raises a
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
        self._dropout = check_dropout("DotProductCausalAttention", dropout)
        self._max_len = check_positive_int(
            "DotProductCausalAttention", "max_inference_length", max_inference_length
        )
        self._mode = check_mode("DotProductCausalAttention", mode)

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
            rng=dropout_rng(self) if train_dropout else None,
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
        start = static_int(index)
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
        # Traced index: an overflow gives NaN (no silent clamping).
        invalid = index + length > cache_len if start is None else None
        y = normalize_after_attention(q, k_cache, v_cache, mask, invalid)
        self.state = (k_cache, v_cache, index + length)
        return y.reshape(out_shape[:-1] + (y.shape[-1],))


def _cache_rows(shape: tuple) -> int:
    """Rows of a key/value cache for inputs ``(..., L, dh)``: the leading axes merged."""
    return int(np.prod(shape[:-2], dtype=np.int64))
