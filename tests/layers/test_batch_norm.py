"""BatchNorm (running statistics in the state) and FilterResponseNorm against NumPy float64."""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import shapes
from retrax.supervised import training

RNG = np.random.default_rng(7)
EPS = 1e-5


def images(*shape, scale=3.0, shift=1.0):
    return (RNG.normal(size=shape) * scale + shift).astype(np.float32)


def normalized(x, mean, var, gamma, beta, eps=EPS):
    x = np.asarray(x, np.float64)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


# -- layout --------------------------------------------------------------------------------


def test_weights_and_state_layout_for_images():
    bn = tl.BatchNorm()
    assert str(bn) == "BatchNorm" and (bn.n_in, bn.n_out) == (1, 1) and bn.mode == "train"
    (beta, gamma), (mean, var, n_batches) = bn.init(shapes.ShapeDtype((4, 5, 5, 3)))
    assert beta.shape == gamma.shape == (3,) and beta.dtype == gamma.dtype == np.float32
    assert beta.tolist() == [0.0] * 3 and gamma.tolist() == [1.0] * 3
    assert mean.shape == var.shape == (1, 1, 1, 3) and mean.dtype == var.dtype == np.float32
    assert np.all(mean == 0.0) and np.all(var == 1.0)
    assert n_batches.shape == () and n_batches.dtype == np.int32 and int(n_batches) == 0


def test_layout_for_other_axes_and_without_center_or_scale():
    (beta, gamma), (mean, _, _) = tl.BatchNorm(axis=0).init(shapes.ShapeDtype((8, 6)))
    assert beta.shape == (6,) and mean.shape == (1, 6)
    (beta, gamma), (mean, _, _) = tl.BatchNorm(axis=(0, 2)).init(shapes.ShapeDtype((8, 6, 5)))
    assert beta.shape == (6,) and mean.shape == (1, 6, 1)
    weights, _ = tl.BatchNorm(center=False, scale=False).init(shapes.ShapeDtype((2, 3, 3, 4)))
    assert weights == ((), ())
    assert len(tl.flatten_weights_and_state(weights, ())[0]) == 0


# -- train mode ---------------------------------------------------------------------------


