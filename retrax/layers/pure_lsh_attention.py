"""LSH attention without weights (Trax's ``PureLSHSelfAttention``), in all three modes.

The heads arrive already projected and split, one row per (example, head),
example-major: ``qk`` ``(B * n_heads, L, d_qk)`` (queries that double as
keys) and ``v`` ``(B * n_heads, L, d_v)``. Row ``i`` hashes with the rotations
of head ``i % n_heads``; hashing, sorting, chunking and the combination of
rounds are ``retrax.layers.lsh_attention``'s.

``'predict'`` mode (``causal=True``, unmasked) keeps the last
``predict_mem_len`` rows of ``qk`` and ``v`` (Trax's memory, see
``SelfAttention``). A prompt is attended as in ``'eval'`` (padded at the end
to a multiple of ``chunk_len``, as Trax does); each later token attends to
at most ``n_hashes * chunk_len * (1 + n_chunks_before)`` earlier positions,
those sharing a bucket with it first, then the most recent. While the memory
holds no more than that window, decoding token by token gives ``'eval'``'s
numbers whenever ``'eval'``'s chunk window covers the whole sorted sequence.

>>> from retrax import shapes
>>> attn = PureLSHSelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
...                             n_hashes=2, n_buckets=4, predict_mem_len=16,
...                             predict_drop_len=4, mode='predict')
>>> rows = shapes.ShapeDtype((2, 1, 4))  # 1 example x 2 heads, one position
>>> weights, (mem_end, (qk_mem, v_mem), hash_key) = attn.init((rows, rows))
>>> weights, qk_mem.shape, hash_key.shape
((), (2, 16, 4), (2,))
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers.attention_checks import check_dropout, check_positive_int
from retrax.layers.base import Layer
from retrax.layers.broadcasted_dropout import apply_broadcasted_dropout
from retrax.layers.core import check_mode
from retrax.layers.efficient_attention import check_parallel_heads, update_predict_memory
from retrax.layers.lsh_attention import (
    bucket_count,
    check_buckets,
    hash_rotations,
    lsh_attend,
    lsh_attend_query,
)

__all__ = ["PureLSHSelfAttention"]


class PureLSHSelfAttention(Layer):
    """LSH attention without weights: ``(qk, v) -> o`` or ``(qk, v, mask) -> o``.

    ``qk`` ``(N, L, d_qk)`` and ``v`` ``(N, L, d_v)`` hold the heads already
    split (``N = batch * n_heads``, example-major, as Trax's
    ``PureLSHSelfAttentionWrapper`` makes them); ``o`` is ``(N, L, d_v)``;
    ``mask`` ``(batch, L)`` or ``(N, L)``, True for real tokens. Arguments as
    Trax 1.4.1's (``share_qk``, ``bias``, ``use_python_loop`` and
    ``use_reference_code`` have no effect). The state is the hash key
    (``'train'`` draws fresh rotations from the call's rng), in
    ``'predict'`` mode ``(mem_end, (qk_memory, v_memory), hash_key)``.
    ``n_buckets=None`` uses ``2 * L / chunk_len`` (give it explicitly in
    ``'predict'`` mode).
    """

    def __init__(self, n_heads: int = 2, d_qk: int = 64, d_v: int = 64, share_qk: Any = "unused",
                 causal: bool = False, masked: bool = False, chunk_len: int = 128,
                 n_chunks_before: int = 1, n_chunks_after: int = 0, n_hashes: int = 1,
                 n_buckets: Any = None, mode: str = "train", predict_mem_len: int = 2048,
                 predict_drop_len: int = 256, attention_dropout: float = 0.0,
                 output_dropout: float = 0.0, max_length_for_buckets: Any = None,
                 bias: bool = False, n_parallel_heads: int | None = 1,
                 use_python_loop: bool = False, use_reference_code: bool = False):
        del share_qk, bias, use_python_loop, use_reference_code
        name = type(self).__name__
        super().__init__(n_in=3 if masked else 2, n_out=1)
        self._mode = check_mode(name, mode)
        self._n_heads = check_positive_int(name, "n_heads", n_heads)
        check_parallel_heads(name, self._n_heads, n_parallel_heads)
        self._d_qk = check_positive_int(name, "d_qk", d_qk)
        self._d_v = check_positive_int(name, "d_v", d_v)
        self._causal, self._masked = causal, masked
        self._chunk_len = check_positive_int(name, "chunk_len", chunk_len)
        self._n_chunks_before, self._n_chunks_after = int(n_chunks_before), int(n_chunks_after)
        self._n_hashes = check_positive_int(name, "n_hashes", n_hashes)
        self._n_buckets = check_buckets(name, n_buckets)
        self._max_length_for_buckets = None if max_length_for_buckets is None else \
            check_positive_int(name, "max_length_for_buckets", max_length_for_buckets)
        self._attention_dropout = check_dropout(name, attention_dropout)
        self._output_dropout = check_dropout(name, output_dropout)
        self._predict_mem_len = check_positive_int(name, "predict_mem_len", predict_mem_len)
        self._predict_drop_len = check_positive_int(name, "predict_drop_len", predict_drop_len)
        if self._predict_drop_len > self._predict_mem_len:
            raise ValueError(f"{name}: need predict_drop_len <= predict_mem_len; got "
                             f"{predict_drop_len} and {predict_mem_len}.")

    def _check_predict(self) -> None:
        if not self._causal or self._masked:
            raise ValueError(f"{self.name}: 'predict' mode (fast decoding) needs causal=True "
                             f"and masked=False.")
        if self._n_buckets is None:
            raise ValueError(f"{self.name}: 'predict' mode needs n_buckets given explicitly "
                             f"(the default depends on the length); pass n_buckets=...")

    def init_weights_and_state(self, input_signature):
        n_expected = 3 if self._masked else 2
        if not isinstance(input_signature, (tuple, list)) or len(input_signature) != n_expected:
            raise ValueError(f"{self.name}: expected {n_expected} inputs (qk, v"
                             f"{', mask' if self._masked else ''}); got {input_signature}.")
        hash_key = jnp.asarray(fastmath_random.hash_fold_in(self.rng, 7), jnp.uint32)
        if self._mode != "predict":
            self.state = hash_key
            return
        self._check_predict()
        mems = tuple(jnp.zeros((sig.shape[0], self._predict_mem_len) + tuple(sig.shape[2:]),
                               sig.dtype) for sig in input_signature[:2])
        self.state = (jnp.zeros((), jnp.int32), mems, hash_key)

    def _row_rotations(self, key: Any, n_rows: int, d: int, n_buckets: Any) -> Any:
        """Rotations ``(n_rows, d, n_hashes, ...)``: row ``i`` gets head ``i % n_heads``'s."""
        keys = jax.random.split(key, self._n_heads)
        rot = jax.vmap(lambda k: hash_rotations(k, d, self._n_hashes, n_buckets))(keys)
        return jnp.tile(rot, (n_rows // self._n_heads, 1, 1, 1))

    def _check_rows(self, qk: Any, v: Any) -> None:
        if (jnp.ndim(qk) != 3 or jnp.ndim(v) != 3 or qk.shape[:2] != v.shape[:2]
                or qk.shape[0] % self._n_heads):
            raise ValueError(
                f"{self.name}: expected qk (batch * n_heads, length, d_qk) and v (batch * "
                f"n_heads, length, d_v) with n_heads={self._n_heads} dividing axis 0; got "
                f"shapes {tuple(jnp.shape(qk))} and {tuple(jnp.shape(v))}.")

    def forward(self, inputs):
        qk, v = inputs[0], inputs[1]
        self._check_rows(qk, v)
        if self._mode == "predict":
            return self._forward_predict(qk, v)
        mask = inputs[2].astype(bool) if self._masked else None
        n_rows, length = qk.shape[0], qk.shape[1]
        if (self._n_hashes * length) % self._chunk_len:
            raise ValueError(
                f"{self.name}: chunk_len={self._chunk_len} must divide n_hashes x length = "
                f"{self._n_hashes} x {length}; pad the sequences or choose another chunk_len.")
        train = self._mode == "train"
        key = (fastmath_random.hash_fold_in(self.rng, 7) if train and self.has_rng
               else self.state)
        n_buckets = bucket_count(self.name, self._n_buckets, length, self._chunk_len,
                                 self._max_length_for_buckets)
        rot = self._row_rotations(key, n_rows, qk.shape[-1], n_buckets)
        attention_rate = self._attention_dropout if train else 0.0
        output_rate = self._output_dropout if train else 0.0
        rng = self.rng if (attention_rate or output_rate) else None
        attend_rng = None if rng is None else fastmath_random.hash_fold_in(rng, 0)

        def one(q_row, v_row, r, m):
            return lsh_attend(q_row, v_row, r, n_buckets, self._chunk_len,
                              self._n_chunks_before, self._n_chunks_after, self._causal, m,
                              attention_rate, attend_rng)

        if mask is None:
            o = jax.vmap(lambda a, b, r: one(a, b, r, None))(qk, v, rot)
        else:
            masks = jnp.repeat(mask, self._n_heads, axis=0) if mask.shape[0] != n_rows else mask
            o = jax.vmap(one)(qk, v, rot, masks)
        if output_rate:
            o = apply_broadcasted_dropout(o, output_rate, fastmath_random.hash_fold_in(rng, 1))
        return o.astype(qk.dtype)

    # -- predict ------------------------------------------------------------------

    def _forward_predict(self, qk, v):
        self._check_predict()
        if not (isinstance(self.state, tuple) and len(self.state) == 3):
            raise ValueError(f"{self.name} in 'predict' mode has no memory in its state; "
                             f"call init(input_signature) before decoding.")
        mem_end, mems, hash_key = self.state
        q_len = qk.shape[1]
        (seen_qk, seen_v), q_start, new_mems, new_end = update_predict_memory(
            self.name, mem_end, mems, (qk, v), self._predict_mem_len, self._predict_drop_len,
            lambda length: None)
        n_buckets = bucket_count(self.name, self._n_buckets,
                                 max(seen_qk.shape[1], self._predict_mem_len), self._chunk_len,
                                 self._max_length_for_buckets)
        rot = self._row_rotations(hash_key, qk.shape[0], qk.shape[-1], n_buckets)
        if q_len == seen_qk.shape[1]:  # a prompt
            o = self._prompt(seen_qk, seen_v, rot, n_buckets)
        else:
            window = self._n_hashes * self._chunk_len * (1 + self._n_chunks_before)
            positions = q_start + jnp.arange(q_len, dtype=jnp.int32)

            def row(kv_qk, kv_v, r):
                queries = lax.dynamic_slice_in_dim(kv_qk, q_start, q_len, axis=0)
                return jax.vmap(lambda q, p: lsh_attend_query(
                    q, kv_qk, lambda idx: kv_v[idx], p, q_start + q_len, r, n_buckets,
                    window))(queries, positions)

            o = jax.vmap(row)(seen_qk, seen_v, rot)
        self.state = (new_end, new_mems, hash_key)
        return o.astype(qk.dtype)

    def _prompt(self, qk, v, rot, n_buckets):
        length = qk.shape[1]
        pad = -length % self._chunk_len  # padded at the end, as Trax does
        if pad:
            qk, v = (jnp.pad(a, ((0, 0), (0, pad), (0, 0))) for a in (qk, v))
        o = jax.vmap(lambda a, b, r: lsh_attend(a, b, r, n_buckets, self._chunk_len,
                                                self._n_chunks_before, self._n_chunks_after,
                                                True))(qk, v, rot)
        return o[:, :length]
