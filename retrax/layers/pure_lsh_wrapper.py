"""Trax's ``PureLSHSelfAttentionWrapper``: projections, weightless LSH attention, output.

``Serial`` of (1) the query-key and value projections split into heads, (2)
a weightless LSH layer (``PureLSHSelfAttention`` by default), (3)
``MergeHeads`` and (4) an output ``Dense(d_model)``, with ``d_model = d_qk *
n_heads``. With ``num_weights=2`` the projections are two ``Dense`` layers
(query-key, value); with ``num_weights=3`` three (query, key, value) and
the query-key is the average of the first two. This is the ``'model'``
weight format of Trax 1.4.1; its ``'sparse'`` format (``FactoredDense`` and
``LocallyConvDense`` projections) and ``rotary_position_emb`` are not
implemented in retrax.

Data stack (``masked=False``; with ``masked=True`` a mask ``(B, L)`` follows
``x`` and reaches the LSH layer):

  - inputs: x          (B, L, d_model)
  - outputs: y         (B, L, d_model)

>>> import jax
>>> from retrax import shapes
>>> attn = PureLSHSelfAttentionWrapper(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
...                                    n_hashes=2, n_buckets=4, bias=False, num_weights=2,
...                                    mode='eval')
>>> weights, _ = attn.init(shapes.ShapeDtype((1, 8, 8)))
>>> [w.shape for w in jax.tree_util.tree_leaves(weights)]  # w_qk, w_v, w_out
[(8, 8), (8, 8), (8, 8)]
"""

from __future__ import annotations

from typing import Any

from retrax.layers.attention_checks import check_positive_int
from retrax.layers.attention_math import MergeHeads, SplitIntoHeads
from retrax.layers.base import Fn
from retrax.layers.core import Dense
from retrax.layers.pure_lsh_attention import PureLSHSelfAttention
from retrax.layers.stack_combinators import Branch, Parallel, Serial

__all__ = ["PureLSHSelfAttentionWrapper"]


def project_and_split_heads(d_model: int, n_heads: int, use_bias: bool,
                            num_weights: int) -> Any:
    """``x -> (qk, v)``, both ``(B * n_heads, L, d_model / n_heads)`` (Trax's 'model' format)."""
    if num_weights == 2:
        return Branch([Dense(d_model, use_bias=use_bias), SplitIntoHeads(n_heads)],
                      [Dense(d_model, use_bias=use_bias), SplitIntoHeads(n_heads)])
    return Serial(
        Branch(Dense(d_model, use_bias=use_bias), Dense(d_model, use_bias=use_bias),
               Dense(d_model, use_bias=use_bias)),                 # q k v
        Fn("QKAvg", lambda q, k: (q + k) / 2.0, n_out=1),          # qk v
        Parallel(SplitIntoHeads(n_heads), SplitIntoHeads(n_heads)),
    )


class PureLSHSelfAttentionWrapper(Serial):
    """LSH self-attention with Trax's projection layers around a weightless LSH layer.

    Arguments as Trax 1.4.1's; the other keyword arguments (``chunk_len``,
    ``n_hashes``, ``n_buckets``, ``predict_mem_len``, ...) go to
    ``pure_lsh_implementation``. Its ``'predict'`` mode is the LSH layer's.
    """

    def __init__(self, n_heads: int = 1, d_qk: int = 64, d_v: int = 64, causal: bool = False,
                 masked: bool = False, output_dropout: float = 0.0,
                 attention_dropout: float = 0.0, pure_lsh_implementation: Any = None,
                 bias: bool = True, mode: str = "train", num_weights: int = 3,
                 sparsity: int = 16, weights_format: str = "model",
                 rotary_position_emb: bool = False, **pure_lsh_implementation_kwargs: Any):
        del sparsity
        name = type(self).__name__
        n_heads = check_positive_int(name, "n_heads", n_heads)
        d_qk = check_positive_int(name, "d_qk", d_qk)
        if weights_format != "model" or rotary_position_emb:
            raise NotImplementedError(
                f"{name}: weights_format={weights_format!r} with rotary_position_emb="
                f"{rotary_position_emb!r} is not implemented in retrax; use "
                f"weights_format='model' and rotary_position_emb=False.")
        if num_weights not in (2, 3):
            raise ValueError(f"{name}: num_weights must be 2 (query-key, value) or 3 (query, "
                             f"key, value); got {num_weights!r}.")
        d_model = d_qk * n_heads
        implementation = pure_lsh_implementation or PureLSHSelfAttention
        attention = implementation(n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal,
                                   masked=masked, mode=mode, output_dropout=output_dropout,
                                   attention_dropout=attention_dropout,
                                   **pure_lsh_implementation_kwargs)
        super().__init__(project_and_split_heads(d_model, n_heads, bias, num_weights),
                         attention, MergeHeads(n_heads), Dense(d_model, use_bias=bias),
                         name=name)
        self._mode = mode