def test_train_mode_normalizes_with_the_batch_and_updates_the_running_statistics():
    momentum = 0.8
    bn = tl.BatchNorm(momentum=momentum)
    x = images(4, 3, 2, 5)
    bn.init(shapes.signature(x))
    gamma, beta = images(5, scale=1.0), images(5, scale=1.0, shift=0.0)
    bn.weights = (beta, gamma)
    x64 = x.astype(np.float64)
    mean, var = x64.mean((0, 1, 2), keepdims=True), x64.var((0, 1, 2), keepdims=True)
    np.testing.assert_allclose(bn(x), normalized(x, mean, var, gamma, beta), rtol=1e-5, atol=1e-5)
    running_mean, running_var, n_batches = bn.state
    np.testing.assert_allclose(running_mean, (1 - momentum) * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(running_var, momentum + (1 - momentum) * var, rtol=1e-5)
    assert int(n_batches) == 1
    # A second batch: one more exponential-smoothing step, no debiasing.
    x2 = images(4, 3, 2, 5, scale=0.5, shift=-2.0).astype(np.float64)
    bn(x2.astype(np.float32))
    running_mean2, running_var2, n_batches2 = bn.state
    expected_mean = momentum * (1 - momentum) * mean + (1 - momentum) * x2.mean((0, 1, 2), keepdims=True)
    expected_var = (momentum * (momentum + (1 - momentum) * var)
                    + (1 - momentum) * x2.var((0, 1, 2), keepdims=True))
    np.testing.assert_allclose(running_mean2, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(running_var2, expected_var, rtol=1e-5)
    assert int(n_batches2) == 2 and running_mean2.dtype == np.float32


def test_a_small_exact_case():
    # Values 0..23 over the batch axes: mean 11.5, biased variance (24**2 - 1) / 12.
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    with_all_axes = tl.BatchNorm(axis=(0, 1, 2), momentum=0.9)
    with_all_axes.init(shapes.ShapeDtype((2, 3, 4, 1)))
    y = with_all_axes(x[..., None])[..., 0]
    var = (24**2 - 1) / 12
    np.testing.assert_allclose(y, (x - 11.5) / np.sqrt(var + EPS), rtol=1e-6, atol=1e-6)
    mean, running_var, _ = with_all_axes.state
    np.testing.assert_allclose(mean.ravel(), [0.1 * 11.5], rtol=1e-6)
    np.testing.assert_allclose(running_var.ravel(), [0.9 + 0.1 * var], rtol=1e-6)


def test_pure_fn_returns_the_new_state_and_jit_equals_eager():
    bn = tl.BatchNorm(momentum=0.5)
    x = images(3, 4, 4, 2)
    weights, state = bn.init(shapes.signature(x))
    y, new_state = bn.pure_fn(x, weights, state, None)
    y_jit, state_jit = jax.jit(bn.pure_fn)(x, weights, state, None)
    np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-6)
    for a, b in zip(new_state, state_jit):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert int(state[2]) == 0 and int(new_state[2]) == 1  # pure: the input state is unchanged


# -- eval and predict ----------------------------------------------------------------------


def test_eval_and_predict_use_the_running_statistics_and_keep_the_state():
    x = images(2, 3, 3, 4)
    mean = images(1, 1, 1, 4, scale=1.0)
    var = np.abs(images(1, 1, 1, 4, scale=1.0)) + 0.5
    beta, gamma = images(4), images(4)
    expected = normalized(x, mean, var, gamma, beta)
    outputs = []
    for mode in ("eval", "predict"):
        bn = tl.BatchNorm(mode=mode)
        bn.init(shapes.signature(x))
        state = (jnp.asarray(mean), jnp.asarray(var), jnp.array(7, jnp.int32))
        y, new_state = bn.pure_fn(x, (beta, gamma), state, None)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
        assert all(a is b for a, b in zip(new_state, state))
        outputs.append(np.asarray(y))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_the_mode_is_read_when_the_layer_runs():
    model = tl.Serial(tl.Dense(3), tl.BatchNorm(axis=(0,)))
    x = images(5, 2)
    model.init(shapes.signature(x))
    model(x)  # one train step moves the running statistics
    evaluator = tl.with_mode(model, "eval")
    _, (mean, var, n_batches) = evaluator.state
    assert int(n_batches) == 1
    h = np.asarray(model.sublayers[0](x), np.float64)
    np.testing.assert_allclose(evaluator(x), (h - mean) / np.sqrt(var + EPS), rtol=1e-5, atol=1e-5)
    assert int(evaluator.state[1][2]) == 1  # eval leaves the count alone


# -- errors -----------------------------------------------------------------------------------


def test_a_batch_of_one_in_train_mode_is_refused_but_fine_in_eval():
    bn = tl.BatchNorm(axis=(0,))
    bn.init(shapes.ShapeDtype((1, 4)))
    with pytest.raises(ValueError, match=r"'train' mode .* hold 1 value\(s\) per feature.*"
                                         r"batches of at least 2"):
        bn(np.ones((1, 4), np.float32))
    assert tl.with_mode(bn, "eval")(np.ones((1, 4), np.float32)).shape == (1, 4)
    # Traced it cannot refuse: a signature of batch 1 initializes (Trax programs do this),
    # and a jitted step computes Trax's output, just beta.
    model = tl.Serial(tl.Dense(4), tl.BatchNorm(axis=(0,)), tl.Dense(2))
    weights, state = model.init(shapes.ShapeDtype((1, 3)))
    assert weights[2][0].shape == (4, 2)
    bn_weights = (np.arange(4, dtype=np.float32), np.ones(4, np.float32))
    y, _ = jax.jit(bn.pure_fn)(np.ones((1, 4), np.float32), bn_weights, bn.state, None)
    assert y.tolist() == [[0.0, 1.0, 2.0, 3.0]]
    images_bn = tl.BatchNorm()  # one image still has H * W values per channel
    images_bn.init(shapes.ShapeDtype((1, 4, 4, 2)))
    assert images_bn(images(1, 4, 4, 2)).shape == (1, 4, 4, 2)


def test_channels_first_input_is_recognized():
    bn = tl.BatchNorm()
    bn.init(shapes.ShapeDtype((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"channels-first \(NCHW\).*x\.transpose\(0, 2, 3, 1\)"):
        bn(np.ones((2, 3, 8, 8), np.float32))


def test_integer_input_and_bad_arguments_are_refused():
    bn = tl.BatchNorm(axis=(0,))
    bn.init(shapes.ShapeDtype((2, 3)))
    with pytest.raises(TypeError, match="expects float inputs; got dtype int32"):
        bn(np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match=r"normalizes over axes \(0, 1, 2\), which inputs of "
                                         r"shape \(2, 3\)"):
        tl.BatchNorm().init(shapes.ShapeDtype((2, 3)))
    with pytest.raises(ValueError, match="mode must be one of"):
        tl.BatchNorm(mode="training")
    with pytest.raises(ValueError, match="momentum must be in"):
        tl.BatchNorm(momentum=1.5)


# -- the training Loop carries the state ---------------------------------------------------------


def test_the_loop_keeps_the_running_statistics_from_each_train_step():
    rng = np.random.default_rng(0)
    first = rng.normal(size=(8, 4)).astype(np.float32) * 2 + 3

    def batches():  # the same batch every step: step 1's statistics are known
        while True:
            yield first, rng.integers(0, 3, (8,)).astype(np.int32), np.ones((8,), np.float32)

    momentum = 0.75
    model = tl.Serial(tl.Dense(4), tl.BatchNorm(axis=(0,), momentum=momentum), tl.Relu(),
                      tl.Dense(3), tl.LogSoftmax())
    task = training.TrainTask(batches(), tl.CrossEntropyLoss(), trax.optimizers.SGD(0.1))
    loop = training.Loop(model, task, output_dir=None, stdout=io.StringIO())
    dense = model.sublayers[0]
    w0 = [np.asarray(a) for a in dense.weights]
    loop.run(1)
    mean, var, n_batches = model.state[1]
    h = first.astype(np.float64) @ w0[0] + w0[1]
    np.testing.assert_allclose(mean, (1 - momentum) * h.mean(0, keepdims=True),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var, momentum + (1 - momentum) * h.var(0, keepdims=True),
                               rtol=1e-4)
    assert int(n_batches) == 1
    loop.run(2)
    assert int(model.state[1][2]) == 3
    # The eval copy gets the running statistics too (its old arrays were donated).
    for a, b in zip(loop.eval_model.state[1], model.state[1]):
        np.testing.assert_array_equal(a, b)
    y = np.asarray(loop.eval_model(first))
    np.testing.assert_array_equal(y, np.asarray(loop.eval_model(first)))


# -- FilterResponseNorm ------------------------------------------------------------------------


def test_filter_response_norm_layout_and_values():
    frn = tl.FilterResponseNorm()
    assert str(frn) == "FilterResponseNorm" and frn.mode is None
    x = images(2, 3, 4, 5)
    (gamma, beta, epsilon_l), state = frn.init(shapes.signature(x))
    assert gamma.shape == beta.shape == (5,) and epsilon_l == () and state == ()
    gamma, beta = images(5), images(5)
    frn.weights = (gamma, beta, ())
    x64 = x.astype(np.float64)
    nu2 = (x64**2).mean((1, 2), keepdims=True)
    np.testing.assert_allclose(frn(x), gamma * x64 / np.sqrt(nu2 + 1e-6) + beta, rtol=1e-5,
                               atol=1e-5)


def test_filter_response_norm_with_a_learned_epsilon():
    frn = tl.FilterResponseNorm(mode="train", learn_epsilon=True, init_epsilon=0.5,
                                init_learnt_epsilon=0.25)
    x = images(1, 2, 2, 1, scale=0.1, shift=0.0)
    (gamma, beta, epsilon_l), _ = frn.init(shapes.signature(x))
    assert isinstance(epsilon_l, tuple) and len(epsilon_l) == 1
    assert epsilon_l[0].shape == () and float(epsilon_l[0]) == 0.25
    frn.weights = (gamma, beta, (jnp.array(-1.0, jnp.float32),))  # epsilon = 0.5 + |-1.0|
    x64 = x.astype(np.float64)
    expected = x64 / np.sqrt((x64**2).mean((1, 2), keepdims=True) + 1.5)
    np.testing.assert_allclose(frn(x), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="init_epsilon and init_learnt_epsilon must be > 0"):
        tl.FilterResponseNorm(init_epsilon=0.0)
