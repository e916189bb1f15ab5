"""tl.FixedBasePositionalEncoding against a NumPy float64 reference: Trax's weight layout,
eval, predict token by token, train-mode random starts and base dropout, bad input."""

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.layers.research import position_encodings


def reference(weights, positions, first):
    """float64: sum over bases of [digit_i(p) * w[base][i] for i], plus start_vec if first."""
    base_weights, start_vec = weights
    bases = reference.bases
    out = 0.0
    for base, digit_vectors in zip(bases, base_weights):
        rest, parts = np.asarray(positions, np.int64), []
        for vector in digit_vectors:
            parts.append((rest % base)[..., None] * np.asarray(vector, np.float64)[0])
            rest = rest // base
        out = out + np.concatenate(parts, axis=-1)
    out = np.array(out)
    if first:
        out[..., 0, :] += np.asarray(start_vec, np.float64)[0, 0]
    return out


def _layer(mode, bases=(3, 5), n_digits=3, seed=0, d=6, **kw):
    reference.bases = bases
    pe = tl.FixedBasePositionalEncoding(bases=list(bases), n_digits=n_digits, mode=mode,
                                        initializer=tl.RandomNormalInitializer(1.0), **kw)
    pe.init(shapes.ShapeDtype((2, 1, d)), rng=jax.random.PRNGKey(seed))
    return pe


def test_weights_have_trax_layout_and_names():
    pe = tl.FixedBasePositionalEncoding(mode="eval")  # Trax's defaults: 4 bases, 8 digits
    (base_weights, start_vec), state = pe.init(shapes.ShapeDtype((1, 4, 16)))
    assert len(base_weights) == 4 and all(len(b) == 8 for b in base_weights)
    assert {w.shape for b in base_weights for w in b} == {(1, 2)} and start_vec.shape == (1, 1, 16)
    assert float(np.abs(start_vec).max()) <= 1e-4  # RandomUniformInitializer(1e-4)
    # Trax draws the same digit keys for every base.
    np.testing.assert_array_equal(base_weights[0][3], base_weights[2][3])
    assert state == () and pe.name == "FixedBasePositionalEncoding"
    assert position_encodings.FixedBasePositionalEncoding is tl.FixedBasePositionalEncoding
    assert position_encodings.AxialPositionalEncoding is tl.AxialPositionalEncoding


def test_eval_adds_the_digit_embeddings_and_start_vec():
    pe = _layer("eval")
    x = np.random.RandomState(0).randn(2, 7, 6).astype(np.float32)
    want = x + reference(pe.weights, np.arange(7)[None], first=True)
    np.testing.assert_allclose(np.asarray(pe(x)), want, atol=1e-5)


def test_predict_token_by_token_equals_eval_and_a_prompt_too():
    ev, pred = _layer("eval"), _layer("predict")
    x = np.random.RandomState(1).randn(2, 9, 6).astype(np.float32)
    want = np.asarray(ev(x))
    step = jax.jit(pred.pure_fn)
    state, outs = pred.state, []
    for t in range(9):
        y, state = step(x[:, t:t + 1], ev.weights, state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=1e-6)
    assert int(state) == 9
    # A prompt of 4 then single tokens: the same numbers.
    y4, state = step(x[:, :4], ev.weights, pred.state, None)
    y5, state = step(x[:, 4:5], ev.weights, state, None)
    np.testing.assert_allclose(np.concatenate([y4, y5], 1), want[:, :5], atol=1e-6)


def test_train_starts_at_a_random_position_per_example_same_rng_same_result():
    pe = _layer("train", start_from_zero_one_in=1000, base_dropout_one_in=1000)
    x = np.zeros((2, 4, 6), np.float32)
    fn = jax.jit(pe.pure_fn)
    y1 = np.asarray(fn(x, pe.weights, pe.state, jax.random.PRNGKey(3))[0])
    y2 = np.asarray(fn(x, pe.weights, pe.state, jax.random.PRNGKey(3))[0])
    np.testing.assert_array_equal(y1, y2)
    # Positions 0..26 with base 3 and 3 digits: find each example's start.
    starts = []
    for b in range(2):
        found = [s for s in range(27 - 4)
                 if np.allclose(y1[b], reference(pe.weights, np.arange(s, s + 4), True),
                                atol=1e-5)]
        assert found, b
        starts.append(found[0])
    others = [np.asarray(fn(x, pe.weights, pe.state, jax.random.PRNGKey(k))[0])
              for k in range(4, 8)]
    assert any(not np.allclose(o, y1) for o in others)
    assert starts != [0, 0] or any(not np.allclose(o[:, 1], y1[:, 1]) for o in others)


def test_train_always_from_zero_and_base_dropout_all_or_nothing():
    x = np.zeros((2, 5, 6), np.float32)
    rng = jax.random.PRNGKey(0)
    # start_from_zero_one_in=1: every example starts at 0, as in eval.
    zero = _layer("train", start_from_zero_one_in=1, base_dropout_one_in=1000)
    np.testing.assert_allclose(np.asarray(zero.pure_fn(x, zero.weights, zero.state, rng)[0]),
                               np.broadcast_to(reference(zero.weights, np.arange(5)[None], True),
                                               x.shape), atol=1e-5)
    # base_dropout_one_in=1: every example loses all digit embeddings; start_vec stays.
    dropped = _layer("train", base_dropout_one_in=1)
    y = np.asarray(dropped.pure_fn(x, dropped.weights, dropped.state, rng)[0])
    want = np.zeros(x.shape)
    want[:, 0] = np.asarray(dropped.weights[1])[0, 0]
    np.testing.assert_allclose(y, want, atol=1e-6)


def test_bad_input_names_the_value_to_change():
    with pytest.raises(ValueError, match="not a multiple of n_digits=3"):
        tl.FixedBasePositionalEncoding(n_digits=3, mode="eval").init(shapes.ShapeDtype((1, 4, 8)))
    pe = _layer("eval")  # bases 3 and 5, 3 digits: 27 positions
    with pytest.raises(ValueError, match="raise n_digits"):
        pe(np.zeros((1, 27, 6), np.float32))
    with pytest.raises(ValueError, match="ints >= 2"):
        tl.FixedBasePositionalEncoding(bases=[1, 3])
