"""MaxPool, SumPool, AvgPool against NumPy float64 loops (Trax 1.4.1 defaults and padding)."""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest

from retrax import layers as tl

RNG = np.random.default_rng(41)


def pool_reference(x, size, strides, padding, kind):
    """Windows over the axes between batch and channels, by loops, in float64.

    'SAME' pads like XLA (output ceil(n / stride), the odd position at the end);
    padded positions are skipped: never a max, nothing in a sum, not counted in a mean.
    """
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    if padding == "SAME":
        outs = [math.ceil(n / s) for n, s in zip(spatial, strides)]
        lows = [max((o - 1) * s + k - n, 0) // 2
                for o, s, k, n in zip(outs, strides, size, spatial)]
    else:
        outs = [(n - k) // s + 1 for n, k, s in zip(spatial, size, strides)]
        lows = [0] * len(size)
    y = np.zeros((x.shape[0], *outs, x.shape[-1]))
    for out in itertools.product(*[range(o) for o in outs]):
        starts = [o * s - lo for o, s, lo in zip(out, strides, lows)]
        index = tuple(slice(max(a, 0), min(a + k, n)) for a, k, n in zip(starts, size, spatial))
        window = x[(slice(None), *index, slice(None))].reshape(x.shape[0], -1, x.shape[-1])
        reduce = {"max": np.max, "sum": np.sum, "avg": np.mean}[kind]
        y[(slice(None), *out, slice(None))] = reduce(window, axis=1)
    return y


LAYERS = {"max": tl.MaxPool, "sum": tl.SumPool, "avg": tl.AvgPool}


@pytest.mark.parametrize("kind", ["max", "sum", "avg"])
@pytest.mark.parametrize("size, strides, padding", [
    ((2, 2), None, "VALID"), ((2, 3), (2, 1), "VALID"), ((3, 3), (2, 2), "SAME"),
    ((2, 2), (1, 1), "SAME"), ((3,), (3,), "SAME"), ((2,), None, "VALID"),
])
def test_pooling_equals_loops(kind, size, strides, padding):
    shape = (2, 7, 6, 3) if len(size) == 2 else (2, 7, 3)
    x = RNG.normal(size=shape).astype(np.float32)
    y = LAYERS[kind](pool_size=size, strides=strides, padding=padding)(x)
    expected = pool_reference(x, size, strides or (1,) * len(size), padding, kind)
    assert y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_defaults_window_two_by_two_stride_one_valid():
    for make in LAYERS.values():
        layer = make()
        assert (layer.n_in, layer.n_out) == (1, 1)
        assert layer.init(None) == ((), ())
        assert layer(np.ones((11, 6, 4, 17), np.float32)).shape == (11, 5, 3, 17)
    assert [str(tl.MaxPool()), str(tl.SumPool((3,))), str(tl.AvgPool((2, 3), (1, 2)))] == [
        "MaxPool(2,2)", "SumPool(3,)", "AvgPool(2,3)"]


def test_same_padding_is_not_counted_in_averages_or_sums():
    # Length 4, windows of 3 with stride 3: one padded position at each end.
    x = np.array([[[1.0], [2.0], [3.0], [5.0]]])
    assert tl.AvgPool((3,), (3,), "SAME")(x)[0, :, 0].tolist() == [1.5, 4.0]
    assert tl.SumPool((3,), (3,), "SAME")(x)[0, :, 0].tolist() == [3.0, 8.0]
    negative = -x
    assert tl.MaxPool((3,), (3,), "SAME")(negative)[0, :, 0].tolist() == [-1.0, -3.0]


def test_integer_inputs():
    x = np.array([[[3], [-7], [2], [9]]], np.int32)
    y = tl.MaxPool((2,), (2,))(x)
    assert y.dtype == np.int32 and y[0, :, 0].tolist() == [3, 9]
    assert tl.MaxPool((2,), (2,))(-x)[0, :, 0].tolist() == [7, -2]
    s = tl.SumPool((2,), (2,))(x)
    assert s.dtype == np.int32 and s[0, :, 0].tolist() == [-4, 11]
    a = tl.AvgPool((2,), (2,))(x)
    assert a.dtype == np.float32 and a[0, :, 0].tolist() == [-2.0, 5.5]


def test_jit_equals_eager():
    layer = tl.AvgPool((3, 3), (2, 2), "SAME")
    x = RNG.normal(size=(2, 9, 9, 4)).astype(np.float32)
    jitted = jax.jit(lambda x: layer.pure_fn(x, (), (), None)[0])(x)
    np.testing.assert_allclose(jitted, layer(x), rtol=1e-6, atol=1e-7)


def test_wrong_rank_is_refused_with_the_expected_layout():
    with pytest.raises(ValueError, match=r"expects inputs with 4 axes \(batch, 2 window axes, "
                                         r"channels\); got shape \(6, 6\)"):
        tl.MaxPool()(np.ones((6, 6), np.float32))


def test_a_window_larger_than_the_input_warns_and_gives_an_empty_output():
    with pytest.warns(UserWarning, match=r"window \(8, 8\) is larger than the input's window "
                                         r"axes \(2, 2\)"):
        y = tl.AvgPool((8, 8))(np.ones((2, 2, 2, 4), np.float32))
    assert y.shape == (2, 0, 0, 4)  # what Trax gives (its WideResnet on 8x8 images)


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: tl.MaxPool(2), TypeError, r"e\.g\. \(2, 2\)"),
    (lambda: tl.AvgPool((2, 0)), ValueError, "tuple of positive ints"),
    (lambda: tl.SumPool((2, 2), strides=(1,)), ValueError, "one entry per axis of pool_size"),
    (lambda: tl.MaxPool(padding="FULL"), ValueError, "padding must be 'VALID' or 'SAME'"),
])
def test_bad_arguments_are_refused(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_gradients_under_jit():
    x = np.array([[[[1.0], [5.0]], [[3.0], [2.0]]]])  # one 2x2 window, max at (0, 1)

    def grad_of(layer):
        return np.asarray(jax.jit(jax.grad(lambda x: layer.pure_fn(x, (), (), None)[0].sum()))(x))

    assert grad_of(tl.AvgPool())[0, ..., 0].tolist() == [[0.25, 0.25], [0.25, 0.25]]
    assert grad_of(tl.SumPool())[0, ..., 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert grad_of(tl.MaxPool())[0, ..., 0].tolist() == [[0.0, 1.0], [0.0, 0.0]]
