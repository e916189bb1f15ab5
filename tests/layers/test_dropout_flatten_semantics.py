"""tl.Dropout and tl.Flatten against Trax 1.4.1's semantics (shared_axes, dtypes, ranks)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random


def dropped(layer, x, seed=0):
    _, state = layer.init(None)
    return np.asarray(layer.pure_fn(x, (), state, random.get_prng(seed))[0])


def test_shared_axes_negative_and_several():
    y = dropped(tl.Dropout(0.5, shared_axes=[-1, 0]), np.ones((3, 40, 5), np.float32))
    # One mask value per position of axis 1, shared over axes 0 and 2.
    np.testing.assert_array_equal(y, np.broadcast_to(y[:1, :, :1], y.shape))
    assert set(np.unique(y).tolist()) == {0.0, 2.0}


def test_shared_axis_out_of_range_is_named():
    with pytest.raises(tl.LayerError, match=r"shared_axes \[3\] name axis 3, but the input "
                                            r"has 3 axes \(shape \(3, 4, 5\)\)"):
        dropped(tl.Dropout(0.5, shared_axes=[3]), np.ones((3, 4, 5), np.float32))


def test_integer_inputs_are_scaled_as_floats():
    # Trax multiplies by a float mask, so ints come out as floats: 1 / 0.8 = 1.25 exactly.
    y = dropped(tl.Dropout(0.2), np.ones((50, 40), np.int32))
    assert y.dtype == np.float32 and set(np.unique(y).tolist()) == {0.0, 1.25}


def test_low_precision_floats_keep_their_dtype():
    _, state = tl.Dropout(0.5).init(None)
    y = tl.Dropout(0.5).pure_fn(jnp.ones((4, 8), jnp.bfloat16), (), state, random.get_prng(1))[0]
    assert y.dtype == jnp.bfloat16 and set(np.unique(np.asarray(y, np.float32))) <= {0.0, 2.0}


def test_mode_is_decided_when_the_layer_runs():
    model = tl.Serial(tl.Dropout(0.5))
    x = np.ones((20, 20), np.float32)
    model.init(shapes.signature(x))
    train = np.asarray(model.pure_fn(x, model.weights, model.state, random.get_prng(0))[0])
    assert (train == 0).any()
    evaluated = tl.with_mode(model, "eval")
    np.testing.assert_array_equal(
        evaluated.pure_fn(x, evaluated.weights, evaluated.state, random.get_prng(0))[0], x)


def test_flatten_trax_cases():
    x = np.arange(120, dtype=np.float32).reshape(1, 2, 3, 4, 5)
    assert tl.Flatten()(x).shape == (1, 120)
    np.testing.assert_array_equal(tl.Flatten(n_axes_to_keep=3)(x), x.reshape(1, 2, 3, 20))
    assert tl.Flatten(n_axes_to_keep=4)(x).shape == (1, 2, 3, 4, 5)   # keeps the last axis
    with pytest.raises(tl.LayerError, match="input has 5 axes"):
        tl.Flatten(n_axes_to_keep=5)(x)
