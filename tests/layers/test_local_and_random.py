"""tl.LocallyConnected1d, tl.RandomUniform and tl.apply_broadcasted_dropout (Trax 1.4.1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random

# -- LocallyConnected1d ----------------------------------------------------------------


def local_reference(x, w, b, padding):
    """float64 loops over the documented sums (module docstring of locally_connected)."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    length, k_size, _, filters = w.shape
    half = (k_size - 1) // 2
    n_out = length - k_size + 1 if padding == "VALID" else length
    out = np.zeros(x.shape[:-2] + (n_out, filters))
    for o in range(n_out):
        for k in range(k_size):
            if padding == "VALID":
                pos = o + k_size - 1 - k
            else:
                pos = o + k - half
                if padding == "WRAP":
                    pos %= length
                elif not 0 <= pos < length:
                    continue
            out[..., o, :] += x[..., pos, :] @ w[pos, k]
    return out if b is None else out + np.asarray(b, np.float64)


@pytest.mark.parametrize("padding, want", [
    ("SAME", [28.0, 94.0, 88.0]),
    ("WRAP", [91.0, 94.0, 91.0]),
    ("VALID", [90.0]),
])
def test_locally_connected_values_by_hand(padding, want):
    # w[l, k] = 10 l + k + 1 on one feature: each position, each tap its own weight.
    layer = tl.LocallyConnected1d(1, 3, use_bias=False, padding=padding)
    layer.init(shapes.ShapeDtype((3, 1)))
    layer.weights = np.array([[1, 2, 3], [11, 12, 13], [21, 22, 23]],
                             np.float32).reshape(3, 3, 1, 1)
    # SAME, out[0] = x0 w[0,1] + x1 w[1,2] = 2 + 26; out[1] = 1 + 24 + 69; out[2] = 22 + 66.
    # WRAP adds x2 w[2,0] = 63 to out[0] and x0 w[0,2] = 3 to out[2].
    # VALID reads right to left: out[0] = x2 w[2,0] + x1 w[1,1] + x0 w[0,2] = 63 + 24 + 3.
    y = layer(np.array([[1.0], [2.0], [3.0]], np.float32))
    assert y[:, 0].tolist() == want


@pytest.mark.parametrize("padding", ["SAME", "WRAP", "VALID"])
@pytest.mark.parametrize("kernel_size, length", [(1, 4), (3, 5), (5, 5), (5, 3), (7, 9)])
def test_locally_connected_matches_numpy(padding, kernel_size, length):
    if padding == "VALID" and length < kernel_size:
        return
    rng = np.random.default_rng(kernel_size * 10 + length)
    layer = tl.LocallyConnected1d(3, kernel_size, padding=padding)
    x = rng.normal(size=(2, length, 4)).astype(np.float32)
    (w, b), state = layer.init(shapes.signature(x))
    n_out = length - kernel_size + 1 if padding == "VALID" else length
    assert w.shape == (length, kernel_size, 4, 3) and b.shape == (n_out, 3) and state == ()
    w = rng.normal(size=w.shape).astype(np.float32)
    b = rng.normal(size=b.shape).astype(np.float32)
    layer.weights = (w, b)
    y = layer(x)
    np.testing.assert_allclose(y, local_reference(x, w, b, padding), rtol=1e-5, atol=1e-5)
    y_jit, _ = jax.jit(layer.pure_fn)(x, layer.weights, (), None)
    np.testing.assert_allclose(y_jit, y, rtol=1e-6, atol=1e-6)


def test_locally_connected_trax_shapes_with_integer_inputs():
    x = np.array([[0, 1], [2, 3], [4, 5]])   # (L=3, D=2), ints, as in Trax's test
    for kernel_size, padding, length in [(1, "WRAP", 3), (1, "SAME", 3), (1, "VALID", 3),
                                         (3, "WRAP", 3), (3, "SAME", 3), (3, "VALID", 1)]:
        layer = tl.LocallyConnected1d(6, kernel_size, padding=padding)
        layer.init(shapes.signature(x))
        y = layer(x)
        assert y.shape == (length, 6) and y.dtype == jnp.float32


