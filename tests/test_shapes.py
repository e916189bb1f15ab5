"""retrax.shapes (TRAX_REFERENCE §8)."""

from __future__ import annotations

import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from retrax import shapes
from retrax.shapes import ShapeDtype


def test_shape_dtype_repr_and_defaults():
    sd = ShapeDtype((2, 3))
    assert repr(sd) == "ShapeDtype{shape:(2, 3), dtype:<class 'numpy.float32'>}"
    assert sd.dtype is np.float32 and sd.shape == (2, 3)
    assert repr(ShapeDtype((4,), np.dtype("int32"))) == "ShapeDtype{shape:(4,), dtype:int32}"


def test_shape_dtype_list_shape_becomes_tuple_and_bad_shapes_raise():
    assert ShapeDtype([2, 3]).shape == (2, 3)
    with pytest.raises(TypeError, match="shape must be tuple or list; got: 5"):
        ShapeDtype(5)
    with pytest.raises(TypeError, match="shape must be tuple or list"):
        ShapeDtype(np.zeros(3))


def test_shape_dtype_equality_length_and_helpers():
    assert ShapeDtype((2,)) == ShapeDtype((2,), np.dtype("float32"))
    assert ShapeDtype((2,)) != ShapeDtype((2,), np.int32)
    assert ShapeDtype((2,)) != ShapeDtype((3,))
    assert ShapeDtype((2,)) != (2,)
    assert len(ShapeDtype((2, 3))) == 1
    assert ShapeDtype((2, 3), np.int32).as_tuple() == ((2, 3), np.int32)
    assert ShapeDtype((2, 3)).replace(shape=(4,)) == ShapeDtype((4,))
    assert ShapeDtype((2, 3)).replace(dtype=np.int32).dtype is np.int32
    with pytest.raises(TypeError, match="unknown fields"):
        ShapeDtype((2,)).replace(size=3)
    assert len({ShapeDtype((2,)), ShapeDtype((2,), np.dtype("float32"))}) == 1


def test_shape_dtype_pickles():
    sd = ShapeDtype((2, 3), np.int32)
    assert pickle.loads(pickle.dumps(sd)) == sd


def test_signature_of_arrays_and_containers():
    a = np.zeros((2, 3), np.int32)
    b = jnp.ones((4,))
    assert shapes.signature(a) == ShapeDtype((2, 3), np.int32)
    assert repr(shapes.signature(a)) == "ShapeDtype{shape:(2, 3), dtype:int32}"
    assert shapes.signature((a, b)) == (ShapeDtype((2, 3), np.int32), ShapeDtype((4,)))
    assert isinstance(shapes.signature([a]), list)
    assert shapes.signature({"x": a, "y": [b]}) == {
        "x": ShapeDtype((2, 3), np.int32),
        "y": [ShapeDtype((4,))],
    }
    sd = ShapeDtype((1,))
    assert shapes.signature(sd) is sd


def test_splice_signatures():
    a, b, c = ShapeDtype((1,)), ShapeDtype((2,)), ShapeDtype((3,))
    assert shapes.splice_signatures(a, (b, c)) == (a, b, c)
    assert shapes.splice_signatures((a,)) == a
    assert shapes.splice_signatures() == ()


def test_assert_shape_helpers():
    shapes.assert_shape_equals(np.zeros((2, 3)), (2, 3))
    with pytest.raises(AssertionError, match=r"Invalid shape \(2, 3\); expected \(3, 2\)"):
        shapes.assert_shape_equals(np.zeros((2, 3)), (3, 2))
    shapes.assert_same_shape(np.zeros(2), np.ones(2))
    with pytest.raises(AssertionError):
        shapes.assert_same_shape(np.zeros(2), np.ones(3))
