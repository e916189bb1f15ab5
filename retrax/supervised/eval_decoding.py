"""Sampling with an eval-mode model by recomputing the whole prefix (Trax's ``eval_mode``).

``autoregressive_sample(model, ..., eval_mode=True)`` takes a model built with
``mode='eval'`` (any causal model: it needs no predict-mode caches) and, at each
step, runs it on the tokens so far, right-padded to one fixed length, reading
the output at the next position. As in Trax, no start symbol is fed: the eval
model shifts its (target) input right itself. This is slower than a
predict-mode model (every step recomputes the prefix) and gives the same
tokens; the whole loop is still one compiled program.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from retrax.supervised.decoding_programs import ends_in_log_softmax, model_inputs
from retrax.supervised.sampling import sample_step

__all__ = ["make_recompute_generate", "buffer_length"]


def buffer_length(prefix_length: int, max_length: int, eval_min_length: int) -> int:
    """The fixed decoder length every step runs at: the prefix plus the samples (at least
    ``eval_min_length``), rounded up to a multiple of 8."""
    needed = max(prefix_length + max_length, int(eval_min_length))
    return -(-needed // 8) * 8


def make_recompute_generate(model_ref: Any, max_length: int, temperature: float,
                            top_k: int | None, top_p: float | None, eos_id: int | None,
                            prefix_length: int, length: int) -> Any:
    """Builds ``generate(weights, state, enc, prefix, key) -> (tokens, scores, steps, nan_step)``.

    ``prefix``: ``(B, prefix_length)`` tokens the samples follow; ``length``: the
    decoder length each step runs at (``buffer_length``). Outputs as decoding's
    predict-mode program.
    """

    def generate(weights, state, enc, prefix, key):
        model = model_ref()
        batch = prefix.shape[0]
        buf = jnp.zeros((batch, length), jnp.int32)
        buf = lax.dynamic_update_slice_in_dim(buf, prefix.astype(jnp.int32), 0, axis=1)

        def log_probs_at(buf, t):
            out, _ = model.pure_fn(model_inputs(enc, buf), weights, state, None)
            logits = out[0] if model.n_in == 2 else out
            row = lax.dynamic_index_in_dim(logits, prefix_length + t, axis=1, keepdims=False)
            row = row.astype(jnp.float32)
            return row if ends_in_log_softmax(model) else jax.nn.log_softmax(row, axis=-1)

        tokens = jnp.zeros((batch, max_length), jnp.int32)
        scores = jnp.zeros((batch, max_length), jnp.float32)
        done = jnp.zeros((batch,), bool)
        nan_step = jnp.full((batch,), -1, jnp.int32)

        def cond(c):
            return jnp.logical_and(c[0] < max_length, jnp.logical_not(jnp.all(c[4])))

        def body(c):
            t, buf, tokens, scores, done, nan_step = c
            tok, tokens, scores, done, nan_step = sample_step(
                log_probs_at(buf, t), key, t, temperature, top_k, top_p, eos_id, tokens, scores,
                done, nan_step)
            buf = lax.dynamic_update_slice_in_dim(buf, tok[:, None], prefix_length + t, axis=1)
            return t + 1, buf, tokens, scores, done, nan_step

        t, _, tokens, scores, _, nan_step = lax.while_loop(
            cond, body, (jnp.int32(0), buf, tokens, scores, done, nan_step))
        return tokens, scores, t, nan_step

    return jax.jit(generate)
