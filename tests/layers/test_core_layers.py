"""Core layers (TRAX_REFERENCE §3.1): exact values, weight layouts, names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random


def sig(*shape, dtype=np.float32):
    return shapes.ShapeDtype(shape, dtype)


# -- Dense ------------------------------------------------------------------------


def test_dense_exact_values_with_given_weights():
    dense = tl.Dense(3)
    assert str(dense) == "Dense_3" and (dense.n_in, dense.n_out) == (1, 1)
    (w, b), state = dense.init(sig(1, 2))
    assert w.shape == (2, 3) and b.shape == (3,) and state == ()
    dense.weights = (
        np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32),
        np.array([0.5, 0.0, -1.0], np.float32),
    )
    y = dense(np.array([[1.0, -1.0]], np.float32))
    assert y.tolist() == [[-2.5, -3.0, -4.0]]


def test_dense_without_bias_has_a_single_weight_array():
    dense = tl.Dense(3, use_bias=False)
    weights, _ = dense.init(sig(4, 2))
    assert isinstance(weights, jax.Array) and weights.shape == (2, 3)
    dense.weights = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    assert dense(np.array([[1.0, -1.0]], np.float32)).tolist() == [[-3.0, -3.0, -3.0]]


def test_dense_keeps_leading_axes():
    dense = tl.Dense(5)
    dense.init(sig(2, 3, 4))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 10
    y = dense(x)
    assert y.shape == (2, 3, 5)
    w, b = (np.asarray(a, np.float64) for a in dense.weights)
    # Each position of the leading axes is its own row: y[i, j] = x[i, j] @ w + b.
    want = np.einsum("ijk,kn->ijn", x.astype(np.float64), w) + b
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_dense_init_statistics_and_determinism():
    (w, b), _ = tl.Dense(3).init(sig(1, 2))
    (w2, b2), _ = tl.Dense(3).init(sig(1, 2))
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(b, b2)
    (w3, _), _ = tl.Dense(3).init(sig(1, 2), rng=random.get_prng(5))
    assert not np.array_equal(w, w3)
    assert np.abs(w).max() <= np.sqrt(6.0 / (2 + 3))  # Glorot uniform limit.
    assert np.abs(b).max() < 1e-4  # Normal(0, 1e-6).
    assert w.dtype == np.float32 and b.dtype == np.float32


def test_dense_custom_initializers_and_bfloat16():
    dense = tl.Dense(
        2,
        kernel_initializer=lambda shape, rng: jnp.full(shape, 0.5),
        bias_initializer=lambda shape, rng: jnp.ones(shape),
        use_bfloat16=True,
    )
    (w, b), _ = dense.init(sig(1, 3))
    assert w.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16
    assert np.asarray(w, np.float32).tolist() == [[0.5, 0.5]] * 3


# -- Embedding ----------------------------------------------------------------------


def test_embedding_lookup_and_clipping():
    emb = tl.Embedding(4, 2)
    assert str(emb) == "Embedding_4_2" and str(tl.Embedding(32, 16)) == "Embedding_32_16"
    weights, _ = emb.init(sig(1, 5, dtype=np.int32))
    assert weights.shape == (4, 2)
    emb.weights = np.arange(8, dtype=np.float32).reshape(4, 2)
    ids = np.array([[-3, 0, 2, 3, 9]], np.int32)
    # Under jit (no check possible): below 0 reads row 0, >= vocab the last row (clip mode).
    assert jax.jit(emb)(ids).tolist() == [
        [[0.0, 1.0], [0.0, 1.0], [4.0, 5.0], [6.0, 7.0], [6.0, 7.0]]]
    # Eagerly, out-of-range ids raise (more in tests/supervised/test_decoding_refusals.py).
    with pytest.raises(ValueError, match="got token id -3, outside its vocabulary"):
        emb(ids)


def test_embedding_init_ignores_the_signature():
    w_none, _ = tl.Embedding(4, 2).init(None)
    w_sig, _ = tl.Embedding(4, 2).init(sig(7, 3, dtype=np.int32))
    np.testing.assert_array_equal(w_none, w_sig)


def test_embedding_default_init_is_uniform_in_sqrt_3_over_d():
    w, _ = tl.Embedding(512, 16).init(None)
    limit = np.sqrt(3.0 / 16)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.98 * limit
    assert np.std(w) == pytest.approx(limit / np.sqrt(3.0), rel=0.03)  # std of U(-l, l)


def test_embedding_rejects_float_ids():
    emb = tl.Embedding(4, 2)
    emb.init(None)
    with pytest.raises(tl.LayerError, match="expects integer token ids; got dtype float32"):
        emb(np.zeros((1, 2), np.float32))


# -- Dropout ----------------------------------------------------------------------------


def test_dropout_state_is_the_rate_as_float32_scalar():
    drop = tl.Dropout(0.25)
    assert str(drop) == "Dropout"
    weights, state = drop.init(sig(2, 3))
    assert weights == () and state.shape == () and state.dtype == np.float32
    assert float(state) == 0.25


def test_dropout_train_mode_zeros_about_rate_and_rescales():
    drop = tl.Dropout(0.5)
    _, state = drop.init(sig(100, 100))
    x = np.ones((100, 100), np.float32)
    y, _ = drop.pure_fn(x, (), state, random.get_prng(0))
    y = np.asarray(y)
    assert set(np.unique(y).tolist()) == {0.0, 2.0}
    assert (y == 0).mean() == pytest.approx(0.5, abs=0.02)
    y_same, _ = drop.pure_fn(x, (), state, random.get_prng(0))
    np.testing.assert_array_equal(y, y_same)
    y_other, _ = drop.pure_fn(x, (), state, random.get_prng(1))
    assert not np.array_equal(y, y_other)
    drop2 = tl.Dropout(0.2)
    _, state2 = drop2.init(sig(100, 100))
    y2 = np.asarray(drop2.pure_fn(x, (), state2, random.get_prng(0))[0])
    assert (y2 == 0).mean() == pytest.approx(0.2, abs=0.02)
    np.testing.assert_allclose(y2[y2 != 0], 1.25)


def test_dropout_shared_axes():
    drop = tl.Dropout(0.5, shared_axes=[0])
    _, state = drop.init(sig(4, 50))
    y = np.asarray(drop.pure_fn(np.ones((4, 50), np.float32), (), state, random.get_prng(3))[0])
    assert (y == y[0]).all()  # One mask row shared over axis 0.


@pytest.mark.parametrize("mode", ["eval", "predict"])
def test_dropout_is_identity_outside_train(mode):
    drop = tl.Dropout(0.5, mode=mode)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    drop.init(shapes.signature(x))
    np.testing.assert_array_equal(drop(x), x)
    np.testing.assert_array_equal(tl.Dropout(0.0)(x), x)


def test_dropout_train_mode_needs_an_rng():
    drop = tl.Dropout(0.5)
    _, state = drop.init(sig(2))
    with pytest.raises(tl.LayerError, match="needs an rng"):
        drop.pure_fn(np.ones(2, np.float32), (), state, None)


# -- Weights --------------------------------------------------------------------------------


def test_weights_layer():
    layer = tl.Weights(lambda shape, rng: jnp.arange(3, dtype=jnp.float32), (3,))
    assert str(layer) == "Weights_(3,)_in0" and (layer.n_in, layer.n_out) == (0, 1)
    model = tl.Serial(layer, tl.Add())
    assert (model.n_in, model.n_out) == (1, 1)
    model.init(sig(3))
    assert model(np.ones(3, np.float32)).tolist() == [1.0, 2.0, 3.0]


# -- Function layers ----------------------------------------------------------------


def test_flatten():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert str(tl.Flatten()) == "Flatten_keep1"
    assert tl.Flatten()(x).shape == (2, 12)
    assert tl.Flatten(2)(x).shape == (2, 3, 4)
    assert str(tl.Flatten(0)) == "Flatten_keep0" and tl.Flatten(0)(x).shape == (24,)
    np.testing.assert_array_equal(tl.Flatten()(x), x.reshape(2, 12))
    with pytest.raises(tl.LayerError, match="n_axes_to_keep must be smaller"):
        tl.Flatten(3)(x)


def test_log_softmax_and_softmax():
    x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    expected = x - np.log(np.exp(x).sum(-1, keepdims=True))
    assert str(tl.LogSoftmax()) == "LogSoftmax" and str(tl.Softmax()) == "Softmax"
    np.testing.assert_allclose(tl.LogSoftmax()(x), expected, rtol=1e-6)
    np.testing.assert_allclose(tl.Softmax()(x), np.exp(expected), rtol=1e-6)
    np.testing.assert_allclose(
        tl.LogSoftmax(axis=0)(x), x - np.log(np.exp(x).sum(0, keepdims=True)), rtol=1e-5
    )
    np.testing.assert_allclose(tl.log_softmax(x), expected, rtol=1e-6)
    np.testing.assert_allclose(tl.LogSumExp()(x), np.log(np.exp(x).sum(-1)), rtol=1e-6)


def test_reductions():
    x = np.array([[1.0, 5.0, 3.0], [4.0, 2.0, 6.0]], np.float32)
    assert str(tl.Mean()) == "Mean" and str(tl.Sum()) == "Sum"
    assert tl.Mean()(x).tolist() == [3.0, 4.0]
    assert tl.Mean(axis=0, keepdims=True)(x).tolist() == [[2.5, 3.5, 4.5]]
    assert tl.Sum()(x).item() == 21.0  # axis=None by default
    assert tl.Sum(axis=-1)(x).tolist() == [9.0, 12.0]
    assert tl.Min()(x).tolist() == [1.0, 2.0] and str(tl.Min()) == "Min"
    assert tl.Max(axis=0)(x).tolist() == [4.0, 5.0, 6.0] and str(tl.Max()) == "Max"
    assert tl.ArgMax()(x).tolist() == [1, 2] and str(tl.ArgMax()) == "ArgMax"
    assert tl.ArgMax(axis=0)(x).tolist() == [1, 0, 1]


def test_small_function_layers():
    x = np.array([0.2, 0.7, -1.0], np.float32)
    assert tl.Negate()(x).tolist() == pytest.approx([-0.2, -0.7, 1.0])
    assert tl.ThresholdToBinary()(x).tolist() == [0.0, 1.0, 0.0]
    assert tl.ToFloat()(np.array([1, 2], np.int32)).dtype == np.float32
    np.testing.assert_array_equal(tl.one_hot(np.array([0, 2]), 3), [[1, 0, 0], [0, 0, 1]])


def test_stop_gradient():
    layer = tl.StopGradient()
    assert str(layer) == "StopGradient"
    x = np.array([1.0, 2.0], np.float32)
    assert layer(x).tolist() == [1.0, 2.0]

    def f(v):
        return jnp.sum(layer.pure_fn(v, (), (), None)[0] * v)

    # Only the second factor is differentiated: d/dv sum(sg(v) * v) = v.
    assert jax.grad(f)(x).tolist() == [1.0, 2.0]
    assert jax.grad(lambda v: jnp.sum(layer.pure_fn(v, (), (), None)[0]))(x).tolist() == [0.0, 0.0]


def test_logsoftmax_sample():
    log_probs = np.log(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32))
    assert tl.logsoftmax_sample(log_probs, temperature=0.0).tolist() == [1, 0]
    a = tl.logsoftmax_sample(log_probs, rng=random.get_prng(1))
    b = tl.logsoftmax_sample(log_probs, rng=random.get_prng(1))
    np.testing.assert_array_equal(a, b)
