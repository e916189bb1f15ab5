"""Cond's weights setter and Trax's empty weights ``()`` for a branch (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def small_cond():
    cond = tl.Fn("Below3", lambda x: x < 3.0)
    true, false = tl.Dense(2), tl.Dense(2)
    layer = tl.Cond(cond, true, false)
    layer.init(shapes.signature((np.array(1.0), np.zeros(3, np.float32))))
    return layer, true, false


def test_assigning_branch_weights_reaches_the_branches():
    layer, true, false = small_cond()
    w = (np.ones((3, 2), np.float32), np.full(2, 0.5, np.float32))
    layer.weights = ((), true.weights, w)
    np.testing.assert_array_equal(false.weights[0], w[0])
    x = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(layer((np.array(5.0), x)), np.full(2, 6.5))  # false: x @ 1 + .5


def test_empty_weights_for_a_branch_empty_it_until_init():
    layer, true, false = small_cond()
    never_initialized = tl.Dense(2)
    layer.weights = ((), true.weights, never_initialized.weights)  # Trax's ()
    assert false.weights == () and layer.weights[2] == ()
    assert layer.weights[1][0].shape == (3, 2)
    x = np.array([1.0, 2.0, 3.0], np.float32)
    with pytest.raises(Exception, match=r"Cond_in2\[2\] > Dense"):  # running it names the branch
        layer((np.array(5.0), x))
    layer.init(shapes.signature((np.array(1.0), x)))
    assert false.weights[0].shape == (3, 2)


def test_wrong_shapes_are_still_refused_next_to_an_empty_branch():
    layer, true, _ = small_cond()
    with pytest.raises(ValueError, match=r"at \[1\]\[0\] expected shape \(3, 2\), got \(4, 2\)"):
        layer.weights = ((), (np.ones((4, 2)), np.ones(2)), ())
    np.testing.assert_array_equal(layer.weights[1][0], true.weights[0])  # nothing assigned
    with pytest.raises(ValueError, match="Number of weight elements"):
        layer.weights = ((), ())
