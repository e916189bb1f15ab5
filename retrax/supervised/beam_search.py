"""Beam search over a predict-mode model, one compiled program per kind of call.

Each row's ``n_beams`` beams are consecutive rows of one batch; every step
keeps the ``n_beams`` best extensions and reorders the rows of the state's
batched leaves (the key/value caches) to follow their beams. A beam ends at
``eos_id`` and then only pads with 0 at no cost; finished beams are ranked with
GNMT's length penalty. Unlike Trax, batches, ``eos_id`` and ``length_penalty``
are all honoured. ``retrax.supervised.decoding`` re-exports ``beam_search``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.layers import base
from retrax.supervised.decoding_checks import cache_length, check_start_id, prepare
from retrax.supervised.decoding_programs import (
    batched_state_leaves,
    fresh_state,
    jit_decoding_program,
    last_log_probs,
    make_setup,
    model_inputs,
    program,
)

__all__ = ["beam_search"]


def beam_search(model: base.Layer, inputs: Any = None, batch_size: int = 1, n_beams: int = 2,
                start_id: int = 0, eos_id: int = 1, max_length: int = 100,
                length_penalty: float = 1.0, accelerate: bool = True) -> list:
    """Beam search; returns ``n_beams`` pairs ``(tokens (B, T), scores (B,))``, best first.

    For ``batch_size=1`` this is Trax's return format. A beam ends at ``eos_id``;
    finished beams are ranked by ``log_prob / ((5 + length) / 6) ** length_penalty``
    (GNMT's normalization; with all beams of equal length this is the plain
    log-probability order).
    """
    where = "beam_search"
    if not isinstance(n_beams, (int, np.integer)) or n_beams < 1:
        raise ValueError(f"{where}: n_beams must be a positive int; got {n_beams!r}.")
    prompt, _ = prepare(model, inputs, batch_size, max_length, None, where)
    check_start_id(model, start_id, where)
    if prompt is None:
        prompt = np.zeros((batch_size, 0), np.int32)
    k = int(n_beams)
    # Each row's beams are k consecutive rows of one batch of batch_size * k.
    setup = make_setup(model, np.repeat(prompt, k, axis=0), start_id)
    cache_len = cache_length(model, setup.positions + max_length, where)
    sig = setup.signature(batch_size * k)
    eos = -1 if eos_id is None else int(eos_id)

    def make(model_ref):  # traces the model twice for the batched leaves: once per program
        batched = tuple(batched_state_leaves(model, setup, cache_len))
        return jit_decoding_program(functools.partial(
            _beam_program, model_ref, batch_size, k, max_length, float(length_penalty), eos,
            batched, sig, cache_len))

    fn = program(model, ("beam", batch_size, k, max_length, float(length_penalty), eos,
                          repr(sig), cache_len), make)
    tokens, scores = fn(model.weights, setup.enc, setup.first)
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    return [(tokens[:, i, :], scores[:, i]) for i in range(k)]


def _beam_program(model_ref, batch, k, max_length, alpha, eos, batched, signature, cache_len,
                  weights, enc, seq):
    model = model_ref()  # (the program holds the model weakly; see decoding_programs.program)
    neg = jnp.float32(-1e9)
    state = fresh_state(model, signature, cache_len)  # made in the program, as in generate
    out, state = model.pure_fn(model_inputs(enc, seq), weights, state, None)
    log_probs = last_log_probs(model, out).reshape(batch, k, -1)
    vocab = log_probs.shape[-1]
    # All beams start identical: keep only beam 0 alive at the first step.
    scores = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, neg) * jnp.ones((batch, 1))
    tokens = jnp.zeros((batch, k, max_length), jnp.int32)
    finished = jnp.zeros((batch, k), bool)
    lengths = jnp.zeros((batch, k), jnp.int32)

    def gather_state(state, beam_index):
        flat_index = (jnp.arange(batch)[:, None] * k + beam_index).reshape(-1)

        def take(x):
            # Batched leaves are (B*K, ...) or (B*K*H, ...) (attention caches merge
            # the heads into the first axis): reorder whole groups of rows.
            rows = x.reshape((batch * k, -1) + x.shape[1:])
            return jnp.take(rows, flat_index, axis=0).reshape(x.shape)

        leaves, treedef = jax.tree_util.tree_flatten(state)
        leaves = [take(x) if b else x for x, b in zip(leaves, batched)]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def body(t, c):
        state, log_probs, scores, tokens, finished, lengths = c
        # Finished beams may only continue with token 0 at no cost.
        ext = jnp.where(finished[..., None],
                        jnp.where(jnp.arange(vocab) == 0, 0.0, neg)[None, None, :], log_probs)
        cand = (scores[..., None] + ext).reshape(batch, k * vocab)
        top_scores, top_index = lax.top_k(cand, k)
        beam_index, tok = top_index // vocab, (top_index % vocab).astype(jnp.int32)
        tokens = jnp.take_along_axis(tokens, beam_index[..., None], axis=1)
        tokens = tokens.at[:, :, t].set(tok)
        was_finished = jnp.take_along_axis(finished, beam_index, axis=1)
        lengths = jnp.take_along_axis(lengths, beam_index, axis=1) + jnp.where(was_finished, 0, 1)
        finished = was_finished | (tok == eos)
        state = gather_state(state, beam_index)
        out, state = model.pure_fn(model_inputs(enc, tok.reshape(-1, 1)), weights, state, None)
        log_probs = last_log_probs(model, out).reshape(batch, k, vocab)
        return state, log_probs, top_scores, tokens, finished, lengths

    state, _, scores, tokens, finished, lengths = lax.fori_loop(
        0, max_length, body, (state, log_probs, scores, tokens, finished, lengths))
    norm = ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha
    ranked = scores / norm
    order = jnp.argsort(-ranked, axis=1)
    tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
    return tokens, jnp.take_along_axis(scores, order, axis=1)
