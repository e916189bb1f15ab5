"""Initializers (TRAX_REFERENCE §3.5): shapes, ranges and statistics with fixed seeds."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax.fastmath import random
from retrax.layers import initializers as init

RNG = random.get_prng(0)
SHAPE = (300, 200)  # fan_in 300, fan_out 200


def test_random_normal():
    w = np.asarray(init.RandomNormalInitializer(0.5)(SHAPE, RNG))
    assert w.shape == SHAPE and w.dtype == np.float32
    assert w.std() == pytest.approx(0.5, rel=0.02) and abs(w.mean()) < 0.01
    assert np.asarray(init.RandomNormalInitializer()((), RNG)).shape == ()


def test_random_uniform():
    w = np.asarray(init.RandomUniformInitializer(2.0)(SHAPE, RNG))
    assert w.min() >= -2.0 and w.max() < 2.0 and w.max() > 1.99
    assert w.std() == pytest.approx(2.0 / np.sqrt(3.0), rel=0.02)


def test_glorot_uniform_limit():
    w = np.asarray(init.GlorotUniformInitializer()(SHAPE, RNG))
    limit = np.sqrt(6.0 / (300 + 200))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert w.std() == pytest.approx(limit / np.sqrt(3.0), rel=0.02)


def test_glorot_normal_and_lecun_and_kaiming_std():
    cases = [
        (init.GlorotNormalInitializer(), np.sqrt(2.0 / 500)),
        (init.LeCunNormalInitializer(), np.sqrt(1.0 / 300)),
        (init.KaimingNormalInitializer(), np.sqrt(2.0 / 300)),
        (init.LeCunUniformInitializer(), np.sqrt(3.0 / 300) / np.sqrt(3.0)),
        (init.KaimingUniformInitializer(), np.sqrt(6.0 / 300) / np.sqrt(3.0)),
    ]
    for initializer, std in cases:
        w = np.asarray(initializer(SHAPE, RNG))
        assert w.std() == pytest.approx(std, rel=0.02)


def test_scaled_initializer_modes_and_truncated_normal():
    fan_out = np.asarray(init.ScaledInitializer(-1, -2, 2.0, "fan_out", "uniform")(SHAPE, RNG))
    assert np.abs(fan_out).max() <= np.sqrt(3.0 * 2.0 / 200)
    trunc = np.asarray(
        init.ScaledInitializer(-1, -2, 1.0, "fan_in", "truncated_normal")(SHAPE, RNG)
    )
    # The 0.8796 correction makes the truncated normal's std sqrt(scale / fan).
    assert trunc.std() == pytest.approx(np.sqrt(1.0 / 300), rel=0.02)
    assert np.abs(trunc).max() <= 2.0 * np.sqrt(1.0 / 300) / 0.87962566103423978 + 1e-6
    vec = np.asarray(init.ScaledInitializer(-1, -2, 1.0, "fan_in", "uniform")((5000,), RNG))
    assert np.abs(vec).max() <= np.sqrt(3.0 / 5000)  # A vector's fan is its size.


def test_scaled_initializer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mode must be fan_in, fan_out or fan_avg; got 'fan'"):
        init.ScaledInitializer(-1, -2, 1.0, "fan", "uniform")
    with pytest.raises(ValueError, match="distribution must be"):
        init.ScaledInitializer(-1, -2, 1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match="scale must be > 0"):
        init.ScaledInitializer(-1, -2, 0.0, "fan_in", "uniform")
    with pytest.raises(ValueError, match="shape dimensions must be >= 0"):
        init.RandomNormalInitializer()((2, -1), RNG)


def test_initializers_are_deterministic_in_the_rng():
    glorot = init.GlorotUniformInitializer()
    np.testing.assert_array_equal(glorot((3, 4), RNG), glorot((3, 4), RNG))
    assert not np.array_equal(glorot((3, 4), RNG), glorot((3, 4), random.get_prng(1)))


def test_orthogonal():
    w = np.asarray(init.OrthogonalInitializer(stddev=2.0)((4, 4), RNG))
    np.testing.assert_allclose(w @ w.T, 4.0 * np.eye(4), atol=1e-5)


def test_initializer_from_file(tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.arange(6, dtype=np.float32).reshape(2, 3))
    w = init.InitializerFromFile(str(path))((2, 3), RNG)
    assert np.asarray(w).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError, match=r"holds shape \(2, 3\); expected \(3, 2\)"):
        init.InitializerFromFile(str(path))((3, 2), RNG)
    # The stored values come back as stored (Trax); a layer's init places them as float32.
    np.save(path, np.array([[0.0, 0.1]], np.float64))
    assert init.InitializerFromFile(str(path))((1, 2), RNG).tolist() == [[0.0, 0.1]]
    from retrax import layers as tl
    from retrax import shapes

    dense = tl.Dense(2, kernel_initializer=init.InitializerFromFile(str(path)), use_bias=False)
    w, _ = dense.init(shapes.ShapeDtype((3, 1)))
    assert w.dtype == np.float32 and np.allclose(w, [[0.0, 0.1]])


def test_initializers_are_exported_on_tl():
    assert tl.GlorotUniformInitializer is init.GlorotUniformInitializer
    assert tl.initializers is init
