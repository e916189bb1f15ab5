"""Decoding from logits: a model ending in LogSoftmax runs without it when no scores are kept.

Tokens must equal those chosen from the log-probabilities (the same call with
``return_log_probs=True`` still runs the whole model), rows whose
log-probabilities would be NaN must still raise, and the loop must no longer
hold the normalization.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import shapes
from retrax.supervised import decoding
from retrax.supervised.decoding_programs import ends_in_log_softmax, without_log_softmax
from retrax.supervised.sampling import sample, sample_step


@pytest.fixture(scope="module")
def lm():
    model = trax.models.TransformerLM(vocab_size=32, d_model=16, d_ff=32, n_layers=1,
                                      n_heads=2, max_len=64, mode="predict")
    model.init(shapes.ShapeDtype((3, 1), np.int32), rng=jax.random.PRNGKey(3))
    return model


def test_without_log_softmax_outputs_the_logits_of_the_model(lm):
    n = len(lm.sublayers)
    head, trim = without_log_softmax(lm)
    assert len(head.sublayers) == n - 1
    x = np.array([[3], [1], [4]], np.int32)
    logits, state = head.pure_fn(x, trim(lm.weights), trim(lm.state), None)
    log_probs, full_state = lm.pure_fn(x, lm.weights, lm.state, None)
    np.testing.assert_allclose(jax.nn.log_softmax(logits, axis=-1), log_probs, atol=1e-6)
    # The same caches are written (the LogSoftmax's entry of the state left out).
    jax.tree_util.tree_map(np.testing.assert_array_equal, state, trim(full_state))
    assert len(lm.sublayers) == n  # the model itself is untouched


def test_without_log_softmax_nested_and_refused():
    inner = tl.Serial(tl.Dense(5), tl.LogSoftmax())
    model = tl.Serial(tl.Embedding(7, 3), inner)
    x = np.array([[1, 2]], np.int32)
    model.init(shapes.ShapeDtype(x.shape, np.int32))
    head, trim = without_log_softmax(model)
    w = trim(model.weights)
    assert len(w) == 2 and len(w[1]) == 1  # (embedding, (dense,))
    logits = head.pure_fn(x, w, trim(model.state), None)[0]
    np.testing.assert_allclose(logits, inner.sublayers[0](model.sublayers[0](x)), atol=1e-6)
    np.testing.assert_allclose(jax.nn.log_softmax(logits), model(x), atol=1e-6)
    plain = tl.Serial(tl.Embedding(7, 3), tl.Dense(5))
    assert not ends_in_log_softmax(plain)
    with pytest.raises(ValueError, match="does not end in LogSoftmax"):
        without_log_softmax(plain)


@pytest.mark.parametrize("kw", [
    dict(temperature=0.0),
    pytest.param(dict(temperature=1.3, top_k=6, top_p=0.8, seed=9), marks=pytest.mark.slow)])
def test_tokens_equal_those_from_log_probs(lm, kw):
    prompt = np.array([[5, 6], [7, 8], [9, 3]], np.int32)
    args = dict(batch_size=3, eos_id=None, max_length=12, **kw)
    from_logits = decoding.autoregressive_sample(lm, prompt, **args)
    from_log_probs, scores = decoding.autoregressive_sample(lm, prompt, return_log_probs=True,
                                                            **args)
    np.testing.assert_array_equal(from_logits, from_log_probs)
    assert np.all(scores <= 0.0)


def _ops(hlo, op):
    return len(re.findall(rf"\s{op}\(", hlo))


def test_greedy_program_holds_no_normalization(lm):
    texts = [decoding.lowered_generation(lm, None, batch_size=3, temperature=0.0, eos_id=None,
                                         max_length=8, return_log_probs=r).compile().as_text()
             for r in (False, True)]
    # LogSoftmax is the model's only log; the attention's exp stays.
    assert _ops(texts[0], "log") == 0 and _ops(texts[1], "log") > 0
    assert 0 < _ops(texts[0], "exponential") < _ops(texts[1], "exponential")
    assert _ops(texts[0], "fusion") < _ops(texts[1], "fusion")


@pytest.mark.slow  # (the default suite checks greedy end to end; this adds the samplers)
def test_sample_from_logits_equals_sample_from_log_probs():
    logits = jax.random.normal(jax.random.PRNGKey(0), (64, 50)) * 3.0
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    key = jax.random.PRNGKey(7)
    for t, k, p in [(1.0, None, None), (0.5, 5, None), (2.0, None, 0.9)]:
        pick = jax.jit(lambda x, t=t, k=k, p=p: sample(x, key, t, k, p))
        np.testing.assert_array_equal(pick(logits), pick(log_probs), err_msg=f"{t} {k} {p}")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rows_whose_log_probs_are_nan_are_still_found(temperature):
    v = 6
    logits = jnp.array([[0.0, 1.0, np.inf, 2.0, 0.0, 0.0],
                        [-np.inf] * v,
                        [0.0, np.nan, 1.0, 2.0, 0.0, 0.0],
                        [0.0, 1.0, 5.0, 2.0, -np.inf, 0.0]])
    # The rows log_softmax turns into NaN: +inf, all -inf, NaN.
    assert np.isnan(jax.nn.log_softmax(logits, axis=-1)).any(axis=-1).tolist() == [
        True, True, True, False]
    tokens = jnp.zeros((4, 3), jnp.int32)
    done = jnp.zeros((4,), bool)
    nan_step = jnp.full((4,), -1, jnp.int32)
    tok, tokens, _, done, nan_step = sample_step(
        logits, jax.random.PRNGKey(0), jnp.int32(1), temperature, None, None, None, tokens, None,
        done, nan_step, from_logits=True)
    assert nan_step.tolist() == [1, 1, 1, -1]
    assert done.tolist() == [True, True, True, False]
    assert tok.tolist()[:3] == [0, 0, 0]
    with pytest.raises(ValueError, match="scores need log-probabilities"):
        sample_step(logits, jax.random.PRNGKey(0), jnp.int32(1), temperature, None, None, None,
                    tokens, jnp.zeros((4, 3)), done, nan_step, from_logits=True)


def test_nan_weights_still_raise(lm):
    weights = lm.weights
    dense_w, dense_b = weights[-2]
    try:
        lm.weights = (*weights[:-2], (dense_w, dense_b.at[3].set(jnp.nan)), weights[-1])
        # (Sampled rows: test_rows_whose_log_probs_are_nan_are_still_found.)
        with pytest.raises(FloatingPointError, match="row 0 are NaN at step 0 \\(of 3 row"):
            decoding.autoregressive_sample(lm, np.array([[2], [3], [4]], np.int32),
                                           batch_size=3, eos_id=None, max_length=4,
                                           temperature=0.0)
    finally:
        lm.weights = weights


@pytest.mark.parametrize("one_pass", [True, False])
def test_argmax_is_the_first_maximum_or_past_the_end(monkeypatch, one_pass):
    from retrax.supervised import sampling

    if not one_pass:
        monkeypatch.setattr(sampling, "ONE_PASS_ARGMAX", 0)  # the max/compare/min form
    x = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (40, 37), -3, 4), np.float32)
    x[0] = 2.0  # all tied
    x[1, 5] = -0.0
    x[1, 3], x[1, 9] = 0.0, -0.0  # a tie of +0 and -0 (row's max is 3 otherwise)
    x[1] = np.where(x[1] > 0, -1.0, x[1])
    x[2, 30] = np.inf
    x[3, 0] = np.nan
    x[4, 36] = np.nan
    x[5] = -np.inf
    x[6, 2] = -np.inf
    expected = np.argmax(x, axis=-1)
    expected[3] = expected[4] = 37
    got = jax.jit(sampling.argmax)(x)
    np.testing.assert_array_equal(got, expected)
    assert got[0] == 0 and got[1] == np.flatnonzero(x[1] == 0.0)[0] and got[5] == 0
    finite = jax.jit(lambda v: sampling.argmax(v, finite=True))(x)
    expected[2] = expected[5] = 37
    np.testing.assert_array_equal(finite, expected)
