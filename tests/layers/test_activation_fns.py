"""Activations (TRAX_REFERENCE §3.2) against their closed forms."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes

X = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], np.float32)
ALPHA = 1.6732632423543772848170429916717
LMBDA = 1.0507009873554804934193349852946


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


CASES = [
    ("Relu", tl.Relu, lambda x: np.maximum(x, 0.0)),
    ("ParametricRelu", lambda: tl.ParametricRelu(a=0.5), lambda x: np.maximum(0.5 * x, 0.0)),
    ("LeakyRelu", lambda: tl.LeakyRelu(a=0.1), lambda x: np.where(x >= 0, x, 0.1 * x)),
    ("Elu", tl.Elu, lambda x: np.where(x > 0, x, np.exp(x) - 1.0)),
    ("Selu", tl.Selu, lambda x: LMBDA * np.where(x > 0, x, ALPHA * (np.exp(x) - 1.0))),
    (
        "Gelu",
        tl.Gelu,
        lambda x: np.array([0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x]),
    ),
    (
        "FastGelu",
        tl.FastGelu,
        lambda x: 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3))),
    ),
    ("Sigmoid", tl.Sigmoid, sigmoid),
    ("Tanh", tl.Tanh, np.tanh),
    ("Softplus", tl.Softplus, lambda x: np.log1p(np.exp(x))),
    ("HardSigmoid", tl.HardSigmoid, lambda x: np.clip(1.0 + x, 0.0, 1.0)),
    ("HardTanh", tl.HardTanh, lambda x: np.clip(x, -1.0, 1.0)),
    ("Swish", tl.Swish, lambda x: x * sigmoid(x)),
    ("Exp", tl.Exp, np.exp),
]


@pytest.mark.parametrize("name, make, closed_form", CASES, ids=[c[0] for c in CASES])
def test_activation_matches_closed_form_and_prints_as_trax(name, make, closed_form):
    layer = make()
    assert (layer.n_in, layer.n_out) == (1, 1)
    assert str(layer) == f"Serial[\n  {name}\n]"  # Trax's assert_shape wrapper.
    np.testing.assert_allclose(layer(X), closed_form(X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_log():
    x = np.array([0.5, 1.0, 4.0], np.float32)
    np.testing.assert_allclose(tl.Log()(x), np.log(x), rtol=1e-6)


def test_gelu_is_exact_not_the_tanh_approximation():
    x = np.array([1.0], np.float32)
    assert tl.Gelu()(x).item() == pytest.approx(0.8413447, abs=1e-6)  # x * Phi(x)
    assert tl.FastGelu()(x).item() == pytest.approx(0.8411920, abs=1e-6)


def test_relu_gradient_is_zero_at_zero():
    relu = tl.Relu()
    grad = jax.grad(lambda v: relu.pure_fn(v, ((), (), ()), ((), (), ()), None)[0].sum())(X)
    assert grad.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_glu_splits_the_last_axis():
    glu = tl.Glu()
    assert str(glu) == "Serial[\n  Glu\n]"
    x = np.array([[1.0, 2.0, 0.0, -1.0]], np.float32)
    np.testing.assert_allclose(glu(x), [[1.0 * 0.5, 2.0 * sigmoid(-1.0)]], rtol=1e-6)


def test_thresholded_linear_unit():
    tlu = tl.ThresholdedLinearUnit()
    assert str(tlu) == "ThresholdedLinearUnit"
    weights, _ = tlu.init(shapes.ShapeDtype((5,)))
    assert weights.shape == () and float(weights) == 0.0
    assert tlu(X).tolist() == [0.0, 0.0, 0.0, 0.5, 2.0]
    tlu.weights = np.float32(1.0)
    assert tlu(X).tolist() == [1.0, 1.0, 1.0, 1.0, 2.0]


def test_activation_shape_check_reports_a_layer_error():
    # The wrapper checks '...->...': a layer that changes the shape fails.
    @tl.assert_shape("...->...")
    def Shrink():  # noqa: N802
        return tl.Fn("Shrink", lambda x: x[..., :1])

    with pytest.raises(tl.LayerError, match="AssertShape Error"):
        Shrink()(np.ones((2, 3), np.float32))
