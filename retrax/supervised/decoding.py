"""Decoding from predict-mode models: sampling, streaming and beam search.

Trax's API, compiled: ``autoregressive_sample`` runs one XLA program per call
— a ``lax.while_loop`` feeds each sampled token back through the model's
key/value caches. A short prompt (``[start] + prompt`` of at most
``LOOP_PREFILL_POSITIONS`` = 8 positions, e.g. the start token alone) is fed
through the same loop, teacher-forced, so the loop body is the program's only
copy of the model (half the compile of a separate prefill); a longer one is
prefilled in one forward pass first (``prefill=`` forces either). The last
sampled token is never fed. No host round trip happens per token (``autoregressive_sample_stream`` yields per token, but
its step function is compiled once). Compiled programs are cached per model and
shape, so a repeated call compiles nothing; the cache belongs to decoding
(``decoding_programs``), not to the model, and holds the model weakly (its
programs go when the model does).

Differences from Trax 1.4.1, on purpose:

* The model is not touched (neither its state nor any attribute of its
  layers): each call starts from a fresh predict-mode state whose caches are
  sized to what the call feeds (start + prompt + ``max_length`` - 1, rounded
  up to a multiple of 8), not 2048. The size is an option of the init
  (``tl.predict_cache_length``), which a user's own step-by-step loop can
  use too.
* Each row stops at its own ``eos_id``; positions after it are ``0``; the loop
  ends when every row is done (Trax keeps sampling finished rows).
* Randomness comes from ``rng`` / ``seed`` (default seed 0), never from NumPy's
  global state; the same seed gives the same samples.
* ``beam_search`` supports batches, honours ``eos_id`` and ``length_penalty``
  (Trax asserts batch 1 and ignores both).
* Prompts may have different lengths: pass ``prompt_lengths`` (the rest of each
  row is padding and ignored).
* ``top_k`` / ``top_p`` keep every token tied with the last one kept (no
  arbitrary tie-breaking), so with ties the support can exceed ``k``.
* NaN log-probabilities (e.g. a diverged checkpoint) raise
  ``FloatingPointError`` naming the row and step, instead of decoding garbage.
* Arguments decoding cannot honour are refused before anything is compiled or
  allocated: a NaN, infinite or negative ``temperature``, a ``start_id`` or
  prompt id outside the vocabulary, and a ``max_length`` that with the prompt
  exceeds the model's ``max_len``.

Speed, on CPU: top-k / top-p thresholds are found by a bitwise search instead
of a sort (XLA's CPU sort is slow), the argmax is a max/compare/min, and
``Dense`` layers split one-row products across cores
(``retrax.fastmath.linalg.dense_dot``); ``benchmarks/decode.py`` measures it.

Example (the quick start's sort model)::

    model = trax.models.TransformerLM(d_model=32, d_ff=128, n_layers=2, vocab_size=32,
                                      mode='predict')
    model.init_from_file(path, weights_only=True,
                         input_signature=trax.shapes.ShapeDtype((1, 1), np.int32))
    autoregressive_sample(model, np.array([[0, 3, 15, 14, 9, 0]]), temperature=0.0,
                          max_length=4)   # -> array([[ 3,  9, 14, 15]])
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.fastmath import random as fastmath_random
from retrax.layers import base
from retrax.supervised.beam_search import beam_search
from retrax.supervised.decoding_checks import (
    CACHE_BUCKET,
    cache_length,
    check_sampling,
    check_start_id,
    prepare,
    vocab_and_max_len,
)
from retrax.supervised.decoding_programs import (
    PREFILL_CHOICES,
    StateStructureError,
    compiled_programs,
    ends_in_log_softmax,
    fresh_state,
    jit_decoding_program,
    last_log_probs,
    last_logits,
    make_setup,
    model_inputs,
    note_state_structure_changes,
    prefill_in_loop,
    program,
    without_log_softmax,
)
from retrax.supervised.eval_decoding import buffer_length, make_recompute_generate
from retrax.supervised.sampling import sample, sample_step

__all__ = ["autoregressive_sample", "autoregressive_sample_stream", "beam_search",
           "compiled_programs", "lowered_generation"]


def _key(rng: Any, seed: int | None) -> Any:
    if rng is not None:
        return rng
    return jax.random.PRNGKey(0 if seed is None else int(seed))


def _seed_or_key(rng: Any, seed: int | None) -> Any:
    """What a generation program receives for its randomness: ``rng``, or the seed itself.

    An int32 seed becomes ``PRNGKey(seed)`` inside the program (the same key),
    so a call with the default seed compiles no eager key program first.
    """
    if rng is None:
        value = 0 if seed is None else int(seed)
        if -2**31 <= value < 2**31:
            return np.int32(value)
    return _key(rng, seed)


def _is_seed(key: Any) -> bool:
    """Whether a program's ``key`` argument is a seed (an int scalar), not a key."""
    return np.ndim(key) == 0 and jnp.issubdtype(key.dtype, jnp.integer)


