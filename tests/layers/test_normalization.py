"""LayerNorm and RMSNorm (TRAX_REFERENCE §3.3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.layers import normalization

X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def test_layer_norm_weights_are_scale_and_bias():
    ln = tl.LayerNorm()
    assert str(ln) == "LayerNorm" and (ln.n_in, ln.n_out) == (1, 1)
    (scale, bias), state = ln.init(shapes.ShapeDtype((1, 4)))
    assert scale.tolist() == [1.0] * 4 and bias.tolist() == [0.0] * 4 and state == ()
    assert scale.dtype == np.float32


def test_layer_norm_exact():
    ln = tl.LayerNorm()
    ln.init(shapes.signature(X))
    # mean 2.5, centered [-1.5, -0.5, 0.5, 1.5], biased variance 1.25.
    centered = np.array([-1.5, -0.5, 0.5, 1.5])
    np.testing.assert_allclose(ln(X)[0], centered / np.sqrt(1.25 + 1e-6), rtol=1e-6)
    ln.weights = (
        np.array([1.0, 2.0, 1.0, 2.0], np.float32),
        np.array([0.0, 0.0, 1.0, 1.0], np.float32),
    )
    expected = centered / np.sqrt(1.25 + 1e-6) * [1, 2, 1, 2] + [0, 0, 1, 1]
    np.testing.assert_allclose(ln(X)[0], expected, rtol=1e-6)


def test_layer_norm_without_centering():
    ln = tl.LayerNorm(center=False, epsilon=1e-3)
    (scale, bias), _ = ln.init(shapes.signature(X))
    assert bias.shape == (4,)  # The bias weight exists but is unused.
    ln.weights = (np.full(4, 2.0, np.float32), np.full(4, 100.0, np.float32))
    mean_square = (1 + 4 + 9 + 16) / 4
    np.testing.assert_allclose(ln(X)[0], X[0] / np.sqrt(mean_square + 1e-3) * 2.0, rtol=1e-6)


def test_layer_norm_follows_the_input_dtype():
    (scale, bias), _ = tl.LayerNorm().init(shapes.ShapeDtype((2, 3), np.float16))
    assert scale.dtype == np.float16 and bias.dtype == np.float16


def test_layer_norm_width_mismatch():
    ln = tl.LayerNorm()
    ln.init(shapes.ShapeDtype((1, 4)))
    with pytest.raises(tl.LayerError, match="initialized for inputs whose last axis is 4"):
        ln(np.ones((1, 3), np.float32))


def test_rms_norm_exact():
    rms = tl.RMSNorm()
    assert str(rms) == "RMSNorm"
    scale, _ = rms.init(shapes.signature(X))
    assert scale.shape == (4,)
    rms.weights = np.array([1.0, 1.0, 2.0, 2.0], np.float32)
    expected = X[0] / np.sqrt(7.5 + 1e-6) * [1, 1, 2, 2]
    np.testing.assert_allclose(rms(X)[0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        tl.RMSNorm(epsilon=-1.0)


# --------------------------------------------------------------------------
# Small float32 inputs (decoding steps): means from compensated_sum_last
# --------------------------------------------------------------------------


def _layer_norm64(x, eps=1e-6):
    x = np.asarray(x, np.float64)
    c = x - x.mean(-1, keepdims=True)
    return c / np.sqrt((c * c).mean(-1, keepdims=True) + eps)


def _by_both_paths(monkeypatch, fn, *args, size):
    """``fn(*args)`` jitted with LayerNorm's small-input path (inputs of ``size``), then
    with the jnp.mean path; the limit is restored after each (a fresh trace each time)."""
    out = []
    for limit in (size, 0):
        with monkeypatch.context() as m:
            m.setattr(normalization, "SMALL_LAYER_NORM", limit)
            out.append(jax.jit(lambda *a: fn(*a))(*args))
    return out


def _small_and_large(monkeypatch, x, center=True):
    """LayerNorm of ``x`` by the small-input path and by the jnp.mean path."""
    ln = tl.LayerNorm(center=center)
    ln.init(shapes.ShapeDtype(x.shape))
    return [np.asarray(y) for y in _by_both_paths(monkeypatch, ln, x, size=x.size)]


def test_small_layer_norm_is_at_least_as_accurate(monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((8, 1, 256)).astype(np.float32)
    outlier = base.copy()
    outlier[..., 0] *= 60  # an outlier feature
    for name, x, bound in [("normal", base, 1e-6), ("outlier", outlier, 1e-6),
                           ("outlier + 100", outlier + 100, 1e-6),
                           ("+ 1000", base + 1000, 2e-5)]:
        ref = _layer_norm64(x)
        small, large = _small_and_large(monkeypatch, x)
        err_small, err_large = (np.max(np.abs(y - ref)) / np.max(np.abs(ref))
                                for y in (small, large))
        assert err_small < bound, name
        assert err_small <= err_large * 1.01, (name, err_small, err_large)
    # A constant row normalizes to exactly 0 (the plain mean is off by a rounding).
    const = np.full((1, 1, 256), 3.3, np.float32)
    assert not _small_and_large(monkeypatch, const)[0].any()


def test_small_layer_norm_gradients_equal_the_mean_path(monkeypatch):
    x = np.random.default_rng(1).standard_normal((2, 3, 64)).astype(np.float32) + 2.0
    for center in (True, False):
        ln = tl.LayerNorm(center=center)
        ln.init(shapes.ShapeDtype(x.shape))
        w = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32)

        def loss(v, weights, ln=ln, w=w):
            return jnp.sum(ln.pure_fn(v, weights, (), None)[0] * w)

        small, large = _by_both_paths(monkeypatch, jax.grad(loss, argnums=(0, 1)), x,
                                      ln.weights, size=x.size)
        for a, b in zip(jax.tree_util.tree_leaves(small), jax.tree_util.tree_leaves(large)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_small_layer_norm_has_no_tree_reduction(monkeypatch):
    ln = tl.LayerNorm()
    ln.init(shapes.ShapeDtype((1, 1, 256)))
    weights = ln.weights

    def text():
        return jax.jit(lambda v: ln.pure_fn(v, weights, (), None)[0]).lower(
            jax.ShapeDtypeStruct((1, 1, 256), jnp.float32)).compile().as_text()

    small = text()
    monkeypatch.setattr(normalization, "SMALL_LAYER_NORM", 0)
    large = text()
    # Each mean is one fused kernel, not a reduce-window and a reduce.
    assert "reduce-window" not in small and "reduce-window" in large
    assert small.count(" fusion(") + 2 <= large.count(" fusion(")
