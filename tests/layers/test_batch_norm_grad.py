"""BatchNorm's train-mode gradient (a closed form, not the chain rule) against float64 differences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes

RNG = np.random.default_rng(11)
EPS = 1e-5


def reference(x, gamma, beta, axes):
    """The textbook formula in NumPy float64."""
    mean = np.mean(x, axes, keepdims=True)
    var = np.mean((x - mean) ** 2, axes, keepdims=True)
    expand = tuple(None if i in axes else slice(None) for i in range(x.ndim))
    return (x - mean) / np.sqrt(var + EPS) * gamma[expand] + beta[expand]


def numeric_grads(f, args, h=1e-6):
    """Central differences of the float64 scalar ``f(*args)`` for every argument."""
    args = [np.array(a, np.float64) for a in args]
    grads = []
    for a in args:
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            up = f(*args)
            a[i] = old - h
            down = f(*args)
            a[i] = old
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


def layer_fn(bn, x, gamma, beta):
    (y, _state) = bn.pure_fn(x, (beta, gamma), bn.state, bn.rng)
    return y


@pytest.mark.parametrize("shape, axis", [((3, 2, 2, 2), (0, 1, 2)), ((3, 4, 2), (0, 2))])
def test_gradients_match_float64_central_differences(shape, axis):
    x = (RNG.normal(size=shape) * 2.0 + 0.5).astype(np.float32)
    bn = tl.BatchNorm(axis=axis, epsilon=EPS, mode="train")
    bn.init(shapes.ShapeDtype(shape))
    kept = bn.weights[0].shape
    gamma = (RNG.normal(size=kept) + 1.0).astype(np.float32)
    beta = RNG.normal(size=kept).astype(np.float32)
    probe = RNG.normal(size=shape)       # a random cotangent: loss = sum(y * probe)

    def loss(x, gamma, beta):
        return jnp.sum(layer_fn(bn, x, gamma, beta) * probe.astype(np.float32))

    got = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, gamma, beta)
    axes = tuple(sorted(a % len(shape) for a in axis))
    want = numeric_grads(lambda *a: np.sum(reference(*a, axes) * probe), (x, gamma, beta))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, np.asarray(w), rtol=2e-4, atol=2e-5)


def test_gradient_without_center_or_scale():
    x = (RNG.normal(size=(6, 2)) * 3.0).astype(np.float32)
    bn = tl.BatchNorm(axis=(0,), center=False, scale=False, mode="train")
    bn.init(shapes.ShapeDtype(x.shape))
    probe = RNG.normal(size=x.shape).astype(np.float32)

    def loss(x):
        y, _ = bn.pure_fn(x, bn.weights, bn.state, bn.rng)
        return jnp.sum(y * probe)

    got = jax.jit(jax.grad(loss))(x)
    (want,) = numeric_grads(
        lambda x: np.sum(reference(x, np.ones(2), np.zeros(2), (0,)) * probe), (x,))
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)

    # The batch statistics feed only the state: no gradient reaches x through them.
    def state_loss(x):
        _, (mean, var, _) = bn.pure_fn(x, bn.weights, bn.state, bn.rng)
        return jnp.sum(mean) + jnp.sum(var)
    np.testing.assert_array_equal(jax.jit(jax.grad(state_loss))(x), np.zeros_like(x))
