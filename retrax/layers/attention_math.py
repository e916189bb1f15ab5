"""The attention computation, heads and masks.

``dot_product_attention`` (scaled dot-product attention with Trax's masking
and dropout), ``SplitIntoHeads`` / ``MergeHeads`` (with the functions
``split_heads`` / ``merge_heads`` that the attention layers call), and the
masks ``PaddingMask`` and ``EncoderDecoderMask``. No layer here has weights.
Re-exported by ``retrax.layers.attention`` and as ``tl.X``.

Shapes: B batch, L sequence length, D ``d_feature``, H heads, ``dh = D // H``.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers.assert_shape import assert_shape
from retrax.layers.attention_checks import check_positive_int
from retrax.layers.base import Fn, Layer

__all__ = [
    "SplitIntoHeads",
    "MergeHeads",
    "PaddingMask",
    "EncoderDecoderMask",
    "dot_product_attention",
    "normalize_after_attention",
]


# Trax's value for masked-out attention logits (not -inf: a fully masked row
# then attends uniformly instead of producing NaN).
MASK_VALUE = -1e9

# Logits of these dtypes are scaled, masked and normalized (max, exp, sum) in float32:
# bfloat16's 8-bit mantissa would round a sum of ~256 exps to a multiple of 2, so the
# probabilities would not sum to one (Loop(compute_dtype='bfloat16') runs models in bfloat16).
_LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


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
    probabilities, then ``@ v``. One batched einsum for all heads. With
    bfloat16 (or float16) inputs the two matmuls run in that dtype but the
    softmax runs in float32, and the probabilities are cast back for ``@ v``.

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
    dots = jnp.einsum("...qd,...kd->...qk", q, k)
    low_dtype = dots.dtype if dots.dtype in _LOW_PRECISION else None
    if low_dtype is not None:  # softmax in float32; both matmuls stay in the low precision
        dots = dots.astype(jnp.float32)
    dots = dots / math.sqrt(q.shape[-1])
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            mask = mask != 0
        dots = jnp.where(mask, dots, jnp.asarray(MASK_VALUE, dots.dtype))
    # One exp per logit: exp(s - max s) / sum (Trax wrote exp(s - logsumexp s),
    # which computes the exps twice, and once more in the gradient; on small
    # sequences XLA:CPU's exp is slow, and config S trained 16% faster).
    exps = jnp.exp(dots - lax.stop_gradient(jnp.max(dots, axis=-1, keepdims=True)))
    probs = exps / jnp.sum(exps, axis=-1, keepdims=True)
    if mode == "train" and dropout > 0.0:
        keep = fastmath_random.hash_bernoulli(rng, 1.0 - dropout, probs.shape)
        probs = jnp.where(keep, probs / (1.0 - dropout), jnp.zeros_like(probs))
    if low_dtype is not None:
        probs = probs.astype(low_dtype)
    return jnp.einsum("...qk,...kd->...qd", probs, v)


def normalize_after_attention(q: Any, k: Any, v: Any, mask: Any, invalid: Any = None) -> Any:
    """``dot_product_attention`` without dropout, normalized after the product with ``v``.

    ``(exp(s - max s) @ v) / sum(exp(s - max s))`` for the scaled, masked
    logits ``s``: the same values up to float rounding, with the division on
    the ``(..., Lq, dv)`` result instead of the ``(..., Lq, Lk)``
    probabilities. Predict-mode attention over a key/value cache uses it: one
    fewer pass over the logits per decoded token. ``mask`` is boolean,
    broadcastable to ``(..., Lq, Lk)``; where ``invalid`` (a boolean scalar)
    is true the result is NaN. bfloat16/float16 logits are normalized in
    float32, as in ``dot_product_attention``.

    >>> import numpy as np
    >>> q = k = np.eye(2, dtype=np.float32)[None]
    >>> v = np.array([[[1.0], [3.0]]], np.float32)
    >>> causal = np.tril(np.ones((2, 2), bool))
    >>> y = normalize_after_attention(q, k, v, causal)
    >>> np.asarray(y, np.float64).round(4).tolist()
    [[[1.0], [2.3395]]]
    """
    dots = jnp.einsum("...qd,...kd->...qk", q, k)
    low_dtype = dots.dtype if dots.dtype in _LOW_PRECISION else None
    if low_dtype is not None:
        dots = dots.astype(jnp.float32)
    dots = jnp.where(mask, dots / math.sqrt(q.shape[-1]), jnp.asarray(MASK_VALUE, dots.dtype))
    weights = jnp.exp(dots - jnp.max(dots, axis=-1, keepdims=True))
    scale = 1.0 / jnp.sum(weights, axis=-1, keepdims=True)
    if invalid is not None:
        scale = jnp.where(invalid, jnp.asarray(jnp.nan, scale.dtype), scale)
    y = jnp.einsum("...qk,...kd->...qd", weights.astype(v.dtype), v)
    return (y * scale.astype(y.dtype)) if low_dtype is None else (y * scale).astype(y.dtype)


def split_heads(x: Any, n_heads: int) -> Any:
    """``(B, L, D) -> (B, H, L, dh)``."""
    b, length, d = x.shape
    return x.reshape(b, length, n_heads, d // n_heads).transpose(0, 2, 1, 3)


def merge_heads(x: Any) -> Any:
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
    n_heads = check_positive_int("SplitIntoHeads", "n_heads", n_heads)

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
        y = split_heads(x, n_heads)
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
    n_heads = check_positive_int("MergeHeads", "n_heads", n_heads)

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
        return merge_heads(x)

    return Fn("MergeHeads", f)


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


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
