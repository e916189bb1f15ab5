"""Decoding from predict-mode models: sampling, streaming and beam search.

Trax's API, compiled: ``autoregressive_sample`` runs one XLA program per call
— the prompt is prefilled in one forward pass, then a ``lax.while_loop`` feeds
each sampled token back through the model's key/value caches. No host round
trip happens per token (``autoregressive_sample_stream`` yields per token, but
its step function is compiled once). Compiled programs are cached per model and
shape, so a repeated call compiles nothing; the cache belongs to this module
and holds the model weakly (its programs go when the model does).

Differences from Trax 1.4.1, on purpose:

* The model is not touched (neither its state nor any attribute of its
  layers): each call starts from a fresh predict-mode state whose caches are
  sized to what the call needs (prompt + ``max_length``, rounded up to a
  multiple of 8), not 2048. The size is an option of the init
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

import functools
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.layers import base, core
from retrax.layers.attention import predict_cache_length

__all__ = ["autoregressive_sample", "autoregressive_sample_stream", "beam_search",
           "compiled_programs"]

_CACHE_BUCKET = 8


# --------------------------------------------------------------------------
# Model inspection and fresh predict-mode state
# --------------------------------------------------------------------------


def _walk(layer: base.Layer) -> Iterator[base.Layer]:
    seen: set[int] = set()
    stack = [layer]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(layer.sublayers)


def _check_model(model: base.Layer, where: str) -> None:
    if not isinstance(model, base.Layer):
        raise TypeError(f"{where}: model must be a retrax Layer; got {type(model).__name__}.")
    modes = {layer.mode for layer in _walk(model)} - {None}
    # (A predict-mode Transformer runs its encoder in 'eval' mode: that is fine.)
    if "train" in modes or (modes and "predict" not in modes):
        mode = "train" if "train" in modes else sorted(modes)[0]
        raise ValueError(
            f"{where}: the model is in {mode!r} mode; decoding needs mode='predict' "
            f"(e.g. trax.models.TransformerLM(..., mode='predict'))."
        )
    if not model.initialized:
        raise ValueError(
            f"{where}: the model has no weights; call model.init_from_file(...) or "
            f"model.init(...) first."
        )
    if model.n_in not in (1, 2):
        raise ValueError(f"{where}: models with {model.n_in} inputs are not supported (1 or 2).")


def _walk_in_order(layer: base.Layer) -> Iterator[base.Layer]:
    """The layers of ``layer`` in the order ``print(model)`` lists them, each once."""
    seen: set[int] = set()
    stack = [layer]
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        yield layer
        stack.extend(reversed(layer.sublayers))


def _embedding_vocabs(model: base.Layer) -> list[int]:
    """``vocab_size`` of each ``Embedding``, in print order.

    The first embeds the inputs (the prompt of a language model, the source of
    an encoder-decoder); the last embeds the decoded tokens, start_id included
    (an encoder-decoder's target embedding follows its encoder).
    """
    return [layer.vocab_size for layer in _walk_in_order(model)
            if isinstance(layer, core.Embedding)]


def _vocab_and_max_len(model: base.Layer) -> tuple[int | None, int | None]:
    """The input vocabulary size and the positional encodings' length (None if absent)."""
    vocabs = _embedding_vocabs(model)
    vocab = vocabs[0] if vocabs else None
    max_len = None
    for layer in _walk(model):
        if type(layer).__name__ == "PositionalEncoding":
            w = layer.weights
            table = w[0] if isinstance(w, tuple) and w else w
            if hasattr(table, "shape"):
                n = int(table.shape[-2])
                max_len = n if max_len is None else min(max_len, n)
    return vocab, max_len


# The compiled programs of each model, {model: {key: program}}, owned by this
# module: nothing is stored on the model. The model is a weak key, so its
# programs go when it does; for that, a program reaches its model only through
# a weak reference (a strong one inside the value would keep the key alive).
_programs: weakref.WeakKeyDictionary[base.Layer, dict[Any, Any]] = weakref.WeakKeyDictionary()


def compiled_programs(model: base.Layer | None = None) -> int:
    """How many decoding programs this module holds for ``model`` (for every model: None).

    Decoding makes one jitted program per model and kind of call (sampling
    settings, batch, cache length) and reuses it for the next such call. The
    programs are kept for the model weakly, so they go when the model does; this
    count shows both. (One program compiles again for a new prompt shape: count
    XLA compilations with ``jax.log_compiles`` or a ``jax.monitoring`` listener.)
    """
    if model is None:
        return sum(len(programs) for programs in _programs.values())
    return len(_programs.get(model, ()))


def _program(model: base.Layer, key: Any, make: Any) -> Any:
    """``model``'s program ``key``: ``make(model_ref)`` on first use, the same one after.

    ``make`` receives a ``weakref.ref`` to the model and must not keep the
    model itself; the programs call ``model_ref()`` when they trace.
    """
    programs = _programs.get(model)
    if programs is None:
        programs = _programs[model] = {}
    if key not in programs:
        programs[key] = make(weakref.ref(model))
    return programs[key]


def _fresh_state(model: base.Layer, signature: Any, cache_len: int) -> Any:
    """A new predict-mode state for ``signature`` with caches of ``cache_len``.

    The cache length is an option of this init pass (``predict_cache_length``);
    no layer of the model is changed.
    """
    def make(model_ref):
        def state_only():
            with predict_cache_length(cache_len):
                with base.new_pass() as ctx:
                    return ctx.init_layer(model_ref(), signature, jax.random.PRNGKey(0))[1]

        # Under jit the weight initializers are dead code and XLA drops them.
        return jax.jit(state_only)

    return _program(model, ("state", repr(signature), cache_len), make)()


def _batched_state_leaves(model: base.Layer, setup: _Setup, cache_len: int) -> list[bool]:
    """Which leaves of the state *after the prefill* have the batch as first axis.

    Beam search reorders those rows. The state is compared for batch sizes 2
    and 3 by shape only (``jax.eval_shape``): the prefill can change the state's
    structure (an encoder-decoder's ``Cache`` fills in), so it is run too.
    """
    def shapes_for(b):
        state = jax.eval_shape(lambda: _fresh_state(model, setup.signature(b), cache_len))
        after = jax.eval_shape(lambda s, x: model.pure_fn(x, model.weights, s, None)[1],
                               state, setup.abstract_inputs(b))
        return [getattr(x, "shape", ()) for x in jax.tree_util.tree_leaves(after)]

    return [x != y for x, y in zip(shapes_for(2), shapes_for(3))]


# --------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------


def _argmax(x: Any) -> Any:
    """First index of each row's maximum, as int32 (``jnp.argmax``, NaN aside).

    A max, a compare and a min: XLA's CPU backend runs these vectorized, while
    ``argmax``'s two-operand reduction costs several times more per element.
    A row holding NaN gives an index past the end; callers check for NaN.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == top, index, x.shape[-1]), axis=-1)


def _ordered_keys(x: Any) -> Any:
    """uint32 keys with the order of the float32 values ``x`` (``-inf`` lowest, NaN highest)."""
    x = x.astype(jnp.float32)
    x = jnp.where(x == 0.0, jnp.float32(0.0), x)  # -0.0 ties with +0.0
    bits = lax.bitcast_convert_type(x, jnp.uint32)
    negative = (bits >> 31) == 1
    keys = jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))
    return jnp.where(jnp.isnan(x), jnp.uint32(0xFFFFFFFF), keys)  # NaN (any sign) on top


_SEARCH_BITS = 2  # key bits decided per round of _smallest_key (16 rounds)


def _smallest_key(keys: Any, weights: Any, limit: Any) -> Any:
    """Per row, the smallest key ``t`` with ``sum(weights[keys > t]) < limit``.

    The sum only falls as ``t`` grows, so ``t`` is found bit by bit from the
    top, deciding ``_SEARCH_BITS`` bits per round by trying every value of
    them at once. No sort: XLA's CPU sort costs ~40 us for a row of 256.
    """
    t = jnp.zeros(keys.shape[:-1], jnp.uint32)
    n = 1 << _SEARCH_BITS
    tries = jnp.arange(n - 1, dtype=jnp.uint32)
    for shift in range(32 - _SEARCH_BITS, -1, -_SEARCH_BITS):
        # Candidates: the bits decided so far, each value of this round's bits,
        # and all lower bits set (the largest key with that prefix).
        cand = t[..., None] | (tries << shift) | jnp.uint32((1 << shift) - 1)
        above = keys[..., None, :] > cand[..., :, None]
        mass = jnp.sum(jnp.where(above, weights[..., None, :], 0.0), axis=-1)
        t = t | (jnp.sum(mass >= limit, axis=-1).astype(jnp.uint32) << shift)
    return t


def _restrict(logits: Any, top_k: int | None, top_p: float | None) -> Any:
    """Sets logits outside the top-k / nucleus support to -inf.

    Top-k keeps the tokens whose logit is at least the k-th largest; top-p the
    most likely tokens whose probability mass *before* them (in order of
    probability) is below ``top_p``: the smallest set reaching ``top_p``. Tokens
    tied with the last one kept are all kept, so with ties the support can be
    larger than ``k`` (no arbitrary tie-breaking).
    """
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    keys = _ordered_keys(logits)
    if top_k is not None and top_k < logits.shape[-1]:
        t = _smallest_key(keys, jnp.ones(logits.shape, jnp.float32), jnp.float32(top_k))
        logits = jnp.where(keys >= t[..., None], logits, neg)
        keys = _ordered_keys(logits)
    if top_p is not None and top_p < 1.0:
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        t = _smallest_key(keys, probs, jnp.float32(top_p))
        logits = jnp.where(keys >= t[..., None], logits, neg)
    return logits


def _sample(log_probs: Any, key: Any, temperature: float, top_k: int | None,
            top_p: float | None) -> Any:
    """One token per row: argmax at temperature 0, else Gumbel-max over the support.

    The Gumbel noise comes from the counter hash of ``fastmath.random`` (one
    fused elementwise computation), not threefry, which costs as much as the
    model's forward pass for a small model at batch 1.
    """
    if temperature == 0.0:
        return _argmax(log_probs)
    logits = _restrict(log_probs / temperature, top_k, top_p)
    bits = fastmath_random.hash_bits(key, logits.shape)
    # 24 random bits -> uniform in (0, 1), never exactly 0 or 1.
    u = (bits >> 8).astype(jnp.float32) * (1.0 / 16777216.0) + (0.5 / 16777216.0)
    gumbel = -jnp.log(-jnp.log(u))
    # The top 24-bit value rounds u to 1.0 in float32, so that noise is +inf: a token
    # outside the support (-inf) must stay -inf, not become NaN (an index past the end).
    return _argmax(jnp.where(logits == -jnp.inf, logits, logits + gumbel))


# --------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------


def _prepare(model: base.Layer, inputs: Any, batch_size: int, max_length: int,
             prompt_lengths: Any, where: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    _check_model(model, where)
    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"{where}: max_length must be a positive int; got {max_length!r}.")
    if inputs is None:
        if model.n_in == 2:
            raise ValueError(f"{where}: an encoder-decoder model needs inputs=(B, L) tokens.")
        return None, None
    inputs = np.asarray(inputs)
    if inputs.dtype.kind not in "iu":
        raise TypeError(f"{where}: inputs must be integer token ids; got dtype {inputs.dtype}.")
    if inputs.ndim != 2:
        raise ValueError(f"{where}: inputs must have shape (batch, length); got {inputs.shape}.")
    if inputs.shape[0] != batch_size:
        raise ValueError(
            f"{where}: inputs.shape[0] is {inputs.shape[0]} but batch_size is {batch_size}; "
            f"pass batch_size={inputs.shape[0]}."
        )
    if inputs.shape[1] == 0:
        raise ValueError(f"{where}: the prompt is empty (inputs.shape[1] == 0).")
    vocab, _ = _vocab_and_max_len(model)
    if vocab is not None and inputs.size and (inputs.min() < 0 or inputs.max() >= vocab):
        raise ValueError(
            f"{where}: token ids must be in [0, {vocab}) (the model's vocab_size); got ids "
            f"from {inputs.min()} to {inputs.max()}."
        )
    if prompt_lengths is None:
        lengths = np.full((batch_size,), inputs.shape[1], np.int32)
    else:
        lengths = np.asarray(prompt_lengths, np.int32).reshape(-1)
        if lengths.shape != (batch_size,) or lengths.min() < 1 or lengths.max() > inputs.shape[1]:
            raise ValueError(
                f"{where}: prompt_lengths must hold {batch_size} values in [1, "
                f"{inputs.shape[1]}]; got {lengths.tolist()}."
            )
    return inputs.astype(np.int32), lengths


def _cache_length(model: base.Layer, total: int, where: str = "decoding") -> int:
    """Checks that ``total`` positions fit the model's ``max_len``; returns the cache length.

    The cache holds ``total`` rounded up to a multiple of 8, at most ``max_len``.
    """
    _, max_len = _vocab_and_max_len(model)
    if max_len is not None and total > max_len:
        raise ValueError(
            f"{where}: the prompt plus max_length needs {total} positions but the model's "
            f"max_len is {max_len}. Shorten the prompt or max_length, or use a model with a "
            f"larger max_len."
        )
    cache_len = -(-total // _CACHE_BUCKET) * _CACHE_BUCKET
    return cache_len if max_len is None else min(cache_len, max_len)


def _key(rng: Any, seed: int | None) -> Any:
    if rng is not None:
        return rng
    return jax.random.PRNGKey(0 if seed is None else int(seed))


# --------------------------------------------------------------------------
# Language models and encoder-decoders: one compiled generation
# --------------------------------------------------------------------------


class _Setup(NamedTuple):
    """What decoding feeds a model, made by ``_setup``.

    ``enc``: the encoder's input tokens ``(B, S)`` of an encoder-decoder
    (``None`` for a language model); ``first``: the decoder tokens of the
    prefill, ``(B, P)``.
    """

    enc: Any
    first: np.ndarray

    @property
    def positions(self) -> int:
        """Decoder positions the prefill fills (the first sampled token comes after)."""
        return self.first.shape[1]

    def signature(self, batch: int) -> Any:
        """The init signature of a predict-mode state for ``batch`` rows."""
        step = shapes.ShapeDtype((batch, 1), np.int32)
        if self.enc is None:
            return step
        return shapes.ShapeDtype((batch, self.enc.shape[1]), np.int32), step

    def abstract_inputs(self, batch: int) -> Any:
        """The prefill's inputs for ``batch`` rows, as ``jax.ShapeDtypeStruct``."""
        first = jax.ShapeDtypeStruct((batch, self.positions), jnp.int32)
        if self.enc is None:
            return first
        return jax.ShapeDtypeStruct((batch, self.enc.shape[1]), jnp.int32), first


def _setup(model: base.Layer, prompt: np.ndarray, start_id: int) -> _Setup:
    """The one place where a language model and an encoder-decoder differ in setup.

    A language model (``n_in == 1``) is prefilled with ``[start_id] + prompt``;
    an encoder-decoder (``n_in == 2``) reads ``prompt`` in its encoder and is
    prefilled with ``[start_id]``. ``prompt``: ``(B, L)`` int32, ``L`` may be 0
    for a language model.
    """
    start = np.full((prompt.shape[0], 1), start_id, np.int32)
    if model.n_in == 1:
        return _Setup(None, np.concatenate([start, prompt], axis=1))
    return _Setup(jnp.asarray(prompt), start)


def _model_inputs(enc: Any, tokens: Any) -> Any:
    """The model's inputs for decoder ``tokens`` (``enc`` as in ``_Setup``)."""
    return tokens if enc is None else (enc, tokens)


def _ends_in_log_softmax(model: base.Layer) -> bool:
    """Whether the model's last layer is ``LogSoftmax`` over the vocabulary (last) axis."""
    layer = model
    while type(layer).__name__ == "Serial" and layer.sublayers:
        layer = layer.sublayers[-1]
    # (B, L, V) outputs: axis -1 or 2 is the vocabulary.
    return isinstance(layer, core.LogSoftmax) and layer.axis in (-1, 2)


def _log_probs(model: base.Layer, outputs: Any) -> Any:
    """Log-probabilities of the model's outputs at the last position, ``(B, V)``."""
    logits = (outputs[0] if model.n_in == 2 else outputs)[:, -1].astype(jnp.float32)
    if _ends_in_log_softmax(model):
        return logits  # TransformerLM / Transformer: already log_softmax'ed
    return jax.nn.log_softmax(logits, axis=-1)


def _make_generate(model_ref: Any, max_length: int, temperature: float, top_k: int | None,
                   top_p: float | None, eos_id: int | None, signature: Any,
                   cache_len: int) -> Any:
    """Builds ``generate(weights, enc, first_tokens, key)``, one XLA program.

    The fresh predict-mode state (caches of ``cache_len`` for ``signature``) is
    made inside the program, so XLA allocates the loop's caches in place
    instead of copying zero-filled input buffers into the loop.

    Returns ``(tokens, scores, steps, nan_step)``: ``nan_step[b]`` is the first
    step at which row ``b``'s log-probabilities held NaN (``-1``: never); such
    a row stops there and the caller raises.
    """

    def generate(weights, enc, first_tokens, key):
        model = model_ref()  # (the program holds the model weakly; see _program)
        batch = first_tokens.shape[0]
        state = _fresh_state(model, signature, cache_len)
        # Prefill: [start] + prompt in one forward pass; its last position
        # predicts the first new token.
        out, state = model.pure_fn(_model_inputs(enc, first_tokens), weights, state, None)
        log_probs = _log_probs(model, out)
        tokens = jnp.zeros((batch, max_length), jnp.int32)
        scores = jnp.zeros((batch, max_length), jnp.float32)
        done = jnp.zeros((batch,), bool)
        nan_step = jnp.full((batch,), -1, jnp.int32)
        carry = (jnp.int32(0), state, log_probs, tokens, scores, done, nan_step, key)

        def cond(c):
            t, done = c[0], c[5]
            return jnp.logical_and(t < max_length, jnp.logical_not(jnp.all(done)))

        def body(c):
            t, state, log_probs, tokens, scores, done, nan_step, key = c
            sub = fastmath_random.hash_fold_in(key, t)
            tok = _sample(log_probs, sub, temperature, top_k, top_p)
            is_nan = jnp.isnan(log_probs).any(axis=-1)
            nan_step = jnp.where(is_nan & ~done, t, nan_step)  # a NaN row is done after
            tok = jnp.where(done | is_nan, 0, tok)
            chosen = jnp.take_along_axis(log_probs, tok[:, None], axis=1)[:, 0]
            tokens = lax.dynamic_update_slice_in_dim(tokens, tok[:, None], t, axis=1)
            scores = lax.dynamic_update_slice_in_dim(
                scores, jnp.where(done, 0.0, chosen)[:, None], t, axis=1)
            done = done | is_nan
            if eos_id is not None:
                done = done | (tok == eos_id)
            out, state = model.pure_fn(_model_inputs(enc, tok[:, None]), weights, state, None)
            return (t + 1, state, _log_probs(model, out), tokens, scores, done, nan_step, key)

        t, _, _, tokens, scores, _, nan_step, _ = lax.while_loop(cond, body, carry)
        return tokens, scores, t, nan_step

    return jax.jit(generate)


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
                          prompt_lengths: Any = None) -> Any:
    """Samples up to ``max_length`` tokens after ``inputs``; returns ``(B, T)`` ints.

    Args:
      model: a predict-mode ``TransformerLM`` (1 input) or ``Transformer`` (2).
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

    ``T`` is the number of steps run: ``max_length``, or fewer when every row
    has emitted ``eos_id``; positions after a row's EOS are 0.
    """
    where = "autoregressive_sample"
    if eval_mode:
        raise NotImplementedError(
            f"{where}: eval_mode=True (recomputing the whole prefix) is not supported; use a "
            f"predict-mode model, which gives the same tokens."
        )
    _check_sampling(temperature, top_k, top_p, where)
    prompt, lengths = _prepare(model, inputs, batch_size, max_length, prompt_lengths, where)
    _check_start_id(model, start_id, where)
    # The length check comes before any array of max_length is made.
    longest = (np.zeros((batch_size, 0), np.int32) if prompt is None
               else prompt[:, :int(lengths.max())])
    _cache_length(model, _setup(model, longest, start_id).positions + max_length, where)
    groups = _length_groups(model, prompt, lengths, batch_size)
    tokens = np.zeros((batch_size, max_length), np.int32)
    log_probs = np.zeros((batch_size, max_length), np.float32)
    counts = np.zeros((batch_size,), np.int32)
    key = _key(rng, seed)
    for gi, (rows, group_prompt) in enumerate(groups):
        t, s, c = _generate_group(model, group_prompt, len(rows), temperature, start_id, eos_id,
                                  max_length, top_k, top_p, jax.random.fold_in(key, gi)
                                  if len(groups) > 1 else key, where, rows)
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


