"""Trax's memory-efficient ``EncDecAttention``: decoder queries over encoder keys and values.

Per-head weights stacked on axis 0 (Trax's layout: ``w_q (n_heads, d_model,
d_qk)``, ``w_k (n_heads, d_kv, d_qk)``, ``w_v (n_heads, d_kv, d_v)``, ``w_o
(n_heads, d_v, d_model)``), computed per (example, head) pair as
``SelfAttention`` is (``n_parallel_heads``, ``use_python_loop``,
``use_reference_code``). In ``'predict'`` mode the encoder's keys and values
are cached on the first call.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from retrax.fastmath import random as fastmath_random
from retrax.layers.attention_checks import check_dropout, check_positive_int
from retrax.layers.base import Layer
from retrax.layers.broadcasted_dropout import apply_broadcasted_dropout
from retrax.layers.chunked_attention import attend
from retrax.layers.core import check_mode
from retrax.layers.efficient_attention import (
    check_attention_input,
    check_attention_mask,
    check_parallel_heads,
    head_weights,
    run_heads,
)

__all__ = ["EncDecAttention"]


def enc_dec_attend(q: Any, k: Any, v: Any, mask: Any = None, dropout: float = 0.0,
                   rng: Any = None) -> Any:
    """``EncDecAttention`` of one example and head: ``(Lq, dv)`` (``mask`` ``(L_kv,)``).

    Trax 1.4.1 applies the mask as position metadata shifted by one, so real
    keys lose 1e9 and padding 2e9 (see ``EncDecAttention``).
    """
    if mask is None:
        kv_info = mask_fn = None
    else:
        kv_info = (~mask).astype(jnp.int32) + 1

        def mask_fn(dots, q_info, kv_info):
            del q_info
            return dots - 1e9 * kv_info.astype(jnp.float32)
    o, _ = attend(q, k, v, mask_fn=mask_fn, kv_info=kv_info, dropout=dropout, rng=rng,
                  trax_rounding=True)
    return o


class EncDecAttention(Layer):
    """Decoder-to-encoder attention with per-head weights (Trax's efficient one).

    ``(q_antecedent, kv_antecedent, mask) -> y`` with ``masked=True`` (the
    default; ``mask`` ``(B, L_kv)``, True for real encoder positions), or
    ``(q_antecedent, kv_antecedent) -> y``. ``q_antecedent``: ``(B, Lq, D)``,
    ``kv_antecedent``: ``(B, L_kv, D_kv)``; ``y``: ``(B, Lq, D)``.

    In ``'predict'`` mode the encoder's keys and values are computed on the
    first call and kept in the state, ``(keys, values)`` of shapes ``(B,
    n_heads, L_kv, d_qk)`` and ``(B, n_heads, L_kv, d_v)`` (``()`` until
    then, as ``tl.Cache``'s); later calls (one decoder token each) reuse
    them and ignore ``kv_antecedent`` beyond its shape. A fresh state from
    ``init`` starts a new sequence. Other modes keep no state.

    With ``masked=True`` this is Trax 1.4.1's arithmetic, kept so that its
    checkpoints give the same outputs: the mask is applied as position
    metadata shifted by one, so *every* score has 1e9 subtracted (2e9 at
    padding). In float32 that rounds the scores of the real positions, and
    their log-sum-exp, to the same value: each real position gets attention
    weight 1 (the output is the *sum* of their values), whatever the queries
    and keys (exactly so while the scores and the log of the number of real
    positions stay below 32).

    >>> import numpy as np
    >>> from retrax import shapes
    >>> attn = EncDecAttention(n_heads=2, d_qk=4, d_v=4, mode='eval')
    >>> sig = (shapes.ShapeDtype((1, 3, 8)), shapes.ShapeDtype((1, 5, 6)),
    ...        shapes.ShapeDtype((1, 5), bool))
    >>> _ = attn.init(sig)
    >>> attn((np.ones((1, 3, 8), np.float32), np.ones((1, 5, 6), np.float32),
    ...       np.ones((1, 5), bool))).shape
    (1, 3, 8)
    """

    def __init__(self, n_heads: int = 2, d_qk: int = 64, d_v: int = 64, masked: bool = True,
                 mode: str = "train", attention_dropout: float = 0.0,
                 output_dropout: float = 0.0, n_parallel_heads: int | None = None,
                 use_python_loop: bool = False, use_reference_code: bool = False):
        name = type(self).__name__
        super().__init__(n_in=3 if masked else 2, n_out=1)
        self._mode = check_mode(name, mode)
        self._n_heads = check_positive_int(name, "n_heads", n_heads)
        self._d_qk = check_positive_int(name, "d_qk", d_qk)
        self._d_v = check_positive_int(name, "d_v", d_v)
        self._masked = masked
        self._attention_dropout = check_dropout(name, attention_dropout)
        self._output_dropout = check_dropout(name, output_dropout)
        self._n_parallel_heads = check_parallel_heads(name, self._n_heads, n_parallel_heads)
        self._use_python_loop = use_python_loop
        self._use_reference_code = use_reference_code

    def init_weights_and_state(self, input_signature):
        q_sig, kv_sig = input_signature[0], input_signature[1]
        self.weights = head_weights(self.rng, self._n_heads, int(q_sig.shape[-1]),
                                     int(kv_sig.shape[-1]), self._d_qk, self._d_v, False)

    def forward(self, inputs):
        name = self.name
        q_in, kv_in = inputs[0], inputs[1]
        mask = inputs[2] if self._masked else None
        check_attention_input(name, q_in, self.weights[0].shape[1])
        check_attention_input(name, kv_in, self.weights[1].shape[1])
        if mask is not None:
            check_attention_mask(name, mask, kv_in)
            mask = mask.astype(bool)
        if self._mode == "predict":
            return self._forward_predict(q_in, kv_in, mask)
        train = self._mode == "train"
        attention_rate = self._attention_dropout if train else 0.0
        output_rate = self._output_dropout if train else 0.0
        rng = self.rng if (attention_rate or output_rate) else None
        if rng is not None and not self.has_rng:
            raise ValueError(f"{name}: dropout in 'train' mode needs an rng; pass rng=... "
                             f"to pure_fn (or build the layer with mode='eval').")
        attend_rng = None if rng is None else fastmath_random.hash_fold_in(rng, 0)

        def one(ins, w):
            w_q, w_k, w_v, w_o = w
            o = enc_dec_attend(ins[0] @ w_q, ins[1] @ w_k, ins[1] @ w_v,
                               ins[2] if len(ins) > 2 else None, attention_rate, attend_rng)
            return o @ w_o

        ins = (q_in, kv_in) if mask is None else (q_in, kv_in, mask)
        y = run_heads(one, ins, self.weights, self._n_heads, self._n_parallel_heads,
                      self._use_python_loop, self._use_reference_code)
        if output_rate:
            y = apply_broadcasted_dropout(y, output_rate, fastmath_random.hash_fold_in(rng, 1))
        return y.astype(q_in.dtype)

    def _forward_predict(self, q_in, kv_in, mask):
        w_q, w_k, w_v, w_o = self.weights
        cache = self.state
        if isinstance(cache, tuple) and cache == ():  # the first call: fill the cache
            cache = (jnp.einsum("bld,hde->bhle", kv_in, w_k),
                     jnp.einsum("bld,hde->bhle", kv_in, w_v))
        elif not (isinstance(cache, tuple) and len(cache) == 2):
            raise ValueError(f"{self.name}: the 'predict'-mode state must be () or (keys, "
                             f"values); got {type(cache).__name__}. Use the state from init.")
        keys, values = cache
        if keys.shape[0] != kv_in.shape[0] or keys.shape[2] != kv_in.shape[1]:
            raise ValueError(
                f"{self.name}: the cached keys are for {keys.shape[0]} sequences of "
                f"{keys.shape[2]} encoder positions but the call has "
                f"{tuple(kv_in.shape[:2])}; start a new sequence with a fresh state from init.")
        q = jnp.einsum("bld,hde->bhle", q_in, w_q)
        per_head = jax.vmap(lambda a, b, c, m: enc_dec_attend(a, b, c, m),
                            in_axes=(0, 0, 0, None))
        if mask is None:
            o = jax.vmap(lambda a, b, c: per_head(a, b, c, None))(q, keys, values)
        else:
            o = jax.vmap(per_head)(q, keys, values, mask)
        self.state = cache
        return jnp.einsum("bhlv,hvd->bld", o, w_o).astype(q_in.dtype)
