"""tl.PrintShape and tl.SummaryScalar (Trax 1.4.1 core): pass-through layers that report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def test_print_shape_prints_and_passes_through(capsys):
    layer = tl.PrintShape(msg="here")
    assert str(layer) == "PrintShape_1" and (layer.n_in, layer.n_out) == (1, 1)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(layer(x), x)
    assert capsys.readouterr().out == "PrintShape: here: [(2, 3)[float32]]\n"


def test_print_shape_several_inputs_and_under_jit(capsys):
    layer = tl.PrintShape(n_in=2)
    assert (layer.n_in, layer.n_out) == (2, 2)
    a, b = np.zeros((3,), np.int32), np.ones((1, 2), np.float32)
    f = jax.jit(lambda a, b: layer.pure_fn((a, b), (), (), None)[0])
    out = f(a, b)
    out = f(a, b)   # compiled: no second print
    np.testing.assert_array_equal(out[0], a)
    np.testing.assert_array_equal(out[1], b)
    assert capsys.readouterr().out == "PrintShape: : [(3,)[int32], (1, 2)[float32]]\n"


def test_summary_scalar_state_and_values():
    layer = tl.SummaryScalar("test")
    assert str(layer) == "summary_test" and (layer.n_in, layer.n_out) == (1, 1)
    x = np.array([[3.0, 5.0], [2.0, 6.0]], np.float32)
    weights, state = layer.init(shapes.signature(x))
    assert weights == () and list(state) == ["summary_test"]
    assert state["summary_test"].item() == 0.0
    assert layer(x).tolist() == [[3.0, 5.0], [2.0, 6.0]]
    assert layer.state["summary_test"].item() == 4.0
    biggest = tl.SummaryScalar("max", aggregation_fun=jnp.max)
    biggest.init(shapes.signature(x))
    y, new_state = jax.jit(biggest.pure_fn)(x, (), biggest.state, None)
    np.testing.assert_array_equal(y, x)
    assert new_state["summary_max"].item() == 6.0


def test_summary_scalar_inside_a_model():
    model = tl.Serial(tl.Dense(2), tl.SummaryScalar("act"), tl.Relu())
    x = np.array([[1.0, -2.0]], np.float32)
    model.init(shapes.signature(x))
    model.sublayers[0].weights = (np.eye(2, dtype=np.float32), np.zeros(2, np.float32))
    assert model(x).tolist() == [[1.0, 0.0]]
    assert model.state[1]["summary_act"].item() == -0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_in must be a positive int; got 0"):
        tl.PrintShape(n_in=0)
    with pytest.raises(ValueError, match="name must be a non-empty str"):
        tl.SummaryScalar("")
    layer = tl.SummaryScalar("rows", aggregation_fun=lambda x: x.sum(axis=0))
    layer.init(shapes.ShapeDtype((2, 3)))
    with pytest.raises(tl.LayerError, match=r"must reduce its input to a scalar; it returned "
                                            r"shape \(3,\)"):
        layer(np.ones((2, 3), np.float32))
