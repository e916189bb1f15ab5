"""Tests of compiled decoding: goldens, cache == recomputation, EOS, sampling, errors."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from compile_events import compiled, jax_work

import retrax as trax
from retrax import checkpoints
from retrax import layers as tl
from retrax.supervised import decoding

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trax"
COPY = FIXTURES / "trax-upstream" / "transformerlm_copy"


def sig(*shape):
    return trax.shapes.ShapeDtype(shape, np.int32)


@pytest.fixture(scope="module")
def copy_model():
    assert COPY.exists(), f"fixtures missing at {COPY}"
    model = trax.models.TransformerLM(vocab_size=13, d_model=64, d_ff=128, n_heads=2, n_layers=2,
                                      max_len=256, dropout=0.05, mode="predict")
    model.init_from_file(str(COPY / "model.pkl.gz"), weights_only=True, input_signature=sig(1, 1))
    return model


def tiny_lm(mode, seed=0, vocab=16, max_len=64):
    model = trax.models.TransformerLM(vocab_size=vocab, d_model=16, d_ff=32, n_layers=2,
                                      n_heads=2, max_len=max_len, mode=mode)
    model.init(sig(1, 1) if mode == "predict" else sig(1, 8), rng=trax.fastmath.random.get_prng(seed))
    return model


def _same_weights(dst, src):
    # Flat order is the same across modes (predict wraps the encoder in a Cache).
    flat, _ = tl.flatten_weights_and_state(src.weights, ())
    checkpoints.assign_flat_weights(dst, flat)


def greedy_by_recomputation(eval_model, prompt, n, start_id=0):
    """Greedy decoding by running the eval-mode model on the whole prefix each step.

    The eval-mode TransformerLM shifts its input right (prepending 0 = start_id),
    so output position t predicts token t of the input. The model is causal, so
    padding the input to a fixed length does not change position t (one compile).
    """
    assert start_id == 0
    batch, length = prompt.shape[0], prompt.shape[1] + n
    forward = jax.jit(lambda x: eval_model.pure_fn(x, eval_model.weights, eval_model.state,
                                                    None)[0])
    seq = np.zeros((batch, length), np.int32)
    seq[:, :prompt.shape[1]] = prompt
    for t in range(prompt.shape[1], length):
        seq[:, t] = np.asarray(forward(seq))[:, t].argmax(-1)
    return seq[:, prompt.shape[1]:]


def test_upstream_copy_golden_greedy(copy_model):
    out = decoding.autoregressive_sample(copy_model, np.array([[0, 3, 7, 5, 3, 2, 4, 0]]),
                                         temperature=0.0, max_length=6)
    np.testing.assert_array_equal(out, [[3, 7, 5, 3, 2, 4]])
    assert out.dtype.kind == "i"


def test_upstream_copy_golden_beams(copy_model):
    beams = decoding.beam_search(copy_model, np.array([[0, 3, 7, 5, 3, 2, 4, 0]]), n_beams=3,
                                 max_length=6)
    assert [b[0].tolist() for b in beams] == [[[3, 7, 5, 3, 2, 4]], [[3, 7, 5, 3, 2, 2]],
                                              [[3, 7, 5, 3, 3, 2]]]
    scores = [float(b[1][0]) for b in beams]
    assert scores == sorted(scores, reverse=True)


def test_cache_equals_recomputation_on_fixture(copy_model):
    eval_model = trax.models.TransformerLM(vocab_size=13, d_model=64, d_ff=128, n_heads=2,
                                           n_layers=2, max_len=256, mode="eval")
    eval_model.init(sig(1, 8))
    _same_weights(eval_model, copy_model)
    prompt = np.array([[0, 5, 1, 9, 2, 0], [0, 7, 7, 3, 4, 0]], np.int32)
    fast = decoding.autoregressive_sample(copy_model, prompt, batch_size=2, temperature=0.0,
                                          max_length=10, eos_id=None)
    slow = greedy_by_recomputation(eval_model, prompt, 10)
    np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("seed", [0, 1])
def test_cache_equals_recomputation_random_models(seed):
    predict, evaluate = tiny_lm("predict", seed), tiny_lm("eval", seed)
    _same_weights(evaluate, predict)
    prompt = np.random.default_rng(seed).integers(2, 16, (3, 5)).astype(np.int32)
    fast = decoding.autoregressive_sample(predict, prompt, batch_size=3, temperature=0.0,
                                          max_length=12, eos_id=None)
    np.testing.assert_array_equal(fast, greedy_by_recomputation(evaluate, prompt, 12))


def test_fixture_greedy_outputs():
    folders = sorted([*FIXTURES.glob("trax-1.4.1/*"), *FIXTURES.glob("trax-upstream/*")])
    assert len(folders) == 5, f"fixtures missing under {FIXTURES}"
    for folder in folders:
        meta_path = folder / "meta.json"
        if not (folder / "greedy_output.npy").exists():
            continue
        meta = json.loads(meta_path.read_text())
        kwargs = dict(meta.get("kwargs", meta.get("config", {})))
        kwargs.pop("mode", None)
        model = getattr(trax.models, meta.get("model", "TransformerLM"))(**kwargs, mode="predict")
        model.init_from_file(str(folder / "model.pkl.gz"), weights_only=True,
                             input_signature=sig(1, 1))
        prefix = np.load(folder / "greedy_prefix.npy")
        expected = np.load(folder / "greedy_output.npy")
        out = decoding.autoregressive_sample(model, prefix, batch_size=prefix.shape[0],
                                             temperature=0.0, max_length=expected.shape[1],
                                             eos_id=None)
        np.testing.assert_array_equal(out, expected, err_msg=str(folder))


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_compiles_once_per_shape_and_not_again():
    model = tiny_lm("predict", 3)
    assert decoding.compiled_programs(model) == 0

    def sample(prompt, max_length=5):
        """(generation programs compiled, everything JAX traced or compiled) for one call."""
        with jax_work() as work:
            decoding.autoregressive_sample(model, np.array(prompt, np.int32), temperature=0.0,
                                           max_length=max_length)
        return compiled(work).count("jit(generate)"), len(work)

    assert sample([[0, 4, 5, 0]])[0] == 1
    programs = decoding.compiled_programs(model)
    assert programs > 0
    assert sample([[0, 4, 5, 0]]) == (0, 0)  # same shapes: nothing traced or compiled
    assert sample([[0, 9, 9, 0]]) == (0, 0)
    assert decoding.compiled_programs(model) == programs
    # A longer prompt fed through the loop (<= 8 prefill positions) in the same
    # cache bucket (1 + 6 + 5 - 1 <= 16) runs the same compiled program: the
    # prefill length is an argument. Past 8 positions the prompt is prefilled
    # batched: one more compilation of a program keyed the same way but the
    # prefill. A longer request is a new cache bucket.
    assert sample([[0, 4, 5, 0, 7, 8]]) == (0, 0)
    assert decoding.compiled_programs(model) == programs
    assert sample([[0, 4, 5, 0, 7, 8, 1, 2]])[0] == 1
    assert decoding.compiled_programs(model) == programs + 1
    programs += 1
    assert sample([[0, 4, 5, 0]], max_length=5 + 16)[0] == 1
    assert decoding.compiled_programs(model) > programs


def test_eos_stops_each_row_and_pads():
    model = tiny_lm("predict", 4)
    prompt = np.array([[0, 3, 4, 0], [0, 5, 6, 0]], np.int32)
    free = decoding.autoregressive_sample(model, prompt, batch_size=2, temperature=0.0,
                                          max_length=8, eos_id=None)
    eos = int(free[0, 1])  # make the second token of row 0 the EOS
    out = decoding.autoregressive_sample(model, prompt, batch_size=2, temperature=0.0,
                                         max_length=8, eos_id=eos)
    for row in range(2):
        hits = np.flatnonzero(free[row] == eos)
        stop = hits[0] + 1 if hits.size else 8
        np.testing.assert_array_equal(out[row, :stop], free[row, :stop])
        assert (out[row, stop:] == 0).all()
    assert out[0, 1] == eos and (out[0, 2:] == 0).all()


def test_same_seed_same_samples_and_temperature_zero_is_argmax():
    model = tiny_lm("predict", 5)
    prompt = np.array([[0, 3, 4, 0]] * 4, np.int32)
    a = decoding.autoregressive_sample(model, prompt, batch_size=4, max_length=10, seed=7)
    b = decoding.autoregressive_sample(model, prompt, batch_size=4, max_length=10, seed=7)
    c = decoding.autoregressive_sample(model, prompt, batch_size=4, max_length=10, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = decoding.autoregressive_sample(model, prompt, batch_size=4, temperature=0.0,
                                            max_length=10, eos_id=None)
    assert (greedy == greedy[0]).all()


def fixed_logits_model(logits):
    """A 'predict' model whose next-token logits are always ``logits``."""
    table = jnp.asarray(logits, jnp.float32)
    model = tl.Serial(tl.Fn("FixedLogits", lambda x: jnp.broadcast_to(
        table, x.shape + table.shape).astype(jnp.float32)))
    model.init(sig(1, 1))
    return model


def test_top_k_and_top_p_restrict_support_exactly():
    probs = np.array([0.05, 0.4, 0.3, 0.2, 0.05])
    model = fixed_logits_model(np.log(probs))
    prompt = np.zeros((64, 1), np.int32)
    top2 = decoding.autoregressive_sample(model, prompt, batch_size=64, max_length=20,
                                          top_k=2, eos_id=None, seed=1)
    assert set(np.unique(top2)) == {1, 2}
    # Nucleus 0.65: 0.4 + 0.3 reaches it, so tokens {1, 2}; 0.75 adds token 3.
    p65 = decoding.autoregressive_sample(model, prompt, batch_size=64, max_length=20,
                                         top_p=0.65, eos_id=None, seed=2)
    assert set(np.unique(p65)) == {1, 2}
    p75 = decoding.autoregressive_sample(model, prompt, batch_size=64, max_length=20,
                                         top_p=0.75, eos_id=None, seed=3)
    assert set(np.unique(p75)) == {1, 2, 3}
    full = decoding.autoregressive_sample(model, prompt, batch_size=64, max_length=20,
                                          eos_id=None, seed=4)
    freq = np.bincount(full.ravel(), minlength=5) / full.size
    np.testing.assert_allclose(freq, probs, atol=0.04)


def test_return_log_probs():
    probs = np.array([0.1, 0.6, 0.3])
    model = fixed_logits_model(np.log(probs))
    out, log_probs = decoding.autoregressive_sample(model, np.zeros((2, 1), np.int32),
                                                    batch_size=2, temperature=0.0, max_length=3,
                                                    eos_id=None, return_log_probs=True)
    np.testing.assert_array_equal(out, [[1, 1, 1], [1, 1, 1]])
    np.testing.assert_allclose(log_probs, np.log(0.6), rtol=1e-5)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_prompts_of_different_lengths():
    model = tiny_lm("predict", 6)
    padded = np.array([[0, 3, 4, 0, 0, 0], [0, 5, 6, 7, 8, 0]], np.int32)
    out = decoding.autoregressive_sample(model, padded, batch_size=2, temperature=0.0,
                                         max_length=6, eos_id=None, prompt_lengths=[4, 6])
    row0 = decoding.autoregressive_sample(model, padded[:1, :4], temperature=0.0, max_length=6,
                                          eos_id=None)
    row1 = decoding.autoregressive_sample(model, padded[1:], temperature=0.0, max_length=6,
                                          eos_id=None)
    np.testing.assert_array_equal(out, np.concatenate([row0, row1]))


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_stream_matches_sample():
    model = tiny_lm("predict", 7)
    prompt = np.array([[0, 3, 4, 0]], np.int32)
    stream = decoding.autoregressive_sample_stream(model, prompt, temperature=0.0, max_length=6)
    tokens = np.stack(list(stream), axis=1)
    np.testing.assert_array_equal(
        tokens, decoding.autoregressive_sample(model, prompt, temperature=0.0, max_length=6,
                                               eos_id=None))


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_beam_search_batch_is_at_least_as_likely_as_greedy():
    model = tiny_lm("predict", 8)
    prompt = np.array([[0, 3, 4, 0], [0, 5, 6, 0]], np.int32)
    beams = decoding.beam_search(model, prompt, batch_size=2, n_beams=3, max_length=5,
                                 eos_id=None)
    greedy = decoding.autoregressive_sample(model, prompt, batch_size=2, temperature=0.0,
                                            max_length=5, eos_id=None)
    assert beams[0][0].shape == (2, 5)
    best_scores = beams[0][1]
    for row in range(2):  # the best beam is at least as likely as the greedy path
        assert best_scores[row] >= _path_log_prob(model, prompt[row:row + 1], greedy[row]) - 1e-4


# A bigram "language model" over 6 tokens: 0 is the start (and padding), 1 is EOS.
# Row i is the distribution of the token after token i.
BIGRAM = np.array([
    [0.01, 0.04, 0.50, 0.40, 0.04, 0.01],  # after the start: 2 or 3
    [1 / 6] * 6,                             # after EOS (never extended: finished)
    [0.01, 0.60, 0.10, 0.10, 0.10, 0.09],  # after 2: mostly EOS
    [0.01, 0.02, 0.02, 0.02, 0.90, 0.03],  # after 3: mostly 4
    [0.01, 0.02, 0.02, 0.02, 0.90, 0.03],  # after 4: mostly 4
    [1 / 6] * 6,
])


def bigram_model():
    table = jnp.log(jnp.asarray(BIGRAM, jnp.float32))
    model = tl.Serial(tl.Fn("Bigram", lambda x: table[x]))
    model.init(sig(1, 1))
    return model


def test_beam_search_finished_beams_stop_at_eos_and_pad():
    # Row 0 starts after the start token. With 2 beams, by hand:
    #   step 1: [2] .5, [3] .4
    #   step 2: [3 4] .4*.9 = .36, [2 EOS] .5*.6 = .30 (finished; next best .05)
    #   step 3: [3 4 4] .324, [2 EOS] .30 (padded with 0 at no cost)
    #   step 4: [2 EOS] .30, [3 4 4 4] .2916
    # Row 1 starts after token 3 and never meets EOS: [4 4 4 4] .9**4, [4 4 4 5] .9**3 * .03.
    model = bigram_model()
    beams = decoding.beam_search(model, np.array([[0], [3]], np.int32), batch_size=2,
                                 n_beams=2, max_length=4, eos_id=1, length_penalty=0.0)
    (best, best_scores), (second, second_scores) = beams
    np.testing.assert_array_equal(best, [[2, 1, 0, 0], [4, 4, 4, 4]])
    np.testing.assert_array_equal(second, [[3, 4, 4, 4], [4, 4, 4, 5]])
    np.testing.assert_allclose(best_scores, np.log([0.5 * 0.6, 0.9**4]), rtol=1e-5)
    np.testing.assert_allclose(second_scores, np.log([0.4 * 0.9**3, 0.9**3 * 0.03]), rtol=1e-5)
    # Without an EOS, token 1 is an ordinary token and the beam goes on past it.
    (free, _), _ = decoding.beam_search(model, np.array([[0]], np.int32), n_beams=2,
                                        max_length=4, eos_id=None, length_penalty=0.0)
    np.testing.assert_array_equal(free, [[3, 4, 4, 4]])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 2.0])
def test_beam_search_ranks_finished_beams_by_length_penalty(alpha):
    # The two final beams of row 0 above: [2 EOS] (log .30, length 2: EOS counts) and
    # [3 4 4 4] (log .2916, length 4). Ranked by log_prob / ((5 + length) / 6) ** alpha:
    #   alpha 0: -1.2040 vs -1.2324     -> the short beam first
    #   alpha .5: -1.1147 vs -1.0062    -> the long beam first
    #   alpha 1: -1.0320 vs -0.8216     -> the long beam first
    #   alpha 2: -0.8846 vs -0.5477     -> the long beam first
    short, long_ = np.log(0.5 * 0.6), np.log(0.4 * 0.9**3)
    ranked = {"short": short / (7 / 6) ** alpha, "long": long_ / (9 / 6) ** alpha}
    expected_first = {0.0: "short", 0.5: "long", 1.0: "long", 2.0: "long"}[alpha]
    assert max(ranked, key=ranked.get) == expected_first  # (the hand numbers above)
    beams = decoding.beam_search(bigram_model(), np.array([[0]], np.int32), n_beams=2,
                                 max_length=4, eos_id=1, length_penalty=alpha)
    tokens = {"short": [[2, 1, 0, 0]], "long": [[3, 4, 4, 4]]}
    raw = {"short": short, "long": long_}
    order = sorted(ranked, key=ranked.get, reverse=True)
    for (got_tokens, got_scores), name in zip(beams, order):
        np.testing.assert_array_equal(got_tokens, tokens[name])
        # The returned score is the beam's log-probability, not the ranking value.
        np.testing.assert_allclose(got_scores, [raw[name]], rtol=1e-5)


def _path_log_prob(model, prompt, tokens):
    _, lp = decoding.autoregressive_sample(model, prompt, temperature=0.0,
                                           max_length=len(tokens), eos_id=None,
                                           return_log_probs=True)
    return float(lp.sum())


def test_transformer_encoder_decoder_decodes():
    kwargs = dict(input_vocab_size=20, d_model=16, d_ff=32, n_encoder_layers=1,
                  n_decoder_layers=1, n_heads=2, max_len=32)
    predict = trax.models.Transformer(**kwargs, mode="predict")
    predict.init((sig(1, 5), sig(1, 1)))
    evaluate = trax.models.Transformer(**kwargs, mode="eval")
    evaluate.init((sig(1, 5), sig(1, 4)))
    _same_weights(evaluate, predict)
    src = np.array([[3, 4, 5, 6, 0], [7, 8, 9, 2, 2]], np.int32)
    fast = decoding.autoregressive_sample(predict, src, batch_size=2, temperature=0.0,
                                          max_length=6, eos_id=None)
    forward = jax.jit(lambda s, t: evaluate.pure_fn((s, t), evaluate.weights, evaluate.state,
                                                    None)[0][0])
    tgt = np.zeros((2, 6), np.int32)  # decoder input; ShiftRight prepends the start 0
    for t in range(6):
        tgt[:, t] = np.asarray(forward(src, tgt))[:, t].argmax(-1)
    np.testing.assert_array_equal(fast, tgt)


# -- bad input -------------------------------------------------------------------


def test_errors(copy_model):
    prompt = np.array([[0, 3, 7, 0]], np.int32)
    with pytest.raises(ValueError, match="prompt is empty"):
        decoding.autoregressive_sample(copy_model, np.zeros((1, 0), np.int32))
    with pytest.raises(ValueError, match="max_len is 256"):
        decoding.autoregressive_sample(copy_model, prompt, max_length=300)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 13\)"):
        decoding.autoregressive_sample(copy_model, np.array([[0, 13]]))
    with pytest.raises(ValueError, match="batch_size is 1"):
        decoding.autoregressive_sample(copy_model, np.repeat(prompt, 2, 0))
    with pytest.raises(ValueError, match="n_beams must be a positive int"):
        decoding.beam_search(copy_model, prompt, n_beams=0)
    train_model = trax.models.TransformerLM(vocab_size=13, d_model=16, d_ff=16, n_layers=1,
                                            n_heads=2, max_len=32)
    train_model.init(sig(1, 4))
    with pytest.raises(ValueError, match="'train' mode; decoding needs mode='predict'"):
        decoding.autoregressive_sample(train_model, prompt)
    with pytest.raises(ValueError, match="top_p must be in"):
        decoding.autoregressive_sample(copy_model, prompt, top_p=1.5)


def test_ties_at_the_top_k_and_top_p_boundary_are_all_kept():
    # Tokens 0, 1, 2 tie; top_k=2 and any top_p that needs a second token keep all three
    # (no arbitrary tie-breaking), and token 3 never appears.
    probs = np.array([0.3, 0.3, 0.3, 0.1])
    model = fixed_logits_model(np.log(probs))
    prompt = np.zeros((64, 1), np.int32)
    for kwargs in (dict(top_k=2), dict(top_p=0.5)):
        out = decoding.autoregressive_sample(model, prompt, batch_size=64, max_length=20,
                                             eos_id=None, seed=5, **kwargs)
        assert set(np.unique(out)) == {0, 1, 2}, kwargs


def row_logits_model(table):
    """A 'predict' model whose next-token logits for batch row ``b`` are always ``table[b]``."""
    table = jnp.asarray(table, jnp.float32)
    model = tl.Serial(tl.Fn("RowLogits", lambda x: jnp.broadcast_to(
        table[:, None, :], x.shape + table.shape[-1:])))
    model.init(sig(table.shape[0], 1))
    return model


def _sort_based_support(scaled, k=None, p=None):
    """The textbook top-k / nucleus support of each row of ``scaled`` (logits / T), by sorting.

    Returns (support, near): ``near`` marks tokens whose nucleus membership float32
    rounding may decide (the mass before them is within 1e-6 of ``p``).
    """
    finite = np.isfinite(scaled)
    if k is not None:
        kth = np.sort(scaled, axis=-1)[:, -min(k, scaled.shape[-1])][:, None]
        return (scaled >= kth) & finite, np.zeros_like(finite)
    probs = np.asarray(jax.nn.softmax(jnp.asarray(scaled), axis=-1), np.float64)
    order = np.argsort(-scaled, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sorted_p, axis=-1) - sorted_p
    support, near = np.zeros_like(finite), np.zeros_like(finite)
    np.put_along_axis(support, order, before < p, axis=-1)
    np.put_along_axis(near, order, np.abs(before - p) < 1e-6, axis=-1)
    return support & finite, near


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [7, 256])
def test_top_k_and_top_p_sample_from_the_sort_based_support(vocab):
    """Sampled tokens never leave the textbook top-k / nucleus support, and fill it."""
    rows, copies, steps = 8, 16, 400  # each row of logits decoded by 16 rows of the batch
    rng = np.random.default_rng(vocab)
    logits = (rng.normal(size=(rows, vocab)) * rng.uniform(0.5, 6, (rows, 1))).astype(np.float32)
    logits[0, : vocab // 2] = -np.inf  # an already-restricted row
    logits[1] = -logits[1]
    model = row_logits_model(np.repeat(logits, copies, axis=0))
    log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    # The top-k support does not depend on the temperature: a high one flattens the
    # distribution inside it, so that all of it is drawn. The nucleus is taken at T.
    settings = [(50.0, dict(top_k=k)) for k in (1, 3, vocab - 1)]
    settings += [(4.0, dict(top_p=p)) for p in (0.3, 0.9)]
    checked = total = 0
    for i, (temperature, setting) in enumerate(settings):
        out = decoding.autoregressive_sample(model, np.zeros((rows * copies, 1), np.int32),
                                             batch_size=rows * copies, temperature=temperature,
                                             max_length=steps, eos_id=None, seed=i, **setting)
        out = out.reshape(rows, copies * steps)
        scaled = log_probs / np.float32(temperature)  # what decoding restricts
        support, near = _sort_based_support(scaled, setting.get("top_k"), setting.get("top_p"))
        for row in range(rows):
            seen = np.zeros(vocab, bool)
            seen[out[row]] = True
            assert not (seen & ~support[row] & ~near[row]).any(), (setting, row)
            # Every token of the support that is expected at least 20 times was drawn.
            masked = np.where(support[row], scaled[row].astype(np.float64), -np.inf)
            q = np.exp(masked - masked.max())
            likely = support[row] & (q / q.sum() * copies * steps >= 20)
            assert seen[likely].all(), (setting, row)
            checked, total = checked + likely.sum(), total + support[row].sum()
    assert checked > 0.9 * total  # (nearly every support was checked whole)


def test_tokens_of_probability_zero_are_never_drawn():
    # One token has all the mass. Sampling draws Gumbel noise for each of 64 x 4096
    # logits per step; over 400 steps its largest value, which float32 rounds to +inf,
    # comes up several times, and -inf + inf must not turn a token of probability 0
    # into NaN (which picked the index past the end, 4096).
    vocab, batch = 4096, 64
    table = np.full((batch, vocab), -np.inf, np.float32)
    table[:, 7] = 0.0
    out = decoding.autoregressive_sample(row_logits_model(table), np.zeros((batch, 1), np.int32),
                                         batch_size=batch, max_length=400, eos_id=None, seed=0)
    assert out.shape == (batch, 400)
    assert (out == 7).all(), np.unique(out)


def test_greedy_takes_the_first_of_tied_maxima():
    x = np.array([[1.0, 3.0, 3.0, 0.0], [-np.inf, -1.0, -np.inf, -1.0], [5.0, 5.0, 5.0, 5.0]],
                 np.float32)
    out = decoding.autoregressive_sample(row_logits_model(x), np.zeros((3, 1), np.int32),
                                         batch_size=3, temperature=0.0, max_length=2,
                                         eos_id=None)
    np.testing.assert_array_equal(out, [[1, 1], [1, 1], [0, 0]])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, (50, 33)).astype(np.float32)  # many ties
    out = decoding.autoregressive_sample(row_logits_model(y), np.zeros((50, 1), np.int32),
                                         batch_size=50, temperature=0.0, max_length=1,
                                         eos_id=None)
    np.testing.assert_array_equal(out[:, 0], y.argmax(-1))


@pytest.mark.slow
def test_nan_model_output_raises_instead_of_garbage():
    model = tiny_lm("predict", 3)
    flat, _ = tl.flatten_weights_and_state(model.weights, ())
    broken = [np.full_like(np.asarray(x), np.nan) if i == len(flat) - 2 else x
              for i, x in enumerate(flat)]  # the output Dense's kernel
    checkpoints.assign_flat_weights(model, broken)
    prompt = np.array([[3, 4]], np.int32)
    for kwargs in (dict(temperature=0.0), dict(top_k=3), dict(top_p=0.9)):
        with pytest.raises(FloatingPointError, match=r"row 0 are NaN at step 0"):
            decoding.autoregressive_sample(model, prompt, max_length=4, **kwargs)
    for kwargs in (dict(temperature=0.0), dict(top_k=3), dict(top_p=0.9)):
        with pytest.raises(FloatingPointError, match="NaN"):
            next(decoding.autoregressive_sample_stream(model, prompt, max_length=4, **kwargs))
    # Ragged prompts decode in groups by length; the error names the caller's row:
    # the shorter prompt (row 1) is decoded first.
    ragged = np.array([[3, 4], [5, 0]], np.int32)
    with pytest.raises(FloatingPointError, match=r"row 1 are NaN at step 0"):
        decoding.autoregressive_sample(model, ragged, batch_size=2, temperature=0.0,
                                       max_length=4, prompt_lengths=[2, 1])


@pytest.mark.parametrize("last", ["none", "log_softmax", "log_softmax_over_batch"])
def test_log_probs_are_normalized_over_the_vocabulary(last):
    # Decoding may take a model's outputs as log-probabilities only when it ends in
    # LogSoftmax over the vocabulary; a LogSoftmax over another axis (here the batch)
    # is normalized again.
    table = np.array([[0.5, 2.0, -1.0, 0.0], [1.0, -2.0, 0.5, 3.0]], np.float32)
    ends = {"none": [], "log_softmax": [tl.LogSoftmax()],
            "log_softmax_over_batch": [tl.LogSoftmax(axis=0)]}[last]
    model = tl.Serial(row_logits_model(table), *ends)
    model.init(sig(2, 1))
    outputs = table - np.log(np.exp(table).sum(0)) if last == "log_softmax_over_batch" else table
    want = outputs - np.log(np.exp(outputs).sum(-1, keepdims=True))  # over the vocabulary
    tokens, log_probs = decoding.autoregressive_sample(
        model, np.zeros((2, 1), np.int32), batch_size=2, temperature=0.0, max_length=2,
        eos_id=None, return_log_probs=True)
    np.testing.assert_array_equal(tokens, [[1, 1], [3, 3]])
    np.testing.assert_allclose(log_probs, [[want[0, 1]] * 2, [want[1, 3]] * 2], rtol=1e-5)
    if last == "log_softmax_over_batch":  # (the case tells the two apart)
        assert abs(outputs[0, 1] - want[0, 1]) > 0.1


def _enc_dec_pair(seed=0):
    kwargs = dict(input_vocab_size=20, d_model=16, d_ff=32, n_encoder_layers=1,
                  n_decoder_layers=1, n_heads=2, max_len=32)
    predict = trax.models.Transformer(**kwargs, mode="predict")
    predict.init((sig(1, 5), sig(1, 1)), rng=trax.fastmath.random.get_prng(seed))
    evaluate = trax.models.Transformer(**kwargs, mode="eval")
    evaluate.init((sig(1, 5), sig(1, 4)))
    _same_weights(evaluate, predict)
    return predict, evaluate


@pytest.mark.slow
def test_beam_search_encoder_decoder_scores_match_teacher_forcing():
    predict, evaluate = _enc_dec_pair(seed=2)
    src = np.array([[3, 4, 5, 6, 0], [7, 8, 9, 2, 2]], np.int32)
    beams = decoding.beam_search(predict, src, batch_size=2, n_beams=3, max_length=6,
                                 eos_id=None)
    forward = jax.jit(lambda s, t: evaluate.pure_fn((s, t), evaluate.weights, evaluate.state,
                                                    None)[0][0])
    for tokens, scores in beams:
        assert tokens.shape == (2, 6) and scores.shape == (2,)
        # The decoder input is the sequence itself (ShiftRight prepends the start 0).
        log_probs = np.asarray(forward(src, tokens))
        chosen = np.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
        np.testing.assert_allclose(scores, chosen.sum(-1), rtol=1e-4, atol=1e-4)
    assert (beams[0][1] >= beams[1][1]).all() and (beams[1][1] >= beams[2][1]).all()
    # A repeated call reuses the program: nothing is traced (not even the shapes
    # of the state, which the first call works out) and nothing is compiled.
    programs = decoding.compiled_programs(predict)
    with jax_work() as work:
        again = decoding.beam_search(predict, src, batch_size=2, n_beams=3, max_length=6,
                                     eos_id=None)
    assert work == []
    assert decoding.compiled_programs(predict) == programs
    np.testing.assert_array_equal(again[0][0], beams[0][0])
    greedy = decoding.autoregressive_sample(predict, src, batch_size=2, temperature=0.0,
                                            max_length=6, eos_id=None)
    one = decoding.beam_search(predict, src, batch_size=2, n_beams=1, max_length=6,
                               eos_id=None)
    np.testing.assert_array_equal(one[0][0], greedy)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_stream_encoder_decoder_uses_each_calls_source():
    predict, _ = _enc_dec_pair(seed=1)
    src_a = np.array([[3, 4, 5, 6, 0]], np.int32)
    src_b = np.array([[9, 9, 1, 2, 3]], np.int32)

    def stream(src):
        gen = decoding.autoregressive_sample_stream(predict, src, temperature=0.0,
                                                    max_length=6)
        return np.concatenate(list(gen))

    for src in (src_a, src_b):
        want = decoding.autoregressive_sample(predict, src, temperature=0.0, max_length=6,
                                              eos_id=None)[0]
        np.testing.assert_array_equal(stream(src), want)


def test_inf_logit_with_top_k_raises_not_garbage():
    # A +inf logit through LogSoftmax gives NaN - inf; top-k must not mask the NaN away.
    table = jnp.asarray([np.inf, 1.0, 2.0, 0.5], jnp.float32)
    model = tl.Serial(tl.Fn("FixedLogits", lambda x: jnp.broadcast_to(
        table, x.shape + table.shape).astype(jnp.float32)), tl.LogSoftmax())
    model.init(sig(1, 1))
    for kwargs in (dict(temperature=0.0), dict(top_k=2), dict(top_p=0.9), dict()):
        with pytest.raises(FloatingPointError, match="NaN"):
            decoding.autoregressive_sample(model, np.zeros((1, 1), np.int32), max_length=3,
                                           **kwargs)


# -- decoding owns its state -------------------------------------------------------


def _all_layers(layer):
    yield layer
    for sub in layer.sublayers:
        yield from _all_layers(sub)


def _decode_every_way(model, src):
    decoding.autoregressive_sample(model, src, temperature=0.0, max_length=5)
    decoding.autoregressive_sample(model, src, top_k=3, max_length=4)
    gen = decoding.autoregressive_sample_stream(model, src, temperature=0.0, max_length=3)
    assert len(list(gen)) == 3
    decoding.beam_search(model, src, n_beams=2, max_length=3)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lm", "encoder-decoder"])
def test_decoding_writes_nothing_on_the_model(kind, monkeypatch):
    if kind == "lm":
        model, src = tiny_lm("predict", 11), np.array([[0, 3, 4]], np.int32)
    else:
        model, _ = _enc_dec_pair(seed=3)
        src = np.array([[3, 4, 5, 6, 0]], np.int32)
    layers = list(_all_layers(model))
    ids = {id(layer) for layer in layers}
    written = []
    original = tl.Layer.__setattr__

    def record(self, name, value):
        if id(self) in ids:
            written.append(name)
        original(self, name, value)

    monkeypatch.setattr(tl.Layer, "__setattr__", record)
    # Initializing or running a layer installs its weights/state/rng for the call
    # and puts them back. Learn which attributes that touches from the public calls
    # decoding makes (an init pass, a forward pass); any other write is decoding's.
    one = sig(1, 1)
    model.weights_and_state_signature(one if kind == "lm" else (sig(1, src.shape[1]), one))
    x = np.zeros((1, 1), np.int32)
    model.pure_fn(x if kind == "lm" else (src, x), model.weights, model.state, None)
    layer_machinery = set(written)
    written.clear()
    before = [dict(vars(layer)) for layer in layers]
    _decode_every_way(model, src)
    monkeypatch.undo()
    # e.g. no cache length written into the attention layers, even for a while
    assert set(written) <= layer_machinery, set(written) - layer_machinery
    for layer, attrs in zip(layers, before):
        now = vars(layer)
        assert now.keys() == attrs.keys(), type(layer).__name__  # nothing new on the model
        assert all(now[k] is v for k, v in attrs.items()), type(layer).__name__
    assert decoding.compiled_programs(model) > 0  # the programs are held elsewhere


@pytest.mark.slow
def test_compiled_programs_go_with_their_model():
    models = {"lm": tiny_lm("predict", 12), "encoder-decoder": _enc_dec_pair(seed=4)[0]}
    refs = {kind: weakref.ref(model) for kind, model in models.items()}
    for kind, model in models.items():
        src = np.array([[0, 3, 4]] if kind == "lm" else [[3, 4, 5, 6, 0]], np.int32)
        _decode_every_way(model, src)
        assert decoding.compiled_programs(model) >= 4  # sample, stream, beam search, states
    del model
    gc.collect()  # (programs of models that earlier tests dropped go now)
    n = decoding.compiled_programs()
    for kind in list(models):
        mine = decoding.compiled_programs(models.pop(kind))
        gc.collect()
        assert refs[kind]() is None, f"the {kind} model is still referenced"
        n -= mine
        assert decoding.compiled_programs() == n  # its programs went with it


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_a_users_own_step_loop_decodes_with_the_max_len_cache():
    # Trax's way, unchanged: init a predict-mode model for one token, then feed
    # it token by token; the caches hold max_len positions.
    model = tiny_lm("predict", 13, max_len=32)
    prompt = np.array([[0, 3, 4, 5]], np.int32)
    want = decoding.autoregressive_sample(model, prompt, temperature=0.0, max_length=6,
                                          eos_id=None)

    def cache_lengths():
        return {a.shape[1] for a in jax.tree_util.tree_leaves(model.state) if a.ndim == 3}

    def step_loop():
        out = model(np.concatenate([[[0]], prompt], axis=1).astype(np.int32))  # start + prompt
        tokens = []
        for _ in range(6):
            tokens.append(np.asarray(out)[:, -1].argmax(-1).astype(np.int32))
            out = model(tokens[-1][:, None])
        return np.stack(tokens, axis=1)

    assert cache_lengths() == {32}
    np.testing.assert_array_equal(step_loop(), want)
    # The documented way to choose another cache length for such a loop:
    with tl.predict_cache_length(16):
        model.init(sig(1, 1))
    assert cache_lengths() == {16}
    np.testing.assert_array_equal(step_loop(), want)