def _generate_group(model, prompt, batch, temperature, start_id, eos_id, max_length, top_k,
                    top_p, key, where, rows=None):
    if prompt is None:
        prompt = np.zeros((batch, 0), np.int32)
    setup = _setup(model, prompt, start_id)
    cache_len = _cache_length(model, setup.positions + max_length, where)
    sig = setup.signature(batch)
    eos = None if eos_id is None else int(eos_id)
    fn = _program(model, ("generate", max_length, float(temperature), top_k, top_p, eos,
                          repr(sig), cache_len),
                  lambda model_ref: _make_generate(model_ref, max_length, float(temperature),
                                                   top_k, top_p, eos, sig, cache_len))
    tokens, scores, steps, nan_step = fn(model.weights, setup.enc, jnp.asarray(setup.first), key)
    _raise_on_nan(nan_step, where, rows)
    n = int(steps)
    out = np.zeros((batch, max_length), np.int32)
    out_scores = np.zeros((batch, max_length), np.float32)
    out[:, :n], out_scores[:, :n] = np.asarray(tokens)[:, :n], np.asarray(scores)[:, :n]
    return out, out_scores, np.full((batch,), n, np.int32)


def _check_sampling(temperature: float, top_k: Any, top_p: Any, where: str) -> None:
    if isinstance(temperature, (str, bytes)) or not np.ndim(temperature) == 0:
        raise TypeError(
            f"{where}: temperature must be a number (0.0 for greedy decoding); got "
            f"{type(temperature).__name__} {temperature!r}."
        )
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: temperature must be a number (0.0 for greedy decoding); got "
            f"{type(temperature).__name__} {temperature!r}."
        ) from None
    if not (t >= 0 and np.isfinite(t)):  # NaN fails both comparisons
        raise ValueError(
            f"{where}: temperature must be a finite number >= 0; got {temperature!r}. Use "
            f"temperature=0.0 for greedy decoding or a positive value such as 1.0 to sample."
        )
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"{where}: top_k must be a positive int; got {top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"{where}: top_p must be in (0, 1]; got {top_p!r}.")