# --------------------------------------------------------------------------
# Language models and encoder-decoders: one compiled generation
# --------------------------------------------------------------------------


def _make_generate(model_ref: Any, max_length: int, temperature: float, top_k: int | None,
                   top_p: float | None, eos_id: int | None, signature: Any,
                   cache_len: int, batched: bool, with_scores: bool = True) -> Any:
    """Builds ``generate(weights, enc, first, n_first, key)``, one XLA program.

    ``first`` holds the decoder's prefill tokens (``[start] + prompt``) in its
    first ``n_first`` columns. With ``batched``, they go through the model in
    one forward pass before the loop (a second copy of the model graph in the
    program); otherwise the loop feeds them one per iteration, teacher-forced
    (its input is ``first[:, i]`` while ``i < n_first``, then the token just
    sampled; outputs before position ``n_first - 1`` are not sampled), so the
    loop body is the program's only copy of the model. Either way each
    iteration feeds one token and then samples, so the last sampled token is
    never fed.

    The fresh predict-mode state (caches of ``cache_len`` for ``signature``) is
    made inside the program, so XLA allocates the loop's caches in place
    instead of copying zero-filled input buffers into the loop.

    Without ``with_scores``, a model that ends in ``LogSoftmax`` runs without
    it (``decoding_programs.without_log_softmax``) and tokens are chosen from
    its logits: the same tokens, two reductions over the vocabulary fewer per
    step (rows whose log-probabilities would be NaN are still found).

    Returns ``(tokens, scores, steps, nan_step)`` (``scores`` is ``None`` unless
    ``with_scores``; the loop then skips them): ``nan_step[b]`` is the first
    step at which row ``b``'s log-probabilities held NaN (``-1``: never); such
    a row stops there and the caller raises.
    """

    def generate(weights, enc, first, n_first, key):
        model = model_ref()  # (the program holds the model weakly; see decoding_programs.program)
        if _is_seed(key):  # the default key is made here, not by an eager program of its own
            key = jax.random.PRNGKey(key)
        batch, width = first.shape
        state = fresh_state(model, signature, cache_len)
        last = n_first - 1  # the position whose output predicts the first new token
        from_logits = not with_scores and ends_in_log_softmax(model)
        if from_logits:
            model, trim = without_log_softmax(model)
            weights, state = trim(weights), trim(state)
            outputs_at_last = last_logits
        else:
            outputs_at_last = last_log_probs

        def step(values, col, tokens, scores, done, nan_step):
            return sample_step(values, key, col, temperature, top_k, top_p, eos_id, tokens,
                               scores, done, nan_step, from_logits=from_logits)

        tokens = jnp.zeros((batch, max_length), jnp.int32)
        scores = jnp.zeros((batch, max_length), jnp.float32) if with_scores else None
        done = jnp.zeros((batch,), bool)
        nan_step = jnp.full((batch,), -1, jnp.int32)
        if batched:
            # Prefill: [start] + prompt in one forward pass; its last position
            # predicts the first new token, which the loop then feeds.
            out, state = model.pure_fn(model_inputs(enc, first), weights, state, None)
            inp, tokens, scores, done, nan_step = step(
                outputs_at_last(model, out), jnp.int32(0), tokens, scores, done, nan_step)
            i = jnp.asarray(n_first, jnp.int32)
        else:
            inp, i = first[:, 0], jnp.int32(0)
        carry = (i, state, inp, tokens, scores, done, nan_step)

        def cond(c):
            i, done = c[0], c[5]
            return jnp.logical_and(i < last + max_length, jnp.logical_not(jnp.all(done)))

        def body(c):
            i, state, inp, tokens, scores, done, nan_step = c
            out, state = model.pure_fn(model_inputs(enc, inp[:, None]), weights, state, None)
            col = i - last  # the column this position's output samples (< 0: in the prompt)
            tok, tokens, scores, new_done, new_nan = step(
                outputs_at_last(model, out), jnp.maximum(col, 0), tokens, scores, done, nan_step)
            if not batched:
                # In the prompt nothing is recorded: column 0 is written again
                # when sampling starts, and done / nan_step keep their values.
                sampling = col >= 0
                new_done = jnp.where(sampling, new_done, done)
                new_nan = jnp.where(sampling, new_nan, nan_step)
                forced = lax.dynamic_index_in_dim(first, jnp.minimum(i + 1, width - 1), axis=1,
                                                  keepdims=False)
                tok = jnp.where(i + 1 < n_first, forced, tok)
            return i + 1, state, tok, tokens, scores, new_done, new_nan

        try:
            i, _, _, tokens, scores, _, nan_step = lax.while_loop(cond, body, carry)
        except TypeError as e:
            # A first step that changes the state's structure cannot be a loop
            # iteration (see _run); any other error is the caller's to see.
            after = jax.eval_shape(body, carry)[1]
            if batched or (jax.tree_util.tree_structure(after)
                           == jax.tree_util.tree_structure(state)):
                raise
            raise StateStructureError(str(e)) from None
        return tokens, scores, i - last, nan_step

    return jit_decoding_program(generate)


