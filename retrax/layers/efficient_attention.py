"""Trax's memory-efficient ``SelfAttention`` and the helpers its relatives share.

Both keep one set of weights per head, stacked on axis 0 (Trax's layout:
``w_q (n_heads, d_model, d_qk)``, ``w_k``, ``w_v (n_heads, d_model, d_v)``,
``w_o (n_heads, d_v, d_model)``; no output bias), and compute each (example,
head) pair with the functions of ``retrax.layers.chunked_attention``, summing
the heads' outputs. ``n_parallel_heads`` bounds how many pairs are computed at
once (the rest wait in a ``lax.map``, recomputed in the backward pass), as in
Trax; ``use_python_loop`` unrolls that loop and ``use_reference_code`` runs
one pair at a time in Python (for testing). All give the same numbers.

Random draws (attention and output dropout, ``'train'`` mode only) use one
key for all examples and heads, as in Trax: the output dropout mask drops
whole features of the summed output. LSH attention lives in
``retrax.layers.lsh_attention``, ``EncDecAttention`` in
``retrax.layers.enc_dec_attention``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.fastmath.scheduling import zero_from
from retrax.layers.attention_checks import check_dropout, check_positive_int, static_int
from retrax.layers.base import Layer
from retrax.layers.broadcasted_dropout import apply_broadcasted_dropout
from retrax.layers.chunked_attention import (
    attend,
    check_chunking,
    length_normalized,
    mask_self_attention,
)
from retrax.layers.core import check_mode

__all__ = ["SelfAttention"]


def check_parallel_heads(owner: str, n_heads: int, n_parallel_heads: Any) -> int | None:
    """``n_parallel_heads`` checked against ``n_heads`` (a multiple or a divisor), or None."""
    if not n_parallel_heads:
        return None
    n_par = check_positive_int(owner, "n_parallel_heads", n_parallel_heads)
    if (n_par > n_heads and n_par % n_heads) or (n_par < n_heads and n_heads % n_par):
        raise ValueError(
            f"{owner}: n_parallel_heads ({n_par}) must be a multiple or a divisor of n_heads "
            f"({n_heads}).")
    return n_par


def run_heads(one: Any, inputs: tuple, weights: Any, n_heads: int,
              n_parallel_heads: int | None = None, use_python_loop: bool = False,
              use_reference_code: bool = False) -> Any:
    """Sum over heads of ``one(example_inputs, head_weights)``, for every example.

    ``inputs``: arrays with a batch axis first; ``weights``: a tree of arrays
    with a head axis first. ``one`` gets both without those axes and returns
    ``(length, d_model)``. Pairs (example, head) are numbered example-major
    and computed ``n_parallel_heads`` at a time (all at once when None).
    """
    inputs = tuple(jnp.asarray(a) for a in inputs)
    batch = inputs[0].shape[0]
    n_pairs = batch * n_heads

    def pair_inputs(ex, hd):
        return (jax.tree_util.tree_map(lambda a: a[ex], inputs),
                jax.tree_util.tree_map(lambda w: w[hd], weights))

    if use_reference_code:
        outs = [[one(*pair_inputs(ex, hd)) for hd in range(n_heads)] for ex in range(batch)]
        return jnp.stack([functools.reduce(jnp.add, per_ex) for per_ex in outs])
    if n_parallel_heads is None or n_parallel_heads >= n_pairs:
        per_example = jax.vmap(one, in_axes=(None, 0))
        return jax.vmap(per_example, in_axes=(0, None))(inputs, weights).sum(axis=1)
    if n_pairs % n_parallel_heads:
        raise ValueError(
            f"n_parallel_heads={n_parallel_heads} must divide batch x n_heads = {n_pairs}; "
            f"use a batch size that makes it so, or another n_parallel_heads.")
    pairs = np.arange(n_pairs).reshape(-1, n_parallel_heads)
    examples, heads = jnp.asarray(pairs // n_heads), jnp.asarray(pairs % n_heads)

    @jax.checkpoint
    def group(idx):
        ex, hd = idx
        return jax.vmap(lambda e, h: one(*pair_inputs(e, h)))(ex, hd)

    if use_python_loop:
        outs = jnp.stack([group((examples[g], heads[g])) for g in range(len(pairs))])
        outs = outs.reshape((batch, n_heads) + outs.shape[2:])
        return outs.sum(axis=1)

    # Each group's outputs are added into one running sum (the carry), so the loop keeps
    # (batch, ...) instead of every group's outputs; the add is linear, so the backward
    # pass stores no carries (group itself is recomputed).
    one_group = jax.eval_shape(group, (examples[0], heads[0]))

    def body(total, idx):
        return total.at[idx[0]].add(group(idx)), None

    # The zero carry is tied to the inputs (fastmath.scheduling): a constant carry would be
    # copied into a buffer of its own at the start of the program, one per layer of a
    # reversible stack, instead of when the layer runs.
    total0 = jnp.zeros((batch,) + one_group.shape[1:], one_group.dtype)
    zero = zero_from(inputs)
    if zero is not None:  # (tied() would give where(keep, 0, 0), which XLA folds to a constant)
        total0 = jnp.where(zero == 0, total0, 1).astype(total0.dtype)
    total, _ = lax.scan(body, total0, (examples, heads))
    return total


def update_predict_memory(owner: str, mem_end: Any, mems: tuple, xs: tuple, mem_len: int,
                          drop: int, check_prompt: Any) -> tuple:
    """Trax's 'predict'-mode input memory: ``(seen, q_start, new_mems, new_end)``.

    ``mems``: arrays ``(B, mem_len, ...)`` holding the last inputs, ``mem_end``
    how many are filled; ``xs``: this call's inputs ``(B, L, ...)``, one per
    memory. A few new positions (``L <= drop`` and ``L < mem_len``) are
    appended, after dropping the oldest ``drop`` when they would not fit; the
    queries are then ``L`` positions from ``q_start`` of the memory (``seen``).
    A longer call is a prompt: it must start a sequence (refused eagerly, NaN
    under ``jit``), ``check_prompt(L)`` may refuse it, and the last
    ``mem_len`` of it are kept; ``seen`` is the prompt itself.
    """
    length = xs[0].shape[1]
    if mems[0].shape[0] != xs[0].shape[0]:
        raise ValueError(
            f"{owner}: the memory was initialized for batch size {mems[0].shape[0]} but got "
            f"{xs[0].shape[0]}; re-run init with the batch size used for decoding.")
    if length <= drop and length < mem_len:  # a few new tokens: append, dropping old ones
        full = mem_end + length > mem_len
        mem_end = jnp.where(full, mem_end - drop, mem_end)
        new = []
        for mem, x in zip(mems, xs):
            rolled = jnp.concatenate([mem[:, drop:], jnp.zeros_like(mem[:, :drop])], axis=1)
            mem = jnp.where(full, rolled, mem)
            new.append(lax.dynamic_update_slice_in_dim(mem, x.astype(mem.dtype), mem_end,
                                                       axis=1))
        new = tuple(new)
        return new, mem_end, new, jnp.asarray(mem_end + length, jnp.int32)
    start = static_int(mem_end)  # a prompt: only at the start of a sequence
    if start is not None and start != 0:
        raise ValueError(
            f"{owner}: a call of {length} positions (more than predict_drop_len={drop}) must "
            f"start a sequence, but the memory holds {start}; re-init the state first.")
    check_prompt(length)
    kept = []
    for mem, x in zip(mems, xs):
        pad = jnp.zeros((x.shape[0], max(0, mem_len - length)) + x.shape[2:], x.dtype)
        kept.append(jnp.concatenate([x[:, -mem_len:], pad], axis=1).astype(mem.dtype))
    seen = xs
    if start is None:  # traced: signal a misuse with NaN
        seen = tuple(jnp.where(mem_end != 0, jnp.nan, x) if jnp.issubdtype(x.dtype,
                                                                            jnp.floating)
                     else x for x in xs)
    return seen, 0, tuple(kept), jnp.asarray(min(length, mem_len), jnp.int32)


def kernel_init(rng: Any, shape: tuple, n_heads: int) -> Any:
    """Glorot uniform over the heads' total width, one head at a time (Trax's rule)."""
    # Glorot uniform over the heads' total width, one head at a time (Trax's rule).
    lim = np.sqrt(6.0 / (shape[0] + shape[1] * n_heads))
    return jax.random.uniform(rng, shape, jnp.float32, -lim, lim)


def head_weights(rng: Any, n_heads: int, d_q_in: int, d_kv_in: int, d_qk: int, d_v: int,
                  share_qk: bool) -> tuple:
    """``(w_q, [w_k,] w_v, w_o)`` stacked over heads."""
    per_head = []
    for key in jax.random.split(rng, n_heads):
        k_q, k_k, k_v, k_o = jax.random.split(key, 4)
        ws = [kernel_init(k_q, (d_q_in, d_qk), n_heads)]
        if not share_qk:
            ws.append(kernel_init(k_k, (d_kv_in, d_qk), n_heads))
        ws.append(kernel_init(k_v, (d_kv_in, d_v), n_heads))
        ws.append(kernel_init(k_o, (d_q_in, d_v), n_heads).T)
        per_head.append(ws)
    return tuple(jnp.stack(ws) for ws in zip(*per_head))


def check_attention_input(owner: str, x: Any, d_model: int | None = None) -> None:
    if jnp.ndim(x) != 3 or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f"{owner}: expected float activations of shape (batch, length, d_model); got "
            f"{jnp.result_type(x)} of shape {tuple(jnp.shape(x))}. Embed tokens first "
            f"(tl.Embedding).")
    if d_model is not None and x.shape[-1] != d_model:
        raise ValueError(
            f"{owner}: the weights were made for d_model={d_model} but the input has "
            f"{x.shape[-1]} features; re-run init with the input signature.")


def check_attention_mask(owner: str, mask: Any, x: Any) -> None:
    if jnp.shape(mask) != (x.shape[0], x.shape[1]):
        raise ValueError(
            f"{owner}: the mask must have shape (batch, length) = {(x.shape[0], x.shape[1])} "
            f"(True for real tokens); got shape {tuple(jnp.shape(mask))}.")


class SelfAttention(Layer):
    """Self-attention with chunking, masking and shared query-keys (Trax's efficient one).

    ``x -> y`` (``(B, L, D) -> (B, L, D)``), or ``(x, mask) -> y`` with
    ``masked=True`` (``mask``: ``(B, L)``, True for real tokens; keys at
    padding positions are not attended to). ``causal`` hides later
    positions; ``chunk_len`` cuts the sequence into chunks that attend to
    themselves and ``n_chunks_before``/``n_chunks_after`` neighbours (wrapping
    around: non-causal chunks see the other end). ``share_qk`` uses the
    normalized queries as keys (a query then sees itself only as a last
    resort). ``bias`` adds biases to q, k, v (weights ``(w_q, w_k, w_v, w_o,
    b_q, b_k, b_v)``).

    In ``'predict'`` mode (``causal`` only) the state is ``(mem_end, (mem,),
    ())``: the last ``predict_mem_len`` inputs (default ``chunk_len * (1 +
    n_chunks_before)``); when it fills up the oldest ``predict_drop_len``
    (default ``chunk_len``) are dropped. A first call may carry a whole
    prompt; later calls usually one token.

    Trax 1.4.1 cannot mask padding at positions 0 and 1 (its 1-based
    positions are applied after the sign that marks padding); retrax masks
    every padding position.

    >>> import numpy as np
    >>> from retrax import shapes
    >>> attn = SelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=2,
    ...                      n_chunks_before=1, mode='eval')
    >>> _ = attn.init(shapes.ShapeDtype((1, 6, 8)))
    >>> attn(np.ones((1, 6, 8), np.float32)).shape
    (1, 6, 8)
    """

    def __init__(self, n_heads: int = 2, d_qk: int = 64, d_v: int = 64, share_qk: bool = False,
                 causal: bool = False, masked: bool = False, chunk_len: int | None = None,
                 n_chunks_before: int = 0, n_chunks_after: int = 0, bias: bool = False,
                 mode: str = "train", predict_mem_len: int | None = None,
                 predict_drop_len: int | None = None, attention_dropout: float = 0.0,
                 output_dropout: float = 0.0, n_parallel_heads: int | None = None,
                 use_python_loop: bool = False, use_reference_code: bool = False):
        name = type(self).__name__
        super().__init__(n_in=2 if masked else 1, n_out=1)
        self._mode = check_mode(name, mode)
        self._n_heads = check_positive_int(name, "n_heads", n_heads)
        self._d_qk = check_positive_int(name, "d_qk", d_qk)
        self._d_v = check_positive_int(name, "d_v", d_v)
        self._share_qk, self._causal, self._masked, self._bias = share_qk, causal, masked, bias
        self._chunk_len = None if chunk_len is None else check_positive_int(
            name, "chunk_len", chunk_len)
        for arg, value in (("n_chunks_before", n_chunks_before),
                           ("n_chunks_after", n_chunks_after)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name}: {arg} must be an int >= 0; got {value!r}.")
        if self._chunk_len is None and (n_chunks_before or n_chunks_after):
            raise ValueError(f"{name}: n_chunks_before/n_chunks_after need a chunk_len.")
        self._n_chunks_before, self._n_chunks_after = int(n_chunks_before), int(n_chunks_after)
        self._attention_dropout = check_dropout(name, attention_dropout)
        self._output_dropout = check_dropout(name, output_dropout)
        self._n_parallel_heads = check_parallel_heads(name, self._n_heads, n_parallel_heads)
        self._use_python_loop = use_python_loop
        self._use_reference_code = use_reference_code
        self._predict_mem_len, self._predict_drop_len = predict_mem_len, predict_drop_len

    def _predict_memory(self) -> tuple[int, int]:
        """``(predict_mem_len, predict_drop_len)``, checked when a 'predict' layer runs."""
        name, mem_len, drop_len = self.name, self._predict_mem_len, self._predict_drop_len
        if not self._causal or self._masked:
            raise ValueError(
                f"{name}: 'predict' mode (fast decoding) needs causal=True and masked=False.")
        if self._chunk_len is None and not (mem_len and drop_len):
            raise ValueError(
                f"{name}: 'predict' mode needs chunk_len, or predict_mem_len and "
                f"predict_drop_len (how many past inputs to keep, and to drop when full).")
        mem_len = mem_len or self._chunk_len * (1 + self._n_chunks_before)
        drop_len = drop_len or self._chunk_len
        if not 0 < drop_len <= mem_len:
            raise ValueError(
                f"{name}: need 0 < predict_drop_len <= predict_mem_len; got "
                f"{drop_len} and {mem_len}.")
        return int(mem_len), int(drop_len)

    # -- init ---------------------------------------------------------------

    def init_weights_and_state(self, input_signature):
        x_sig = input_signature[0] if isinstance(input_signature, (tuple, list)) else \
            input_signature
        d_model = int(x_sig.shape[-1])
        weights = head_weights(self.rng, self._n_heads, d_model, d_model, self._d_qk,
                                self._d_v, self._share_qk)
        if self._bias:
            zeros = [jnp.zeros((self._n_heads, d), jnp.float32) for d in
                     ((self._d_qk,) if self._share_qk else (self._d_qk, self._d_qk))]
            weights = weights + tuple(zeros) + (jnp.zeros((self._n_heads, self._d_v)),)
        self.weights = weights
        if self._mode == "predict":
            mem = jnp.zeros((x_sig.shape[0], self._predict_memory()[0]) + tuple(x_sig.shape[2:]),
                            x_sig.dtype)
            self.state = (jnp.zeros((), jnp.int32), (mem,), ())

    # -- one example, one head ----------------------------------------------

    def _projections(self, x, w):
        n = 3 if self._share_qk else 4
        mats, biases = w[:n], w[n:]
        if self._share_qk:
            (w_q, w_v, w_o), w_k = mats, None
        else:
            w_q, w_k, w_v, w_o = mats
        q, v = x @ w_q, x @ w_v
        k = None if w_k is None else x @ w_k
        if biases:
            q = q + biases[0]
            if k is not None:
                k = k + biases[1]
            v = v + biases[-1]
        return q, k, v, w_o

    def _one(self, x, mask, w, rng):
        attend_rng = None if rng is None else fastmath_random.hash_fold_in(rng, 0)
        q, k, v, w_o = self._projections(x, w)
        info = jnp.arange(1, x.shape[-2] + 1, dtype=jnp.int32)
        kv_info = info if mask is None else jnp.where(mask, info, -info)
        mask_fn = functools.partial(mask_self_attention, causal=self._causal,
                                    exclude_self=self._share_qk, masked=self._masked)
        o, _ = attend(q, k, v, q_chunk_len=self._chunk_len, kv_chunk_len=self._chunk_len,
                      n_chunks_before=self._n_chunks_before,
                      n_chunks_after=self._n_chunks_after, mask_fn=mask_fn, q_info=info,
                      kv_info=kv_info, dropout=self._dropout_rates()[0], rng=attend_rng)
        return o @ w_o

    def _one_incremental(self, x, w, q_start, q_len):
        q_all, k, v, w_o = self._projections(x, w)
        q = lax.dynamic_slice_in_dim(q_all, q_start, q_len, axis=0)
        if k is None:  # shared query-keys: the keys are all of x's queries
            k = q_all
            q_info = q_start + 1 + jnp.arange(q_len, dtype=jnp.int32)
            kv_info = jnp.arange(1, x.shape[0] + 1, dtype=jnp.int32)
            mask_fn = functools.partial(mask_self_attention, causal=True, exclude_self=True)
            k = length_normalized(k)
        else:
            q_info = q_start + 1 + jnp.arange(q_len, dtype=jnp.int32)
            kv_info = jnp.arange(1, x.shape[0] + 1, dtype=jnp.int32)
            mask_fn = functools.partial(mask_self_attention, causal=True, exclude_self=False)
        chunked = self._chunk_len is not None and q_len > self._chunk_len
        o, _ = attend(q, k, v,
                      q_chunk_len=self._chunk_len if chunked else None,
                      kv_chunk_len=self._chunk_len if chunked else None,
                      n_chunks_before=self._n_chunks_before if chunked else 0,
                      n_chunks_after=self._n_chunks_after if chunked else 0,
                      mask_fn=mask_fn, q_info=q_info, kv_info=kv_info)
        return o @ w_o

    def _dropout_rates(self) -> tuple[float, float]:
        if self._mode != "train":
            return 0.0, 0.0
        return self._attention_dropout, self._output_dropout

    # -- forward --------------------------------------------------------------

    def forward(self, inputs):
        name = self.name
        x, mask = (inputs if self._masked else (inputs, None))
        check_attention_input(name, x, self.weights[0].shape[1])
        if mask is not None:
            check_attention_mask(name, mask, x)
        if self._mode == "predict":
            return self._forward_predict(x)
        check_chunking(name, x.shape[1], self._chunk_len)
        attention_rate, output_rate = self._dropout_rates()
        rng = self.rng if (attention_rate or output_rate) else None
        if rng is not None and not self.has_rng:
            raise ValueError(f"{name}: dropout in 'train' mode needs an rng; pass rng=... "
                             f"to pure_fn (or build the layer with mode='eval').")
        inputs = (x,) if mask is None else (x, mask)

        def one(ins, w):
            return self._one(ins[0], ins[1] if len(ins) > 1 else None, w, rng)

        y = run_heads(one, inputs, self.weights, self._n_heads, self._n_parallel_heads,
                      self._use_python_loop, self._use_reference_code)
        if output_rate:
            y = apply_broadcasted_dropout(y, output_rate, fastmath_random.hash_fold_in(rng, 1))
        return y.astype(x.dtype)

    def _forward_predict(self, x):
        if not (isinstance(self.state, tuple) and len(self.state) == 3):
            raise ValueError(f"{self.name} in 'predict' mode has no input memory in its "
                             f"state; call init(input_signature) before decoding.")
        mem_end, mems, inner = self.state
        length = x.shape[1]
        (seen,), q_start, new_mems, new_end = update_predict_memory(
            self.name, mem_end, mems, (x,), *self._predict_memory(), self._check_prompt)
        y = self._run_predict_heads(seen, q_start, length, inner)
        self.state = (new_end, new_mems, inner)
        return y.astype(x.dtype)

    def _check_prompt(self, length: int) -> None:
        """Refuses a prompt (a first 'predict' call of ``length``) that cannot be chunked."""
        check_chunking(self.name, length, self._chunk_len)

    def _run_predict_heads(self, seen, q_start, q_len, inner):
        """Outputs of the ``q_len`` queries from ``q_start`` over the inputs ``seen``."""
        del inner

        def one(ins, w):
            return self._one_incremental(ins[0], w, q_start, q_len)

        return run_heads(one, (seen,), self.weights, self._n_heads, self._n_parallel_heads,
                         self._use_python_loop, self._use_reference_code)