def _check_start_id(model: base.Layer, start_id: Any, where: str) -> None:
    """``start_id`` must be an int inside the vocabulary of the decoded tokens."""
    if isinstance(start_id, bool) or not isinstance(start_id, (int, np.integer)):
        raise TypeError(
            f"{where}: start_id must be an int token id; got {type(start_id).__name__} "
            f"{start_id!r}."
        )
    vocabs = _embedding_vocabs(model)
    if vocabs and not 0 <= start_id < vocabs[-1]:
        raise ValueError(
            f"{where}: start_id={start_id} is outside the model's vocabulary [0, "
            f"{vocabs[-1]}) (vocab_size={vocabs[-1]}); the model would read a clamped "
            f"embedding row instead. Pass a start_id in that range (Trax's default is 0)."
        )


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
        raise NotImplementedError(f"{where}: eval_mode=True is not supported.")
    _check_sampling(temperature, top_k, top_p, where)
    _, max_len = _vocab_and_max_len(model)
    limit = max_length if max_length is not None else (max_len or 2048)
    prompt, _ = _prepare(model, inputs, batch_size, limit, None, where)
    _check_start_id(model, start_id, where)
    if prompt is None:
        prompt = np.zeros((batch_size, 0), np.int32)
    setup = _setup(model, prompt, start_id)
    total = setup.positions + limit
    if setup.enc is None:
        # A language model's prompt shares the positions with the samples: by
        # default the stream fills max_len; the total is checked and rounded
        # as in autoregressive_sample. (An encoder-decoder's cache keeps its
        # exact length, unchecked, as before.)
        if max_length is None and max_len is not None:
            total = max_len
            limit = max_len - setup.positions
        total = _cache_length(model, total, where)
    state = _fresh_state(model, setup.signature(batch_size), total)
    key = _key(rng, seed)
    temperature = float(temperature)

    def make(model_ref):
        def step(weights, state, enc, tokens, key):
            model = model_ref()  # (the program holds the model weakly; see _program)
            out, state = model.pure_fn(_model_inputs(enc, tokens), weights, state, None)
            log_probs = _log_probs(model, out)
            tok = _sample(log_probs, key, temperature, top_k, top_p)
            return jnp.where(jnp.isnan(log_probs).any(axis=-1), -1, tok), state  # -1: a NaN row

        return jax.jit(step, donate_argnums=(1,))

    step_fn = _program(model, ("stream", temperature, top_k, top_p), make)
    tokens = jnp.asarray(setup.first)
    for i in range(limit):
        tok, state = step_fn(model.weights, state, setup.enc, tokens,
                             fastmath_random.hash_fold_in(key, i))
        host = np.asarray(tok)
        _raise_on_nan(np.where(host < 0, i, -1), where)
        yield host
        tokens = tok[:, None]


