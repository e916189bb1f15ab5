"""The decoder prefill fed through the decoding loop vs a batched forward pass.

``prefill='loop'`` teacher-forces ``[start] + prompt`` through the loop's
one-token steps (the program then holds one copy of the model); ``'batched'``
runs it in one pass before the loop. Both must give the same tokens, and the
loop's program must hold the model only once (counted in its optimized HLO).
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from compile_events import compiled_during

import retrax as trax
from retrax.supervised import decoding
from retrax.supervised.decoding_programs import LOOP_PREFILL_POSITIONS, fresh_state

THRESHOLD = LOOP_PREFILL_POSITIONS - 1  # the longest prompt 'auto' feeds through the loop


@pytest.fixture(scope="module")
def lm():
    model = trax.models.TransformerLM(vocab_size=16, d_model=16, d_ff=32, n_layers=1,
                                      n_heads=2, max_len=64, mode="predict")
    model.init(trax.shapes.ShapeDtype((1, 1), np.int32), rng=jax.random.PRNGKey(7))
    return model


def greedy(model, prompt, batch, prefill, **kwargs):
    return decoding.autoregressive_sample(model, prompt, batch_size=batch, temperature=0.0,
                                          eos_id=None, max_length=8, prefill=prefill,
                                          return_log_probs=True, **kwargs)


def test_loop_prefill_gives_the_batched_prefills_tokens(lm):
    rng = np.random.default_rng(0)
    loop_names = []
    for batch, n in ((1, 0), (3, 1), (3, THRESHOLD), (3, THRESHOLD + 1)):
        prompt = None if n == 0 else rng.integers(1, 16, (batch, n)).astype(np.int32)
        names, (tokens, scores) = compiled_during(
            lambda prompt=prompt, batch=batch: greedy(lm, prompt, batch, "loop"))
        loop_names += names
        ref_tokens, ref_scores = greedy(lm, prompt, batch, "batched")
        np.testing.assert_array_equal(tokens, ref_tokens)
        assert tokens.shape == (batch, 8)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
        # 'auto' feeds prompts up to THRESHOLD through the loop: the same program.
        auto_names, (auto_tokens, _) = compiled_during(
            lambda prompt=prompt, batch=batch: greedy(lm, prompt, batch, "auto"))
        np.testing.assert_array_equal(auto_tokens, ref_tokens)
        assert auto_names == []
    # At batch 3, prompts of 1 and THRESHOLD tokens share one loop program
    # (padded to 8 positions, the count is an argument); THRESHOLD + 1 needs 16.
    assert loop_names == ["jit(generate)"] * 3


@pytest.mark.slow
def test_loop_prefill_keeps_the_seeded_samples_ragged_prompts_and_eos(lm):
    prompt = np.array([[3, 4, 5, 6, 7, 8, 9, 10, 11],
                       [5, 2, 0, 0, 0, 0, 0, 0, 0],
                       [9, 9, 9, 9, 9, 9, 9, 0, 0]], np.int32)
    lengths = np.array([9, 2, 7])
    runs = {prefill: decoding.autoregressive_sample(
        lm, prompt, batch_size=3, temperature=1.0, eos_id=None, max_length=8, seed=3,
        prompt_lengths=lengths, prefill=prefill) for prefill in ("loop", "batched", "auto")}
    np.testing.assert_array_equal(runs["loop"], runs["batched"])
    np.testing.assert_array_equal(runs["auto"], runs["batched"])
    # Each row as if decoded alone (greedy: no key is involved).
    ragged, _ = greedy(lm, prompt, 3, "loop", prompt_lengths=lengths)
    for row, n in enumerate(lengths):
        alone, _ = greedy(lm, prompt[row:row + 1, :n], 1, "batched")
        np.testing.assert_array_equal(ragged[row], alone[0])
    # A row that emits eos_id stops there in both.
    eos = int(runs["batched"][1, 3])
    stop = int(np.flatnonzero(runs["batched"][1] == eos)[0])
    outs = [decoding.autoregressive_sample(
        lm, prompt, batch_size=3, temperature=1.0, eos_id=eos, max_length=8, seed=3,
        prompt_lengths=lengths, prefill=p) for p in ("loop", "batched")]
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0][1, stop] == eos and (outs[0][1, stop + 1:] == 0).all()


def test_encoder_decoder_refuses_a_loop_prefill():
    model = trax.models.Transformer(input_vocab_size=16, d_model=16, d_ff=32,
                                    n_encoder_layers=1, n_decoder_layers=1, n_heads=2,
                                    max_len=32, mode="predict")
    model.init((trax.shapes.ShapeDtype((2, 5), np.int32),
                trax.shapes.ShapeDtype((2, 1), np.int32)), rng=jax.random.PRNGKey(3))
    source = np.array([[3, 4, 5, 6, 7], [8, 9, 10, 11, 12]], np.int32)
    with pytest.raises(ValueError, match="prefill='loop' is not possible: an encoder-decoder"):
        decoding.autoregressive_sample(model, source, batch_size=2, max_length=6,
                                       prefill="loop")
    # (It decodes with prefill='auto' as before: tests/supervised/test_decoding.py.)


def test_rnn_language_model_falls_back_to_the_batched_prefill():
    # An RNN's predict-mode hidden state appears on its first call, so that
    # call cannot be a loop iteration: 'auto' finds out and prefills batched.
    model = trax.models.RNNLM(vocab_size=16, d_model=8, mode="predict")
    model.init(trax.shapes.ShapeDtype((1, 1), np.int32), rng=jax.random.PRNGKey(5))
    prompt = np.array([[3, 4, 5]], np.int32)
    auto, _ = greedy(model, prompt, 1, "auto")
    batched, _ = greedy(model, prompt, 1, "batched")
    np.testing.assert_array_equal(auto, batched)
    with pytest.raises(ValueError, match="first call changes its state's structure"):
        greedy(model, prompt, 1, "loop")


def test_prefill_argument_is_checked(lm):
    with pytest.raises(ValueError, match=r"prefill must be one of \('auto', 'batched', 'loop'\)"):
        decoding.autoregressive_sample(lm, None, max_length=4, prefill="eager")


def _ops(hlo: str, op: str) -> int:
    return len(re.findall(rf" {op}\(", hlo))


def test_loop_prefill_program_holds_the_model_once(lm):
    # Matrix products (dot) in the optimized HLO: one forward step of the model
    # has some number of them; the loop-prefill program has exactly as many
    # (the loop body is the only copy of the model), the batched one twice as
    # many (the prefill is a second copy).
    state = fresh_state(lm, trax.shapes.ShapeDtype((1, 1), np.int32), 16)
    step = jax.jit(lambda w, s, x: lm.pure_fn(x, w, s, None))
    step_hlo = step.lower(lm.weights, state, np.zeros((1, 1), np.int32)).compile().as_text()
    prompt = np.array([[3, 4, 5, 6]], np.int32)
    loop_hlo, batched_hlo = (
        decoding.lowered_generation(lm, prompt, temperature=0.0, max_length=8,
                                    prefill=p).compile().as_text() for p in ("loop", "batched"))
    dots = _ops(step_hlo, "dot")
    assert dots > 0
    assert _ops(loop_hlo, "dot") == dots
    assert _ops(batched_hlo, "dot") == 2 * dots
    # Fusions: the loop program adds only sampling and bookkeeping to one step,
    # less than what the batched prefill adds.
    step_f, loop_f, batched_f = (_ops(h, "fusion") for h in (step_hlo, loop_hlo, batched_hlo))
    assert loop_f - step_f < batched_f - loop_f
