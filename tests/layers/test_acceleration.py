"""tl.Accelerate: compiled, batch split over devices, same outputs as the layer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def _model():
    model = tl.Serial(tl.Dense(5), tl.Relu(), tl.Dense(3), tl.LogSoftmax())
    model.init(shapes.ShapeDtype((2, 4)))
    return model


def test_one_device_equals_the_layer_and_needs_no_init():
    model = _model()
    fast = tl.Accelerate(model)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(fast(x), model(x), rtol=1e-6)
    assert fast.sublayer is model
    # Inside a model it is the layer itself (the outer program is compiled once).
    outer = tl.Serial(tl.Accelerate(tl.Dense(4)), tl.Dense(2))
    w, s = outer.init(shapes.signature(x))
    y, _ = jax.jit(outer.pure_fn)(x, w, s, None)
    np.testing.assert_allclose(y, outer(x), rtol=1e-6)
    assert np.allclose(tl.mean_or_pmean(1, np.array([1.0, 3.0])), 2.0)


def test_replicate_weights_sets_the_sublayers():
    model = _model()
    fast = tl.Accelerate(model)
    other = _model()
    other.init(shapes.ShapeDtype((2, 4)), rng=jax.random.PRNGKey(9))
    fast.replicate_weights(other.weights)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(fast(x), other(x), rtol=1e-6)


def test_bad_device_counts_are_refused():
    with pytest.raises(ValueError, match=r"n_devices must be an int in \[1, 1\]"):
        tl.Accelerate(tl.Dense(2), n_devices=2)
    with pytest.raises(TypeError, match="layer must be a Layer"):
        tl.Accelerate("dense")


SPLIT = textwrap.dedent("""
    import numpy as np
    from retrax import layers as tl, shapes
    model = tl.Serial(tl.Dense(5), tl.Relu(), tl.Dense(3))
    model.init(shapes.ShapeDtype((2, 4)))
    fast = tl.Accelerate(model, n_devices=4)
    x = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)  # padded to 8
    y = fast(x)
    assert y.shape == (6, 3), y.shape
    np.testing.assert_allclose(y, model(x), rtol=1e-5, atol=1e-6)
    y8 = fast(np.concatenate([x, x[:2]]))
    assert len(y8.sharding.device_set) == 4, y8.sharding
    print("ok")
""")


def test_four_devices_split_the_batch_and_pad_it():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SPLIT], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