# --------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------


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
    prompt, _ = _prepare(model, inputs, batch_size, max_length, None, where)
    _check_start_id(model, start_id, where)
    if prompt is None:
        prompt = np.zeros((batch_size, 0), np.int32)
    k = int(n_beams)
    # Each row's beams are k consecutive rows of one batch of batch_size * k.
    setup = _setup(model, np.repeat(prompt, k, axis=0), start_id)
    cache_len = _cache_length(model, setup.positions + max_length, where)
    sig = setup.signature(batch_size * k)
    eos = -1 if eos_id is None else int(eos_id)

    def make(model_ref):  # traces the model twice for the batched leaves: once per program
        batched = tuple(_batched_state_leaves(model, setup, cache_len))
        return jax.jit(functools.partial(_beam_program, model_ref, batch_size, k, max_length,
                                         float(length_penalty), eos, batched, sig, cache_len))

    fn = _program(model, ("beam", batch_size, k, max_length, float(length_penalty), eos,
                          repr(sig), cache_len), make)
    tokens, scores = fn(model.weights, setup.enc, jnp.asarray(setup.first))
    tokens, scores = np.asarray(tokens), np.asarray(scores)
    return [(tokens[:, i, :], scores[:, i]) for i in range(k)]


def _beam_program(model_ref, batch, k, max_length, alpha, eos, batched, signature, cache_len,
                  weights, enc, seq):
    model = model_ref()  # (the program holds the model weakly; see _program)
    neg = jnp.float32(-1e9)
    state = _fresh_state(model, signature, cache_len)  # made in the program, as in generate
    out, state = model.pure_fn(_model_inputs(enc, seq), weights, state, None)
    log_probs = _log_probs(model, out).reshape(batch, k, -1)
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
        out, state = model.pure_fn(_model_inputs(enc, tok.reshape(-1, 1)), weights, state, None)
        log_probs = _log_probs(model, out).reshape(batch, k, vocab)
        return state, log_probs, top_scores, tokens, finished, lengths

    state, _, scores, tokens, finished, lengths = lax.fori_loop(
        0, max_length, body, (state, log_probs, scores, tokens, finished, lengths))
    norm = ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** alpha
    ranked = scores / norm
    order = jnp.argsort(-ranked, axis=1)
    tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
    return tokens, jnp.take_along_axis(scores, order, axis=1)
