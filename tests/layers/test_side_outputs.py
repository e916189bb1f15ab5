"""tl.SerialWithSideOutputs (Trax 1.4.1 combinators): side outputs moved under the stack."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random
from retrax.layers import combinators


def divide_by(d):
    return tl.Fn("DivideBy", lambda x: x / d)


def reference(specs, n_side_outputs, inputs):
    """The documented semantics, on a Python list: outputs = stack left + side outputs in order.

    ``specs`` are (n_in, n_out, function of a list -> list).
    """
    stack, sides = list(inputs), []
    for (n_in, n_out, fn), n_side in zip(specs, n_side_outputs):
        result = fn(stack[:n_in])
        assert len(result) == n_out
        stack = result[:n_out - n_side] + stack[n_in:]
        sides += result[n_out - n_side:]
    return stack + sides


def layer_from(spec, tag):
    n_in, n_out, fn = spec

    def forward(xs):
        out = fn([xs] if n_in == 1 else list(xs))
        return out[0] if n_out == 1 else tuple(out)

    return tl.PureLayer(forward, n_in=n_in, n_out=n_out, name=f"L{tag}")


def test_trax_example_values():
    def some_layer():
        return tl.Parallel(divide_by(2.0), divide_by(5.0))

    layer = tl.SerialWithSideOutputs([some_layer(), some_layer()])
    assert (layer.n_in, layer.n_out) == (3, 3)
    xs = (np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0, 40.0, 50.0]),
          np.array([100.0, 200.0]))
    a, b, c = layer(xs)
    # (a, b, c) -> (a/2, b/5 aside, c) -> (a/4, c/5 aside): outputs a/4, b/5, c/5.
    assert a.tolist() == [0.25, 0.5, 0.75]
    assert b.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert c.tolist() == [20.0, 40.0]


def test_docstring_case_one_input_two_outputs():
    step = tl.Fn("HalveAndKeep", lambda x: (x / 2, x), n_out=2)
    layer = tl.SerialWithSideOutputs([step, step, step])
    assert (layer.n_in, layer.n_out) == (1, 4)
    assert [y.item() for y in layer(np.array(16.0))] == [2.0, 16.0, 8.0, 4.0]


# (n_in, n_out, function) triples: every output is a distinct function of the inputs.
SPECS = {
    "one_to_two": (1, 2, lambda xs: [xs[0] + 1.0, xs[0] * 10.0]),
    "two_to_three": (2, 3, lambda xs: [xs[0] - xs[1], xs[0] * xs[1], xs[1] + 100.0]),
    "three_to_one": (3, 1, lambda xs: [xs[0] + 2 * xs[1] + 3 * xs[2]]),
    "one_to_one": (1, 1, lambda xs: [xs[0] * -3.0]),
    "zero_to_two": (0, 2, lambda xs: [np.float32(7.0), np.float32(9.0)]),
}


@pytest.mark.parametrize("names, n_side", [
    (["one_to_two", "one_to_two"], 1),
    (["two_to_three", "two_to_three"], 1),
    (["two_to_three", "one_to_two", "three_to_one"], [2, 1, 0]),
    (["one_to_one", "two_to_three", "one_to_two"], [0, 1, 2]),
    (["three_to_one", "zero_to_two", "two_to_three"], [1, 1, 2]),
])
def test_general_stacks_match_the_reference(names, n_side):
    specs = [SPECS[n] for n in names]
    counts = [n_side] * len(specs) if isinstance(n_side, int) else n_side
    layer = tl.SerialWithSideOutputs([layer_from(s, i) for i, s in enumerate(specs)], n_side)
    # The inputs needed: as many as the layers reach (side outputs set aside).
    need = consumed = 0
    for (n_in, n_out, _), k in zip(specs, counts):
        need = max(need, consumed + n_in)
        consumed += n_in - (n_out - k)
    assert layer.n_in == need
    inputs = [np.float32(3.0 + 2 * i) for i in range(need)]
    want = reference(specs, counts, inputs)
    assert layer.n_out == len(want)
    got = layer(tuple(inputs) if need != 1 else inputs[0])
    got = [got] if layer.n_out == 1 else list(got)
    np.testing.assert_allclose(np.array(got, np.float64), np.array(want, np.float64), rtol=1e-6)


def test_no_side_outputs_is_serial():
    layers = [tl.Fn("Inc", lambda x: x + 1), tl.Fn("Double", lambda x: 2 * x)]
    layer = tl.SerialWithSideOutputs(layers, n_side_outputs=0)
    assert (layer.n_in, layer.n_out) == (1, 1)
    assert layer(np.array(3.0)).item() == 8.0


def test_weight_layout_is_trax_serial_with_selects():
    block = tl.Branch(tl.Dense(2), None)   # 1 -> 2: (dense(x), x)
    layer = tl.SerialWithSideOutputs([block, tl.Dense(3)], n_side_outputs=[1, 0])
    assert isinstance(layer, tl.Serial) and len(layer.sublayers) == 4
    assert [str(s).splitlines()[0] for s in layer.sublayers] == [
        "Branch_out2[", "Select[0,1]_in2_out2", "Dense_3", "Select[0,1]_in2_out2"]
    weights, _ = layer.init(shapes.ShapeDtype((4, 5)), rng=random.get_prng(0))
    assert weights[1] == () and weights[3] == ()
    assert weights[2][0].shape == (2, 3)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    y, side = layer(x)
    w1, b1 = weights[0][1][0]   # Branch = Serial(Select, Parallel(Dense_2, identity))
    w2, b2 = weights[2]
    h = x.astype(np.float64) @ np.asarray(w1, np.float64) + np.asarray(b1, np.float64)
    want = h @ np.asarray(w2, np.float64) + np.asarray(b2, np.float64)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(side, x)
    # Pure and compiled give the same.
    y_jit, side_jit = jax.jit(layer.pure_fn)(x, layer.weights, layer.state, None)[0]
    np.testing.assert_allclose(y_jit, y, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(side_jit, side)


def test_is_in_combinators():
    assert combinators.SerialWithSideOutputs is tl.SerialWithSideOutputs


def test_bad_arguments():
    step = tl.Fn("HalveAndKeep", lambda x: (x / 2, x), n_out=2)
    with pytest.raises(ValueError, match="has 1 entries for 2 layers"):
        tl.SerialWithSideOutputs([step, step], n_side_outputs=[1])
    with pytest.raises(ValueError, match="gives 2 outputs, so its n_side_outputs must be an int "
                                         "from 0 to 2; got 3"):
        tl.SerialWithSideOutputs([step], n_side_outputs=3)
    with pytest.raises(ValueError, match="got -1"):
        tl.SerialWithSideOutputs([step], n_side_outputs=-1)
    with pytest.raises(ValueError, match="layers must be a list of layers; got "):
        tl.SerialWithSideOutputs(step)
    with pytest.raises(ValueError, match="non-layer object"):
        tl.SerialWithSideOutputs([step, "relu"])
