"""Locality-sensitive-hashing attention (Trax's ``LSHSelfAttention``) and its hashing functions.

Queries double as keys (shared query-key). Each of ``n_hashes`` rounds
hashes the queries into ``n_buckets`` buckets by a random rotation (the
bucket is the argmax over ``[xR, -xR]``; a list of bucket counts factorizes
the hash). The positions of all rounds are sorted by (round, bucket,
position), the sorted sequence is cut into chunks of ``chunk_len``, and each
chunk attends to itself and to ``n_chunks_before``/``n_chunks_after``
neighbouring chunks: a query sees the keys of its own bucket and of the
neighbouring ones. The rounds' outputs are averaged with weights given by
their log-sum-exps. Memory is ``O(n_hashes * length * chunk_len)``.

Hash rotations come from keys: the layer's state holds a hash key drawn at
``init`` (so ``'eval'`` and ``'predict'`` are deterministic for a seed); in
``'train'`` mode with an rng given to the call, fresh rotations are drawn
from that rng each step, as Trax's evolving hash state did. Rotations
differ between heads and are shared by the examples of a batch (an
example's output does not depend on its place in the batch).

``'predict'`` mode keeps the last ``predict_mem_len`` inputs (see
``SelfAttention``). A prompt (a first call longer than ``predict_drop_len``)
is attended exactly as in ``'eval'`` (padded at the end to a multiple of
``chunk_len`` first, as Trax does). A single new token attends, as in Trax,
to at most ``n_hashes * chunk_len * (1 + n_chunks_before)`` earlier
positions, preferring those that share a bucket with it in some round, then
the most recent; while the memory holds no more than that, this is full
causal attention, which is also what ``'eval'`` computes when the
chunk window covers the whole sorted sequence.

>>> import numpy as np
>>> from retrax import shapes
>>> attn = LSHSelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
...                         n_hashes=2, n_buckets=4, mode='eval')
>>> _ = attn.init(shapes.ShapeDtype((1, 8, 6)))
>>> attn(np.ones((1, 8, 6), np.float32)).shape
(1, 8, 6)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers.attention_checks import check_positive_int
from retrax.layers.broadcasted_dropout import apply_broadcasted_dropout
from retrax.layers.chunked_attention import attend, length_normalized, mask_self_attention
from retrax.layers.efficient_attention import (
    SelfAttention,
    check_attention_input,
    check_attention_mask,
    run_heads,
)

__all__ = ["LSHSelfAttention"]


def check_buckets(owner: str, n_buckets: Any) -> Any:
    if n_buckets is None:
        return None
    factors = list(n_buckets) if isinstance(n_buckets, (list, tuple)) else [n_buckets]
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, int) or f < 2 or f % 2:
            raise ValueError(
                f"{owner}: n_buckets must be an even int >= 2 or a list of them (a factorized "
                f"hash); got {n_buckets!r}. Use an even number of buckets.")
    return n_buckets if isinstance(n_buckets, int) else tuple(factors)


def buckets_for_length(length: int, chunk_len: int) -> Any:
    """Trax's default bucket count: ``2 * length / chunk_len``, factorized above 128."""
    n_buckets = 2 * max(1, length // chunk_len)
    if n_buckets <= 128:
        return n_buckets
    first = 2 ** math.ceil(math.log2(math.sqrt(n_buckets)))
    return (first, 2 * (n_buckets // (2 * first)))


def bucket_count(owner: str, n_buckets: Any, length: int, chunk_len: int,
                 max_length_for_buckets: int | None = None) -> Any:
    """``n_buckets`` (or Trax's default for ``length``), refused when there are more buckets
    than positions in a sequence of ``length`` or ``max_length_for_buckets``."""
    n_buckets = n_buckets or buckets_for_length(length, chunk_len)
    total = math.prod(n_buckets) if isinstance(n_buckets, tuple) else n_buckets
    limit = max(length, max_length_for_buckets or 0)
    if total > limit:
        raise ValueError(
            f"{owner}: {total} buckets do not fit a sequence of length {length} (most "
            f"buckets would stay empty); use n_buckets <= {length} (Trax's default is 2 * "
            f"length / chunk_len), or pass max_length_for_buckets >= {total} if sequences "
            f"that long are meant.")
    return n_buckets


def hash_rotations(key: Any, d: int, n_hashes: int, n_buckets: Any) -> Any:
    """Random rotations ``(d, n_hashes, rot_size // 2)`` for ``hash_vectors``."""
    factors = n_buckets if isinstance(n_buckets, tuple) else (n_buckets,)
    return jax.random.normal(key, (d, n_hashes, sum(factors) // 2), jnp.float32)


def hash_vectors(vecs: Any, rotations: Any, n_buckets: Any) -> tuple[Any, int]:
    """Buckets ``(n_hashes, length)`` of ``vecs`` ``(length, d)`` and the bucket count."""
    factors = n_buckets if isinstance(n_buckets, tuple) else (n_buckets,)
    rotated = jnp.einsum("tf,fhb->htb", vecs.astype(jnp.float32), rotations)
    buckets, start, scale = jnp.zeros(rotated.shape[:2], jnp.int32), 0, 1
    for f in factors:
        part = rotated[..., start:start + f // 2]
        start += f // 2
        buckets = buckets + scale * jnp.argmax(
            jnp.concatenate([part, -part], axis=-1), axis=-1).astype(jnp.int32)
        scale *= f
    return buckets, scale


@jax.custom_vjp
def permute_rows(x: Any, perm: Any, inverse: Any) -> Any:
    """``x[perm]`` for a permutation ``perm`` whose inverse is ``inverse``.

    Its gradient is the gather ``ct[inverse]``; autodiff of ``x[perm]`` would
    scatter-add into a zero buffer, which XLA allocates for every layer at once.

    >>> import jax.numpy as jnp
    >>> permute_rows(jnp.array([10., 20., 30.]), jnp.array([2, 0, 1]), jnp.array([1, 2, 0]))
    Array([30., 10., 20.], dtype=float32)
    """
    return x[perm]


def _permute_rows_forward(x: Any, perm: Any, inverse: Any) -> tuple[Any, Any]:
    return x[perm], inverse


def _permute_rows_backward(inverse: Any, ct: Any) -> tuple[Any, None, None]:
    return ct[inverse], None, None


permute_rows.defvjp(_permute_rows_forward, _permute_rows_backward)


def lsh_attend(q: Any, v: Any, rotations: Any, n_buckets: Any, chunk_len: int,
               n_chunks_before: int, n_chunks_after: int, causal: bool, mask: Any = None,
               dropout: float = 0.0, rng: Any = None) -> Any:
    """LSH attention of one head: ``q`` ``(L, d)`` (also the keys), ``v`` ``(L, dv)`` -> ``(L, dv)``.

    ``mask`` ``(L,)`` (True for real tokens) puts padding in a bucket of its own
    and hides it as a key.
    """
    length = q.shape[0]
    n_hashes = rotations.shape[1]
    buckets, total = hash_vectors(lax.stop_gradient(q), rotations, n_buckets)
    if mask is not None:
        total += 1
        buckets = jnp.where(mask[None, :], buckets, total - 1)
    buckets = (buckets + total * jnp.arange(n_hashes, dtype=jnp.int32)[:, None]).reshape(-1)
    ticker = jnp.arange(n_hashes * length, dtype=jnp.int32)
    sort_keys = lax.stop_gradient(length * buckets + ticker % length)
    sticker = jnp.argsort(sort_keys)
    undo = jnp.argsort(sticker)
    st = sticker % length
    info = st + 1
    kv_info = info if mask is None else jnp.where(mask[st], info, -info)
    mask_fn = functools.partial(mask_self_attention, causal=causal, exclude_self=True,
                                masked=mask is not None)
    # Gathers by the sort permutation of all rounds (the rows tiled once per round).
    tiled_q, tiled_v = jnp.tile(q, (n_hashes, 1)), jnp.tile(v, (n_hashes, 1))
    so, slse = attend(permute_rows(tiled_q, sticker, undo), None,
                      permute_rows(tiled_v, sticker, undo), q_chunk_len=chunk_len,
                      n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after,
                      mask_fn=mask_fn, q_info=info, kv_info=kv_info, dropout=dropout, rng=rng)
    o = permute_rows(so, undo, sticker).reshape(n_hashes, length, -1)
    lse = permute_rows(slse, undo, sticker).reshape(n_hashes, length, 1)
    weights = jnp.exp(lse - jnp.max(lse, axis=0, keepdims=True))  # exact near -1e5
    weights = weights / jnp.sum(weights, axis=0, keepdims=True)
    return jnp.sum(o * weights, axis=0)


def lsh_attend_query(q: Any, kv_qk: Any, values: Any, q_pos: Any, n_valid: Any,
                     rotations: Any, n_buckets: Any, window: int) -> Any:
    """One new query ``q`` ``(d,)`` at memory position ``q_pos`` over the memory's query-keys
    ``kv_qk`` ``(M, d)``; ``values(idx)`` gives the values ``(len(idx), dv)`` at ``idx``.

    Attends to the ``window`` positions before ``n_valid`` with the highest
    priority: sharing a bucket with the query in some round first, then the
    most recent (Trax's one-token LSH decoding).
    """
    mem_len = kv_qk.shape[0]
    q_buckets, _ = hash_vectors(q[None], rotations, n_buckets)
    kv_buckets, _ = hash_vectors(kv_qk, rotations, n_buckets)
    match = jnp.any(kv_buckets == q_buckets, axis=0)
    pos = jnp.arange(mem_len, dtype=jnp.int32)
    priority = jnp.where(pos < n_valid, pos + mem_len * match, -(mem_len + pos))
    _, idx = lax.top_k(priority, min(window, mem_len))
    k = length_normalized(kv_qk[idx])
    mask_fn = functools.partial(mask_self_attention, causal=True, exclude_self=True)
    o, _ = attend(q[None], k, values(idx), mask_fn=mask_fn, q_info=(q_pos + 1)[None],
                  kv_info=idx + 1)
    return o[0]


def lsh_attend_step(x_q: Any, x_kv: Any, q_pos: Any, n_valid: Any, qk_of: Any, v_of: Any,
                    rotations: Any, n_buckets: Any, window: int) -> Any:
    """``lsh_attend_query`` of the input ``x_q`` ``(D,)`` over the memory inputs ``x_kv``
    ``(M, D)``, projected by ``qk_of`` and ``v_of``."""
    return lsh_attend_query(qk_of(x_q[None])[0], qk_of(x_kv), lambda idx: v_of(x_kv[idx]),
                            q_pos, n_valid, rotations, n_buckets, window)


class LSHSelfAttention(SelfAttention):
    """LSH self-attention with per-head weights ``(w_q, w_v, w_o)`` (Trax's layout).

    ``x -> y`` (``(B, L, D)``), or ``(x, mask) -> y`` with ``masked=True``.
    Arguments as Trax 1.4.1 (``share_qk`` is ignored: queries are always the
    keys). ``n_buckets=None`` uses ``2 * L / chunk_len`` buckets (factorized
    above 128); in ``'predict'`` mode give ``n_buckets`` explicitly (the
    default would then depend on ``predict_mem_len``). ``n_hashes * L`` must
    be a multiple of ``chunk_len``. More buckets than positions are refused
    (most would stay empty) unless ``max_length_for_buckets`` says that
    sequences that long are meant (retrax keeps no buckets in the state; in
    Trax this sized that state).
    """

    def __init__(self, n_heads: int = 2, d_qk: int = 64, d_v: int = 64, share_qk: Any = "unused",
                 causal: bool = False, masked: bool = False, chunk_len: int = 128,
                 n_chunks_before: int = 1, n_chunks_after: int = 0, n_hashes: int = 1,
                 n_buckets: Any = None, mode: str = "train", predict_mem_len: int = 2048,
                 predict_drop_len: int = 256, attention_dropout: float = 0.0,
                 output_dropout: float = 0.0, max_length_for_buckets: Any = None,
                 bias: bool = False, n_parallel_heads: int | None = 1,
                 use_python_loop: bool = False, use_reference_code: bool = False):
        del share_qk
        super().__init__(n_heads=n_heads, d_qk=d_qk, d_v=d_v, share_qk=True, causal=causal,
                         masked=masked, chunk_len=chunk_len, n_chunks_before=n_chunks_before,
                         n_chunks_after=n_chunks_after, bias=bias, mode=mode,
                         predict_mem_len=predict_mem_len, predict_drop_len=predict_drop_len,
                         attention_dropout=attention_dropout, output_dropout=output_dropout,
                         n_parallel_heads=n_parallel_heads, use_python_loop=use_python_loop,
                         use_reference_code=use_reference_code)
        name = type(self).__name__
        if chunk_len is None:
            raise ValueError(f"{name}: chunk_len must be a positive int (LSH attention sorts "
                             f"and chunks); got None.")
        self._n_hashes = check_positive_int(name, "n_hashes", n_hashes)
        self._n_buckets = check_buckets(name, n_buckets)
        self._max_length_for_buckets = None if max_length_for_buckets is None else \
            check_positive_int(name, "max_length_for_buckets", max_length_for_buckets)

    def init_weights_and_state(self, input_signature):
        super().init_weights_and_state(input_signature)
        hash_key = jnp.asarray(fastmath_random.hash_fold_in(self.rng, 7), jnp.uint32)
        if self._mode == "predict":
            mem_end, mem, _ = self.state
            self.state = (mem_end, mem, hash_key)
        else:
            self.state = hash_key

    # -- hashing ----------------------------------------------------------------

    def _bucket_count(self, length: int) -> Any:
        return bucket_count(self.name, self._n_buckets, length, self._chunk_len,
                            self._max_length_for_buckets)

    def _rotations(self, key: Any, length: int) -> tuple[Any, Any]:
        n_buckets = self._bucket_count(length)
        keys = jax.random.split(key, self._n_heads)
        rot = jax.vmap(lambda k: hash_rotations(k, self._d_qk, self._n_hashes, n_buckets))(keys)
        return rot, n_buckets

    def _hash_key(self, hash_key: Any) -> Any:
        if self._mode == "train" and self.has_rng:
            return fastmath_random.hash_fold_in(self.rng, 7)
        return hash_key

    # -- forward ----------------------------------------------------------------

    def forward(self, inputs):
        name = self.name
        if self._mode == "predict":
            return super().forward(inputs)
        x, mask = (inputs if self._masked else (inputs, None))
        check_attention_input(name, x, self.weights[0].shape[1])
        if mask is not None:
            check_attention_mask(name, mask, x)
        length = x.shape[1]
        if (self._n_hashes * length) % self._chunk_len:
            raise ValueError(
                f"{name}: chunk_len={self._chunk_len} must divide n_hashes x length = "
                f"{self._n_hashes} x {length}; pad the sequences or choose another chunk_len.")
        attention_rate, output_rate = self._dropout_rates()
        rng = self.rng if (attention_rate or output_rate) else None
        if rng is not None and not self.has_rng:
            raise ValueError(f"{name}: dropout in 'train' mode needs an rng; pass rng=... "
                             f"to pure_fn (or build the layer with mode='eval').")
        rotations, n_buckets = self._rotations(self._hash_key(self.state), length)
        attend_rng = None if rng is None else fastmath_random.hash_fold_in(rng, 0)

        def one(ins, w_and_rot):
            w, rot = w_and_rot
            q, _, v, w_o = self._projections(ins[0], w)
            o = lsh_attend(q, v, rot, n_buckets, self._chunk_len, self._n_chunks_before,
                           self._n_chunks_after, self._causal,
                           ins[1] if len(ins) > 1 else None, attention_rate, attend_rng)
            return o @ w_o

        ins = (x,) if mask is None else (x, mask.astype(bool))
        y = run_heads(one, ins, (self.weights, rotations), self._n_heads,
                      self._n_parallel_heads, self._use_python_loop, self._use_reference_code)
        if output_rate:
            y = apply_broadcasted_dropout(y, output_rate, fastmath_random.hash_fold_in(rng, 1))
        return y.astype(x.dtype)

    def _check_prompt(self, length: int) -> None:
        del length  # a prompt is padded to a multiple of chunk_len (Trax's behaviour)

    def _run_predict_heads(self, seen, q_start, q_len, inner):
        name = self.name
        if self._n_buckets is None:
            raise ValueError(f"{name}: 'predict' mode needs n_buckets given explicitly (the "
                             f"default depends on the length); pass n_buckets=...")
        length = seen.shape[1]
        prompt = q_len == length
        if prompt and length % self._chunk_len:  # padded at the end, as Trax does
            pad = self._chunk_len - length % self._chunk_len
            seen = jnp.pad(seen, ((0, 0), (0, pad), (0, 0)))
            return self._run_predict_heads(seen, q_start, seen.shape[1], inner)[:, :length]
        rotations = self._rotations(inner, max(length, self._predict_memory()[0]))[0]
        n_buckets = self._n_buckets
        window = self._n_hashes * self._chunk_len * (1 + self._n_chunks_before)

        def one(ins, w_and_rot):
            w, rot = w_and_rot
            q, _, v, w_o = self._projections(ins[0], w)
            if prompt:
                o = lsh_attend(q, v, rot, n_buckets, self._chunk_len, self._n_chunks_before,
                               0, True)
                return o @ w_o

            def qk_of(a):
                return self._projections(a, w)[0]

            def v_of(a):
                return self._projections(a, w)[2]

            positions = q_start + jnp.arange(q_len, dtype=jnp.int32)
            x_new = lax.dynamic_slice_in_dim(ins[0], q_start, q_len, axis=0)
            o = jax.vmap(lambda xq, p: lsh_attend_step(
                xq, ins[0], p, q_start + q_len, qk_of, v_of, rot, n_buckets, window))(
                    x_new, positions)
            return o @ w_o

        return run_heads(one, (seen,), (self.weights, rotations), self._n_heads,
                         self._n_parallel_heads, self._use_python_loop,
                         self._use_reference_code)