def _collect(tokens, scores, steps, nan_step, batch, max_length, where, rows):
    """A program's results as host arrays of ``max_length`` columns (raises on NaN rows)."""
    _raise_on_nan(nan_step, where, rows)
    n = int(steps)
    out = np.zeros((batch, max_length), np.int32)
    out_scores = np.zeros((batch, max_length), np.float32)
    out[:, :n] = np.asarray(tokens)[:, :n]
    if scores is not None:
        out_scores[:, :n] = np.asarray(scores)[:, :n]
    return out, out_scores, np.full((batch,), n, np.int32)


def _raise_on_nan(nan_step: Any, where: str, rows: Any = None) -> None:
    bad = np.flatnonzero(np.asarray(nan_step) >= 0)
    if bad.size:
        row = int(bad[0] if rows is None else np.asarray(rows)[bad[0]])
        raise FloatingPointError(
            f"{where}: the model's log-probabilities for row {row} are NaN at step "
            f"{int(np.asarray(nan_step)[bad[0]])} (of {len(bad)} row(s) with NaN). Check the "
            f"weights for NaN/inf (e.g. a diverged checkpoint)."
        )


def autoregressive_sample(model: base.Layer, inputs: Any = None, batch_size: int = 1,
                          temperature: float = 1.0, start_id: int = 0, eos_id: int = 1,
                          max_length: int = 100, accelerate: bool = True,
                          eval_mode: bool = False, eval_min_length: int = 1, *,
                          top_k: int | None = None, top_p: float | None = None, rng: Any = None,
                          seed: int | None = None, return_log_probs: bool = False,
                          prompt_lengths: Any = None, prefill: str = "auto") -> Any:
    """Samples up to ``max_length`` tokens after ``inputs``; returns ``(B, T)`` ints.

    Args:
      model: a predict-mode language model (1 input: ``TransformerLM``, ``RNNLM``,
        ...) or encoder-decoder (2 inputs: ``Transformer``, ``LSTMSeq2SeqAttn``).
      inputs: ``(B, L)`` prompt for a language model, or the source tokens of an
        encoder-decoder; ``None`` samples from the start symbol alone.
      batch_size: number of rows; must equal ``inputs.shape[0]``.
      temperature: 0.0 is greedy (argmax); otherwise samples ``softmax(logits/T)``.
      start_id: the start symbol fed before the prompt.
      eos_id: a row stops after emitting it (``None``: never).
      max_length: most tokens generated per row.
      top_k / top_p: keyword-only; restrict sampling to the k most likely tokens
        / the smallest set with probability >= p.
      rng / seed: keyword-only randomness (default seed 0).
      return_log_probs: also return the ``(B, T)`` log-probabilities of the
        chosen tokens under the model.
      prompt_lengths: keyword-only ``(B,)`` true lengths of right-padded prompts.
      prefill: keyword-only; how a predict-mode language model reads ``[start_id]
        + prompt``: ``'loop'`` feeds it through the decoding loop one token per
        iteration (the compiled program then holds one copy of the model: a
        fast first call), ``'batched'`` runs it in one forward pass before the
        loop (a second copy of the model: more compile, faster for long
        prompts), ``'auto'`` (default) the loop for at most
        ``decoding_programs.LOOP_PREFILL_POSITIONS`` (8) positions. Greedy
        tokens and seeded samples are the same either way, up to float
        rounding. Encoder-decoders always prefill batched; ``eval_mode``
        ignores it.
      eval_mode: sample with a model built with ``mode='eval'``, recomputing
        the whole prefix at every step (Trax's option; slower, same tokens; no
        start symbol is fed, the model shifts its input right itself; see
        :mod:`retrax.supervised.eval_decoding`).
      eval_min_length: with ``eval_mode``, the least length each step runs at.
      accelerate: accepted for Trax compatibility (decoding is always compiled).

    ``T`` is the number of steps run: ``max_length``, or fewer when every row
    has emitted ``eos_id``; positions after a row's EOS are 0.
    """
    where = "autoregressive_sample"
    check_sampling(temperature, top_k, top_p, where)
    if prefill not in PREFILL_CHOICES:
        raise ValueError(f"{where}: prefill must be one of {PREFILL_CHOICES}; got {prefill!r}.")
    prompt, lengths = prepare(model, inputs, batch_size, max_length, prompt_lengths, where,
                              "eval" if eval_mode else "predict")
    check_start_id(model, start_id, where)
    # The length check comes before any array of max_length is made.
    longest = (np.zeros((batch_size, 0), np.int32) if prompt is None
               else prompt[:, :int(lengths.max())])
    positions = make_setup(model, longest, start_id).positions - (1 if eval_mode else 0)
    cache_length(model, positions + max_length, where)
    generate_group = _generate_group_eval if eval_mode else _generate_group
    groups = _length_groups(model, prompt, lengths, batch_size)
    tokens = np.zeros((batch_size, max_length), np.int32)
    log_probs = np.zeros((batch_size, max_length), np.float32)
    counts = np.zeros((batch_size,), np.int32)
    if len(groups) > 1:
        key = _key(rng, seed)
        keys = [jax.random.fold_in(key, gi) for gi in range(len(groups))]
    else:
        keys = [_seed_or_key(rng, seed) if not eval_mode else _key(rng, seed)]
    for (rows, group_prompt), group_key in zip(groups, keys):
        t, s, c = generate_group(model, group_prompt, len(rows), temperature, start_id, eos_id,
                                 max_length, top_k, top_p, group_key, where, rows,
                                 eval_min_length=eval_min_length, prefill=prefill,
                                 with_scores=return_log_probs)
        tokens[rows], log_probs[rows], counts[rows] = t, s, c
    n = int(counts.max()) if counts.size else 0
    tokens, log_probs = tokens[:, :n], log_probs[:, :n]
    return (tokens, log_probs) if return_log_probs else tokens


