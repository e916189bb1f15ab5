"""The arithmetic of Trax's efficient attention layers, for one example and head.

``attend`` is dot-product attention over ``(length, depth)`` arrays with
optional chunking (each chunk of queries sees its own chunk of keys and
``n_chunks_before``/``n_chunks_after`` neighbouring ones, wrapping around at
the ends) and masking by position metadata (``mask_self_attention``). It also
returns the log-sum-exp of each query's scores, which LSH attention uses to
combine several hashing rounds. ``SelfAttention``, ``LSHSelfAttention`` and
``EncDecAttention`` (``retrax.layers.efficient_attention``,
``retrax.layers.lsh_attention``) ``vmap`` these functions over heads and
examples.

Position metadata ("info") are 1-based positions; a negative info marks a
key that must not be attended to (padding). Masks are applied as Trax does:
by subtracting a large number from the scores (1e9 for causal and padding
masks, 1e5 for a query's own key under shared query-keys), not by setting
them to minus infinity.

>>> import numpy as np
>>> q = np.eye(4, dtype=np.float32)
>>> causal = lambda dots, qi, ki: mask_self_attention(dots, qi, ki, exclude_self=False)
>>> out, lse = attend(q, q, q, mask_fn=causal)
>>> np.round(np.asarray(out, np.float64)[1], 3).tolist()   # query 1 sees keys 0, 1: e^0, e^0.5
[0.378, 0.622, 0.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from retrax.fastmath import random as fastmath_random

__all__ = [
    "length_normalized",
    "look_adjacent",
    "mask_self_attention",
    "attend",
    "check_chunking",
]


def length_normalized(x: Any, epsilon: float = 1e-6) -> Any:
    """``x`` divided by the root mean square of its last axis (Trax's shared-QK keys)."""
    variance = jnp.mean(x ** 2, axis=-1, keepdims=True)
    return x / jnp.sqrt(variance + epsilon)


def look_adjacent(x: Any, n_chunks_before: int, n_chunks_after: int) -> Any:
    """Chunks ``(n_chunks, chunk_len, ...)`` joined with their neighbours on axis 1.

    Chunk ``c`` becomes chunks ``c - n_chunks_before .. c + n_chunks_after``
    (indices wrap around), concatenated: ``(n_chunks, N * chunk_len, ...)``
    with ``N = 1 + n_chunks_before + n_chunks_after``.

    >>> import numpy as np
    >>> look_adjacent(np.arange(3).reshape(3, 1), 1, 0).tolist()
    [[2, 0], [0, 1], [1, 2]]
    """
    if n_chunks_before == 0 and n_chunks_after == 0:
        return x
    parts = [x if i == 0 else jnp.roll(x, -i, axis=0)
             for i in range(-n_chunks_before, n_chunks_after + 1)]
    return jnp.concatenate(parts, axis=1)


def mask_self_attention(dots: Any, q_info: Any, kv_info: Any, causal: bool = True,
                        exclude_self: bool = True, masked: bool = False) -> Any:
    """Scores with masked pairs pushed down, by position metadata (see the module doc).

    ``causal``: a query does not see later keys (``q_info < kv_info``).
    ``exclude_self``: a query sees its own key only when nothing else is left
    (1e5 is subtracted). ``masked``: keys with negative info are padding.
    """
    q_info = q_info.astype(jnp.float32)
    kv_info = kv_info.astype(jnp.float32)
    if causal:
        dots = dots - 1e9 * (q_info < kv_info)
    if exclude_self:
        dots = dots - 1e5 * (q_info == kv_info)
    if masked:
        dots = dots - 1e9 * (kv_info < 0)
    return dots


def check_chunking(owner: str, length: int, chunk_len: int | None) -> None:
    """Refuses a sequence length that ``chunk_len`` does not divide, saying what to change."""
    if chunk_len is not None and length % chunk_len:
        raise ValueError(
            f"{owner}: chunk_len={chunk_len} must divide the sequence length, but the input "
            f"has length {length}. Pad the sequences to a multiple of {chunk_len} or choose "
            f"a chunk_len that divides {length}.")


def attend(q: Any, k: Any = None, v: Any = None, q_chunk_len: int | None = None,
           kv_chunk_len: int | None = None, n_chunks_before: int = 0,
           n_chunks_after: int = 0, mask_fn: Any = None, q_info: Any = None,
           kv_info: Any = None, dropout: float = 0.0, rng: Any = None,
           trax_rounding: bool = False) -> tuple[Any, Any]:
    """Dot-product attention of ``q`` ``(Lq, d)`` over ``k`` ``(Lk, d)``, ``v`` ``(Lk, dv)``.

    ``k=None`` shares queries and keys (keys are ``length_normalized(q)``).
    Keys are scaled by ``1 / sqrt(d)``. With chunk lengths, queries and
    keys are cut into chunks and each query chunk attends to its key chunk
    and the adjacent ones (``look_adjacent``). ``mask_fn(dots, q_info,
    kv_info)`` masks scores; ``q_info``/``kv_info`` default to the 1-based
    positions. ``dropout`` drops attention weights with a mask of one chunk's
    shape shared by all chunks (``rng`` is then required).
    ``trax_rounding`` computes the weights as ``exp(dots - logsumexp)`` the way
    Trax 1.4.1 does (kept for ``EncDecAttention``'s checkpoints, whose masked
    scores all sit near -1e9); otherwise they are normalized by the maximum
    score, exact at any offset.

    Returns ``(out (Lq, dv), logsumexp (Lq,))``.
    """
    share_qk = k is None
    if q_info is None:
        q_info = jnp.arange(1, q.shape[-2] + 1, dtype=jnp.int32)
    if kv_info is None and not share_qk:
        kv_info = jnp.arange(1, v.shape[-2] + 1, dtype=jnp.int32)

    if q_chunk_len is not None:
        q = jnp.reshape(q, (-1, q_chunk_len, q.shape[-1]))
        q_info = jnp.reshape(q_info, (-1, q_chunk_len))
    if share_qk:
        k = q
        kv_chunk_len = q_chunk_len
        if kv_info is None:
            kv_info = q_info
        elif kv_chunk_len is not None:
            kv_info = jnp.reshape(kv_info, (-1, kv_chunk_len))
    elif kv_chunk_len is not None:
        k = jnp.reshape(k, (-1, kv_chunk_len, k.shape[-1]))
        kv_info = jnp.reshape(kv_info, (-1, kv_chunk_len))
    if kv_chunk_len is not None:
        v = jnp.reshape(v, (-1, kv_chunk_len, v.shape[-1]))

    if share_qk:
        k = length_normalized(k)
    k = k / jnp.sqrt(jnp.asarray(k.shape[-1], k.dtype))

    if (q_chunk_len is None) != (kv_chunk_len is None):
        raise ValueError("attend: chunk queries and keys both or neither.")
    if q_chunk_len is None and (n_chunks_before or n_chunks_after):
        raise ValueError("attend: n_chunks_before/after need chunk lengths.")
    k = look_adjacent(k, n_chunks_before, n_chunks_after)
    v = look_adjacent(v, n_chunks_before, n_chunks_after)
    kv_info = look_adjacent(kv_info, n_chunks_before, n_chunks_after)

    dots = jnp.matmul(q, jnp.swapaxes(k, -1, -2))
    if mask_fn is not None:
        dots = mask_fn(dots, q_info[..., :, None], kv_info[..., None, :])
    if trax_rounding:  # Trax 1.4.1: exp(dots - lse), rounded where scores sit near -1e9
        lse = jax.nn.logsumexp(dots, axis=-1, keepdims=True)
        dots = jnp.exp(dots - lse)
    else:  # normalized by the maximum: exact also for scores near -1e5 or -1e9
        top = lax.stop_gradient(jnp.max(dots, axis=-1, keepdims=True))
        unnormalized = jnp.exp(dots - top)
        total = jnp.sum(unnormalized, axis=-1, keepdims=True)
        lse = top + jnp.log(total)
        dots = unnormalized / total
    if dropout > 0.0:
        if rng is None:
            raise ValueError(f"attend: dropout={dropout} needs an rng.")
        keep_prob = 1.0 - dropout
        keep = fastmath_random.hash_bernoulli(rng, keep_prob, dots.shape[-2:])
        dots = dots * (keep.astype(dots.dtype) / keep_prob)
    out = jnp.matmul(dots, v)
    return jnp.reshape(out, (-1, out.shape[-1])), jnp.reshape(lse, (-1,))
