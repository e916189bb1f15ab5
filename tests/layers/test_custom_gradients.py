"""Layers that define ``has_backward``/``backward`` get exactly that gradient (Trax's hook)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


class ZeroGrad(tl.Layer):
    """Squares its input, but claims a zero gradient."""

    @property
    def has_backward(self):
        return True

    def forward(self, x):
        return x * x

    def backward(self, inputs, output, grad, weights, state, new_state, rng):
        return jnp.zeros_like(inputs), weights


class StraightThrough(tl.Layer):
    """Rounds its input (zero derivative almost everywhere); passes the gradient through."""

    @property
    def has_backward(self):
        return True

    def forward(self, x):
        return jnp.round(x)

    def backward(self, inputs, output, grad, weights, state, new_state, rng):
        return grad, weights


class ScaledWeight(tl.Layer):
    """``x * w`` with a made-up weight gradient of 10 * grad.sum()."""

    @property
    def has_backward(self):
        return True

    def init_weights_and_state(self, input_signature):
        self.weights = jnp.float32(3.0)

    def forward(self, x):
        return x * self.weights

    def backward(self, inputs, output, grad, weights, state, new_state, rng):
        return grad * weights, 10.0 * jnp.sum(grad)


def _grad(layer, x, argnums=0):
    weights, state = layer.init(shapes.signature(x))

    def loss(x, w):
        return jnp.sum(layer.pure_fn(x, w, state, None)[0])

    return jax.grad(loss, argnums=argnums)(x, weights)


def test_zero_gradient_is_honoured_eagerly_and_under_jit():
    x = np.array([1.0, -2.0, 3.0], np.float32)
    np.testing.assert_array_equal(_grad(ZeroGrad(), x), np.zeros(3))
    layer = ZeroGrad()
    _, state = layer.init(shapes.signature(x))
    g = jax.jit(jax.grad(lambda x: jnp.sum(layer.pure_fn(x, (), state, None)[0])))(x)
    np.testing.assert_array_equal(g, np.zeros(3))
    # The forward value is still the layer's own.
    np.testing.assert_array_equal(layer(x), x * x)


def test_straight_through_gradient_is_the_identity():
    x = np.array([0.2, 1.7, -0.4], np.float32)
    np.testing.assert_array_equal(_grad(StraightThrough(), x), np.ones(3))


def test_weight_gradient_comes_from_backward():
    x = np.array([1.0, 2.0], np.float32)
    gx, gw = _grad(ScaledWeight(), x, argnums=(0, 1))
    np.testing.assert_array_equal(gx, [3.0, 3.0])
    assert float(gw) == 20.0  # 10 * sum(ones(2)); plain autodiff would give 3.0


def test_custom_gradient_inside_a_model_stops_the_dense_weights():
    model = tl.Serial(tl.Dense(2), ZeroGrad(), tl.Dense(1))
    x = np.ones((4, 3), np.float32)
    weights, state = model.init(shapes.signature(x))

    def loss(w):
        return jnp.sum(model.pure_fn(x, w, state, None)[0])

    grads = jax.jit(jax.grad(loss))(weights)
    np.testing.assert_array_equal(grads[0][0], np.zeros((3, 2)))
    np.testing.assert_array_equal(grads[0][1], np.zeros(2))
    assert np.any(np.asarray(grads[2][0]) != 0)  # The last Dense still learns.


def test_backward_with_the_wrong_structure_is_refused():
    class Bad(ZeroGrad):
        def backward(self, inputs, output, grad, weights, state, new_state, rng):
            return (jnp.zeros_like(inputs),)

    with pytest.raises(ValueError, match=r"Bad.backward must return \(inputs_grad, weights_grad\)"):
        _grad(Bad(), np.ones(2, np.float32))

    class BadShape(ZeroGrad):
        def backward(self, inputs, output, grad, weights, state, new_state, rng):
            return (inputs, inputs), weights

    with pytest.raises(ValueError, match="inputs_grad whose structure"):
        _grad(BadShape(), np.ones(2, np.float32))


def test_has_backward_without_backward_says_what_is_missing():
    class Missing(tl.Layer):
        @property
        def has_backward(self):
            return True

        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="does not define backward"):
        _grad(Missing(), np.ones(2, np.float32))
