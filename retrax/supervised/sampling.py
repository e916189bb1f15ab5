"""Choosing a token from log-probabilities: greedy, Gumbel-max, top-k and top-p.

Each choice also holds for logits (log-probabilities up to a constant per
row): the argmax, the Gumbel-max draw and the top-k support do not move when
a row is shifted, and top-p normalizes its input itself. ``sample_step``'s
``from_logits`` says which it is given (a decoding program that skips the
model's final ``LogSoftmax`` passes logits). Sort-free: the argmax is one
(value, index) reduction (or a max/compare/min for long rows), and the top-k /
top-p thresholds are found by a bitwise search over order-preserving integer
keys (XLA's CPU sort is slow). Tokens tied with the last one kept are all kept, so with ties
the support can exceed ``k``. Used by ``retrax.supervised.decoding``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from retrax.fastmath import random as fastmath_random

__all__ = ["argmax", "ordered_keys", "smallest_key", "restrict", "sample", "sample_step",
           "SEARCH_BITS", "ONE_PASS_ARGMAX"]

SEARCH_BITS = 2  # key bits decided per round of smallest_key (16 rounds)
ONE_PASS_ARGMAX = 4096  # rows up to this long: argmax in one (value, index) reduction


def argmax(x: Any, finite: bool = False) -> Any:
    """First index of each row's maximum, as int32 (``jnp.argmax``, NaN aside).

    A row holding NaN gives an index past the end; callers check for NaN. With
    ``finite``, so does a row whose maximum is infinite (``+inf``, or every
    value ``-inf``): for logits, the rows whose ``log_softmax`` is NaN.

    Rows of up to ``ONE_PASS_ARGMAX`` values take one reduction of (value,
    index) pairs: one kernel, where a max, a compare and a min are four on
    XLA's CPU backend (each 256-wide reduction is split in two); a decoding
    step pays per kernel. Longer rows take the max/compare/min, which XLA runs
    vectorized (the pair reduction is a scalar loop).

    >>> import numpy as np
    >>> argmax(np.array([[1.0, 3.0, 3.0], [np.nan, 0.0, 1.0]])).tolist()
    [1, 3]
    >>> argmax(np.array([[0.0, np.inf, 1.0], [-np.inf, -np.inf, -np.inf]]), finite=True).tolist()
    [3, 3]
    """
    x = jnp.asarray(x)
    n = x.shape[-1]
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    if n <= ONE_PASS_ARGMAX:
        top, first = lax.reduce((x, index), (jnp.asarray(-jnp.inf, x.dtype), jnp.int32(n)),
                                _larger_pair, (x.ndim - 1,))
        bad = ~jnp.isfinite(top) if finite else jnp.isnan(top)
        return jnp.where(bad, n, first)
    top = jnp.max(x, axis=-1, keepdims=True)
    if finite:  # the row's compare fails everywhere: the min is the index past the end
        top = jnp.where(jnp.isfinite(top), top, jnp.nan)
    return jnp.min(jnp.where(x == top, index, n), axis=-1)


def _larger_pair(a: Any, b: Any) -> tuple[Any, Any]:
    """The (value, index) pair argmax keeps: the larger value, on a tie the lower index.

    NaN wins over everything (its pair becomes (NaN, any index)), so the order
    of the reduction does not matter: the result is the row's first maximum,
    or NaN.
    """
    (va, ia), (vb, ib) = a, b
    take_a = (va > vb) | ((va == vb) & (ia < ib)) | jnp.isnan(va)
    return jnp.where(take_a, va, vb), jnp.where(take_a, ia, ib)


def ordered_keys(x: Any) -> Any:
    """uint32 keys with the order of the float32 values ``x`` (``-inf`` lowest, NaN highest)."""
    x = x.astype(jnp.float32)
    x = jnp.where(x == 0.0, jnp.float32(0.0), x)  # -0.0 ties with +0.0
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    keys = jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))
    return jnp.where(jnp.isnan(x), jnp.uint32(0xFFFFFFFF), keys)  # NaN (any sign) on top


def smallest_key(keys: Any, weights: Any, limit: Any) -> Any:
    """Per row, the smallest key ``t`` with ``sum(weights[keys > t]) < limit``.

    The sum only falls as ``t`` grows, so ``t`` is found bit by bit from the
    top, deciding ``SEARCH_BITS`` bits per round by trying every value of
    them at once. No sort: XLA's CPU sort costs ~40 us for a row of 256.
    """
    t = jnp.zeros(keys.shape[:-1], jnp.uint32)
    n = 1 << SEARCH_BITS
    tries = jnp.arange(n - 1, dtype=jnp.uint32)
    for shift in range(32 - SEARCH_BITS, -1, -SEARCH_BITS):
        # Candidates: the bits decided so far, each value of this round's bits,
        # and all lower bits set (the largest key with that prefix).
        cand = t[..., None] | (tries << shift) | jnp.uint32((1 << shift) - 1)
        above = keys[..., None, :] > cand[..., :, None]
        mass = jnp.sum(jnp.where(above, weights[..., None, :], 0.0), axis=-1)
        t = t | (jnp.sum(mass >= limit, axis=-1).astype(jnp.uint32) << shift)
    return t


def restrict(logits: Any, top_k: int | None, top_p: float | None) -> Any:
    """Sets logits outside the top-k / nucleus support to -inf.

    Top-k keeps the tokens whose logit is at least the k-th largest; top-p the
    most likely tokens whose probability mass *before* them (in order of
    probability) is below ``top_p``: the smallest set reaching ``top_p``. Tokens
    tied with the last one kept are all kept, so with ties the support can be
    larger than ``k`` (no arbitrary tie-breaking).
    """
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    keys = ordered_keys(logits)
    if top_k is not None and top_k < logits.shape[-1]:
        t = smallest_key(keys, jnp.ones(logits.shape, jnp.float32), jnp.float32(top_k))
        logits = jnp.where(keys >= t[..., None], logits, neg)
        keys = ordered_keys(logits)
    if top_p is not None and top_p < 1.0:
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        t = smallest_key(keys, probs, jnp.float32(top_p))
        logits = jnp.where(keys >= t[..., None], logits, neg)
    return logits


def sample(log_probs: Any, key: Any, temperature: float, top_k: int | None,
           top_p: float | None) -> Any:
    """One token per row: argmax at temperature 0, else Gumbel-max over the support.

    ``log_probs`` may be logits (any constant added per row): the argmax, the
    Gumbel-max draw, top-k and top-p (``restrict`` normalizes for it) choose
    the same, up to float rounding. The Gumbel noise comes from the counter
    hash of ``fastmath.random`` (one fused elementwise computation), not
    threefry, which costs as much as the model's forward pass for a small
    model at batch 1.
    """
    if temperature == 0.0:
        return argmax(log_probs)
    logits = restrict(log_probs / temperature, top_k, top_p)
    bits = fastmath_random.hash_bits(key, logits.shape)
    # 24 random bits -> uniform in (0, 1), never exactly 0 or 1.
    u = (bits >> 8).astype(jnp.float32) * (1.0 / 16777216.0) + (0.5 / 16777216.0)
    gumbel = -jnp.log(-jnp.log(u))
    # The top 24-bit value rounds u to 1.0 in float32, so that noise is +inf: a token
    # outside the support (-inf) must stay -inf, not become NaN (an index past the end).
    return argmax(jnp.where(logits == -jnp.inf, logits, logits + gumbel))


def sample_step(log_probs: Any, key: Any, t: Any, temperature: float, top_k: int | None,
                top_p: float | None, eos_id: int | None, tokens: Any, scores: Any, done: Any,
                nan_step: Any, from_logits: bool = False) -> tuple[Any, Any, Any, Any, Any]:
    """One step of a decoding loop: ``(tok, tokens, scores, done, nan_step)``.

    Samples a token per row from ``log_probs`` ``(B, V)`` with the step's key
    (``key`` folded with ``t``), writes it and its log-probability at column
    ``t`` of ``tokens``/``scores`` (``scores=None``: not kept, ``None`` back),
    and updates ``done`` (EOS or NaN) and ``nan_step`` (the first step at which
    a row's log-probabilities held NaN). A finished row gets token 0 and score 0.

    NaN needs no check of its own: ``sample`` returns an index past the end
    (``V``) exactly when the row holds NaN (its maximum is NaN, and top-k /
    top-p keep NaN, whose key is the largest).

    ``from_logits``: ``log_probs`` are logits, whose ``log_softmax`` is NaN
    also where a logit is ``+inf`` or all are ``-inf``; such rows count as NaN
    too (greedy: ``argmax(finite=True)``; sampled: the chosen logit is not
    finite). ``scores`` are then not allowed (they need log-probabilities).
    """
    vocab = log_probs.shape[-1]
    if from_logits and scores is not None:
        raise ValueError("sample_step: scores need log-probabilities, not logits.")
    if from_logits and temperature == 0.0:
        tok = argmax(log_probs, finite=True)
    else:
        tok = sample(log_probs, fastmath_random.hash_fold_in(key, t), temperature, top_k,
                     top_p)
    is_nan = tok >= vocab
    if from_logits and temperature != 0.0:  # greedy's argmax(finite=True) checked already
        chosen = jnp.take_along_axis(log_probs, jnp.minimum(tok, vocab - 1)[:, None],
                                     axis=1)[:, 0]
        is_nan = is_nan | ~jnp.isfinite(chosen)
    nan_step = jnp.where(is_nan & ~done, t, nan_step)  # a NaN row is done after
    tok = jnp.where(done | is_nan, 0, tok)
    tokens = lax.dynamic_update_slice_in_dim(tokens, tok[:, None], t, axis=1)
    if scores is not None:
        chosen = jnp.take_along_axis(log_probs, tok[:, None], axis=1)[:, 0]
        scores = lax.dynamic_update_slice_in_dim(
            scores, jnp.where(done, 0.0, chosen)[:, None], t, axis=1)
    done = done | is_nan
    if eos_id is not None:
        done = done | (tok == eos_id)
    return tok, tokens, scores, done, nan_step