def test_locally_connected_leading_axes_name_and_no_bias():
    layer = tl.LocallyConnected1d(2, 3, padding="SAME", use_bias=False)
    assert str(layer) == "LocallyConnected1d_2_3" and (layer.n_in, layer.n_out) == (1, 1)
    w, _ = layer.init(shapes.ShapeDtype((2, 3, 4, 5)))
    assert isinstance(w, jax.Array) and w.shape == (4, 3, 5, 2)
    x = np.random.default_rng(1).normal(size=(2, 3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(layer(x), local_reference(x, w, None, "SAME"), rtol=1e-5,
                               atol=1e-5)


def test_locally_connected_init_is_seeded_and_glorot():
    sig = shapes.ShapeDtype((2, 6, 8))
    (w1, b1), _ = tl.LocallyConnected1d(4, 3).init(sig, rng=random.get_prng(5))
    (w2, b2), _ = tl.LocallyConnected1d(4, 3).init(sig, rng=random.get_prng(5))
    (w3, _), _ = tl.LocallyConnected1d(4, 3).init(sig, rng=random.get_prng(6))
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.array_equal(w1, w3)
    # Glorot-uniform with fans D_in = 8 and filters = 4: |w| <= sqrt(6 / 12).
    assert np.abs(w1).max() <= np.sqrt(0.5) and np.abs(w1).max() > 0.5
    assert np.abs(b1).max() < 1e-4   # Normal(0, 1e-6)


def test_locally_connected_bad_input_and_arguments():
    with pytest.raises(ValueError, match="kernel_size must be odd .*; got 2"):
        tl.LocallyConnected1d(4, 2)
    with pytest.raises(ValueError, match="padding must be one of .*; got 'same'"):
        tl.LocallyConnected1d(4, 3, padding="same")
    with pytest.raises(ValueError, match="filters must be a positive int; got 0"):
        tl.LocallyConnected1d(0, 3)
    layer = tl.LocallyConnected1d(4, 3, padding="SAME")
    with pytest.raises(tl.LayerError, match=r"at least 2 axes; got shape \(5,\)"):
        layer.init(shapes.ShapeDtype((5,)))
    with pytest.raises(tl.LayerError, match="needs at least kernel_size=5 positions"):
        tl.LocallyConnected1d(4, 5).init(shapes.ShapeDtype((2, 3, 1)))
    layer.init(shapes.ShapeDtype((2, 5, 3)))
    with pytest.raises(tl.LayerError, match=r"initialized for 5 positions of 3 features .* got "
                                            r"inputs of shape \(2, 6, 3\)"):
        layer(np.zeros((2, 6, 3), np.float32))
    with pytest.raises(tl.LayerError, match=r"got inputs of shape \(2, 5, 4\)"):
        layer(np.zeros((2, 5, 4), np.float32))


# -- RandomUniform ----------------------------------------------------------------------


def test_random_uniform_layout_range_and_keys():
    layer = tl.RandomUniform(1.0, 2.0, shape=(1000,))
    assert str(layer) == "RandomUniform_in0" and (layer.n_in, layer.n_out) == (0, 1)
    weights, state = layer.init(())
    assert weights == () and state == ()
    a, _ = layer.pure_fn((), (), (), random.get_prng(0))
    b, _ = layer.pure_fn((), (), (), random.get_prng(0))
    c, _ = layer.pure_fn((), (), (), random.get_prng(1))
    np.testing.assert_array_equal(a, b)      # same key, same values
    assert not np.array_equal(a, c)          # another key, other values
    assert a.shape == (1000,) and a.dtype == jnp.float32
    assert a.min() >= 1.0 and a.max() < 2.0
    # Uniform on [1, 2): mean 1.5, sd 1/sqrt(12); 1000 draws, 6 standard errors.
    assert abs(float(a.mean()) - 1.5) < 6 * 0.2887 / np.sqrt(1000)
    jitted, _ = jax.jit(layer.pure_fn)((), (), (), random.get_prng(0))
    np.testing.assert_array_equal(jitted, a)


def test_random_uniform_defaults_and_dtype():
    layer = tl.RandomUniform()
    layer.init(())
    y = layer(())
    assert y.shape == () and 0.0 <= float(y) < 1.0
    half = tl.RandomUniform(shape=(2, 3), dtype=jnp.bfloat16)
    half.init(())
    assert half(()).dtype == jnp.bfloat16 and half(()).shape == (2, 3)


def test_random_uniform_in_a_model_draws_from_the_step_key():
    model = tl.Serial(tl.RandomUniform(shape=(3,)), tl.Add())   # x + noise
    model.init(shapes.ShapeDtype((3,)))
    x = np.zeros(3, np.float32)
    y1, _ = model.pure_fn(x, model.weights, model.state, random.get_prng(2))
    y2, _ = model.pure_fn(x, model.weights, model.state, random.get_prng(2))
    y3, _ = model.pure_fn(x, model.weights, model.state, random.get_prng(3))
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(y1, y3)


def test_random_uniform_errors():
    layer = tl.RandomUniform()
    layer.init(())
    with pytest.raises(tl.LayerError, match="needs a key; pass rng=... to pure_fn"):
        layer.pure_fn((), (), (), None)
    with pytest.raises(ValueError, match="dtype must be a floating dtype .* got int32"):
        tl.RandomUniform(dtype=jnp.int32)
    with pytest.raises(ValueError, match="min_val must be smaller than max_val"):
        tl.RandomUniform(2.0, 1.0)
    with pytest.raises(ValueError, match="shape must be a tuple of ints; got 5"):
        tl.RandomUniform(shape=5)


# -- apply_broadcasted_dropout -------------------------------------------------------------


def test_broadcasted_dropout_shares_one_mask_over_rows():
    x = np.arange(1, 1 + 8 * 2000, dtype=np.float32).reshape(8, 2000)
    y = tl.apply_broadcasted_dropout(x, 0.25, random.get_prng(4))
    kept = np.asarray(y[0] != 0)
    np.testing.assert_array_equal(np.asarray(y != 0), np.broadcast_to(kept, x.shape))
    np.testing.assert_allclose(np.asarray(y)[:, kept], x[:, kept] / 0.75, rtol=1e-6)
    # 2000 Bernoulli(0.75) features: 4 standard deviations is about 77.
    assert abs(int(kept.sum()) - 1500) < 80
    again = tl.apply_broadcasted_dropout(x, 0.25, random.get_prng(4))
    np.testing.assert_array_equal(again, y)
    jitted = jax.jit(tl.apply_broadcasted_dropout, static_argnums=1)(x, 0.25, random.get_prng(4))
    np.testing.assert_array_equal(jitted, y)


def test_broadcasted_dropout_rate_zero_and_errors():
    x = np.ones((2, 3), np.float32)
    assert tl.apply_broadcasted_dropout(x, 0.0, None) is x
    with pytest.raises(ValueError, match="needs an rng"):
        tl.apply_broadcasted_dropout(x, 0.5, None)
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\); got 1.0"):
        tl.apply_broadcasted_dropout(x, 1.0, random.get_prng(0))