def _length_groups(model: base.Layer, prompt: Any, lengths: Any, batch_size: int):
    """Rows grouped by prompt length (each group decodes without padding)."""
    if prompt is None:
        return [(np.arange(batch_size), None)]
    if model.n_in == 2:
        return [(np.arange(batch_size), prompt)]
    groups = []
    for n in np.unique(lengths):
        rows = np.flatnonzero(lengths == n)
        groups.append((rows, prompt[rows, :n]))
    return groups


def _generation(model, prompt, batch, temperature, start_id, eos_id, max_length, top_k, top_p,
                where, prefill, with_scores=True):
    """The compiled generation program for one group of rows, and its arguments but the key."""
    if prompt is None:
        prompt = np.zeros((batch, 0), np.int32)
    setup = make_setup(model, prompt, start_id)
    # The check keeps Trax's bound (prompt + max_length positions); the cache
    # holds what is fed: the last sampled token never is.
    cache_length(model, setup.positions + max_length, where)
    cache_len = cache_length(model, setup.positions + max_length - 1, where)
    sig = setup.signature(batch)
    eos = None if eos_id is None else int(eos_id)
    batched = not prefill_in_loop(model, setup, prefill, where)
    first = setup.first
    if not batched:
        # One program serves every prefill up to a multiple of CACHE_BUCKET
        # positions (the count is an argument): pad with zeros, never read.
        width = -(-first.shape[1] // CACHE_BUCKET) * CACHE_BUCKET
        first = np.pad(first, ((0, 0), (0, width - first.shape[1])))
    fn = program(model, ("generate", max_length, float(temperature), top_k, top_p, eos,
                          repr(sig), cache_len, batched, with_scores),
                  lambda model_ref: _make_generate(model_ref, max_length, float(temperature),
                                                   top_k, top_p, eos, sig, cache_len, batched,
                                                   with_scores))
    # NumPy arguments go to the program as they are (jnp.asarray would compile
    # a small program of its own on a first call).
    return fn, (model.weights, setup.enc, first, np.int32(setup.positions))


def _generate_group(model, prompt, batch, temperature, start_id, eos_id, max_length, top_k,
                    top_p, key, where, rows=None, eval_min_length=1, prefill="auto",
                    with_scores=True):
    tokens, scores, steps, nan_step = _run(
        lambda: _generation(model, prompt, batch, temperature, start_id, eos_id, max_length,
                            top_k, top_p, where, prefill, with_scores),
        lambda fn, args: fn(*args, key), model, prefill, where)
    return _collect(tokens, scores, steps, nan_step, batch, max_length, where, rows)


def lowered_generation(model: base.Layer, inputs: Any = None, batch_size: int = 1,
                       temperature: float = 1.0, start_id: int = 0, eos_id: int = 1,
                       max_length: int = 100, *, top_k: int | None = None,
                       top_p: float | None = None, prefill: str = "auto",
                       return_log_probs: bool = False) -> Any:
    """The program ``autoregressive_sample`` runs for these arguments, lowered (not run).

    A ``jax.stages.Lowered``: ``.compile().as_text()`` is the optimized HLO,
    whose operations (e.g. ``text.count(' fusion(')``) measure what a first
    call compiles. Arguments as ``autoregressive_sample`` (one prompt length).
    """
    where = "lowered_generation"
    check_sampling(temperature, top_k, top_p, where)
    prompt, _ = prepare(model, inputs, batch_size, max_length, None, where)
    check_start_id(model, start_id, where)
    return _run(lambda: _generation(model, prompt, batch_size, temperature, start_id, eos_id,
                                    max_length, top_k, top_p, where, prefill,
                                    return_log_probs),
                lambda fn, args: fn.lower(*args, _seed_or_key(None, 0)), model, prefill, where)


def _run(make: Any, use: Any, model: base.Layer, prefill: str, where: str) -> Any:
    """``use(*make())``; once more with a batched prefill if the loop prefill cannot trace.

    A model whose first call changes its state's structure (an RNN language
    model's hidden state appears then) cannot take that call inside the loop;
    the first trace finds out, the model is noted, and its programs prefill
    batched from then on (``prefill='loop'`` then raises).
    """
    try:
        return use(*make())
    except StateStructureError:
        note_state_structure_changes(model)
        if prefill == "loop":
            prefill_in_loop(model, None, prefill, where)  # raises, saying why
        return use(*make())


def _generate_group_eval(model, prompt, batch, temperature, start_id, eos_id, max_length,
                         top_k, top_p, key, where, rows=None, eval_min_length=1, prefill="auto",
                         with_scores=True):
    """``_generate_group`` for an eval-mode model: recompute the prefix at every step."""
    del start_id, prefill, with_scores  # As in Trax: the eval model shifts its input right itself.
    if prompt is None:
        prompt = np.zeros((batch, 0), np.int32)
    setup = make_setup(model, prompt, 0)
    prefix = setup.first[:, 1:]  # Without the start symbol.
    length = buffer_length(prefix.shape[1], max_length, eval_min_length)
    _, max_len = vocab_and_max_len(model)
    if max_len is not None:
        length = min(length, max_len)
    eos = None if eos_id is None else int(eos_id)
    fn = program(model, ("recompute", max_length, float(temperature), top_k, top_p, eos,
                          prefix.shape, length, setup.enc is None),
                 lambda model_ref: make_recompute_generate(
                     model_ref, max_length, float(temperature), top_k, top_p, eos,
                     prefix.shape[1], length))
    tokens, scores, steps, nan_step = fn(model.weights, model.state, setup.enc,
                                         jnp.asarray(prefix), key)
    return _collect(tokens, scores, steps, nan_step, batch, max_length, where, rows)

def autoregressive_sample_stream(model: base.Layer, inputs: Any = None, batch_size: int = 1,
                                 temperature: float = 1.0, start_id: int = 0,
                                 accelerate: bool = True, eval_mode: bool = False,
                                 eval_min_length: int = 1, *, top_k: int | None = None,
                                 top_p: float | None = None, rng: Any = None,
                                 seed: int | None = None,
                                 max_length: int | None = None) -> Iterator[np.ndarray]:
    """Yields the sampled tokens ``(B,)`` of each step, forever or up to ``max_length``.

    The step function is compiled once; no recompilation per token. The cache
    holds ``max_length`` tokens (default: up to the model's ``max_len``).
    """
    where = "autoregressive_sample_stream"
    if eval_mode:
        raise NotImplementedError(
            f"{where}: eval_mode=True is not supported by the stream; use "
            f"autoregressive_sample(..., eval_mode=True), or a predict-mode model here.")
    check_sampling(temperature, top_k, top_p, where)
    _, max_len = vocab_and_max_len(model)
    limit = max_length if max_length is not None else (max_len or 2048)
    prompt, _ = prepare(model, inputs, batch_size, limit, None, where)
    check_start_id(model, start_id, where)
    if prompt is None:
        prompt = np.zeros((batch_size, 0), np.int32)
    setup = make_setup(model, prompt, start_id)
    total = setup.positions + limit
    if setup.enc is None:
        # A language model's prompt shares the positions with the samples: by
        # default the stream fills max_len; the total is checked and rounded
        # as in autoregressive_sample. (An encoder-decoder's cache keeps its
        # exact length, unchecked, as before.)
        if max_length is None and max_len is not None:
            total = max_len
            limit = max_len - setup.positions
        total = cache_length(model, total, where)
    state = fresh_state(model, setup.signature(batch_size), total)
    key = _key(rng, seed)
    temperature = float(temperature)

    def make(model_ref):
        def step(weights, state, enc, tokens, key):
            model = model_ref()  # (the program holds the model weakly; see decoding_programs.program)
            out, state = model.pure_fn(model_inputs(enc, tokens), weights, state, None)
            log_probs = last_log_probs(model, out)
            tok = sample(log_probs, key, temperature, top_k, top_p)  # past the end: NaN row
            return jnp.where(tok >= log_probs.shape[-1], -1, tok), state  # -1: a NaN row

        return jit_decoding_program(step, donate_argnums=(1,))

    step_fn = program(model, ("stream", temperature, top_k, top_p), make)
    tokens = jnp.asarray(setup.first)
    for i in range(limit):
        tok, state = step_fn(model.weights, state, setup.enc, tokens,
                             fastmath_random.hash_fold_in(key, i))
        host = np.asarray(tok)
        _raise_on_nan(np.where(host < 0, i, -1), where)
        yield host
        tokens = tok[:, None]


