"""LayerNorm and RMSNorm (TRAX_REFERENCE §3.3)."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes

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
