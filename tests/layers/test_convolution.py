"""Conv, Conv1d, CausalConv, CausalDepthwiseConv against NumPy float64 loops (Trax 1.4.1 layouts)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random

RNG = np.random.default_rng(14)


def same_padding(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """XLA's 'SAME': output ceil(size / stride), the odd padding position at the end."""
    reach = (k - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + reach - size, 0)
    return total // 2, total - total // 2


def conv_reference(x, w, b=None, strides=(1, 1), padding="VALID", dilation=(1, 1)):
    """NHWC input, HWIO kernel, by explicit loops over output positions, in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, _ = x.shape
    kh, kw, _, out = w.shape
    if padding == "SAME":
        pads = [same_padding(h, kh, strides[0], dilation[0]),
                same_padding(wd, kw, strides[1], dilation[1])]
    else:
        pads = [(0, 0), (0, 0)]
    xp = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    oh = (xp.shape[1] - ((kh - 1) * dilation[0] + 1)) // strides[0] + 1
    ow = (xp.shape[2] - ((kw - 1) * dilation[1] + 1)) // strides[1] + 1
    y = np.zeros((n, oh, ow, out))
    for i in range(oh):
        for j in range(ow):
            for di in range(kh):
                for dj in range(kw):
                    patch = xp[:, i * strides[0] + di * dilation[0],
                               j * strides[1] + dj * dilation[1], :]
                    y[:, i, j, :] += patch @ w[di, dj]
    return y if b is None else y + np.asarray(b, np.float64)


def conv_with(layer, x, weights):
    layer.init(shapes.signature(x))
    layer.weights = weights
    return np.asarray(layer(x))


def floats(*shape):
    return RNG.normal(size=shape).astype(np.float32)


# -- layout ------------------------------------------------------------------------------


def test_weights_are_kernel_hwio_and_bias():
    conv = tl.Conv(30, (3, 3))
    assert str(conv) == "Conv" and (conv.n_in, conv.n_out) == (1, 1)
    (w, b), state = conv.init(shapes.ShapeDtype((9, 5, 5, 20)))
    assert w.shape == (3, 3, 20, 30) and b.shape == (30,) and state == ()
    assert w.dtype == np.float32 and b.dtype == np.float32
    assert conv(np.ones((9, 5, 5, 20), np.float32)).shape == (9, 3, 3, 30)


def test_without_bias_the_weights_are_the_kernel_alone():
    conv = tl.Conv(30, (3, 3), use_bias=False)
    w, _ = conv.init(shapes.ShapeDtype((9, 5, 5, 20)))
    assert w.shape == (3, 3, 20, 30)
    x = floats(2, 4, 4, 20)
    np.testing.assert_allclose(conv(x), conv_reference(x, w), rtol=1e-5, atol=1e-5)


def test_default_init_glorot_normal_over_channels_and_tiny_bias():
    # Trax's fans for a conv kernel are its in and out channels only: std sqrt(2 / (64 + 64)).
    conv = tl.Conv(64, (3, 3))
    w, b = conv.init(shapes.ShapeDtype((1, 8, 8, 64)), rng=random.get_prng(3))[0]
    assert abs(float(np.std(w)) / math.sqrt(2 / 128) - 1) < 0.03
    assert abs(float(np.mean(w))) < 0.01 and float(np.abs(b).max()) < 1e-5


def test_same_seed_same_init_and_another_seed_differs():
    sig = shapes.ShapeDtype((2, 6, 6, 3))
    a = tl.Conv(4, (3, 3)).init(sig, rng=random.get_prng(5))[0]
    b = tl.Conv(4, (3, 3)).init(sig, rng=random.get_prng(5))[0]
    c = tl.Conv(4, (3, 3)).init(sig, rng=random.get_prng(6))[0]
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# -- values --------------------------------------------------------------------------------


@pytest.mark.parametrize("strides, padding", [((1, 1), "VALID"), ((1, 2), "VALID"),
                                              ((2, 2), "SAME"), ((1, 1), "SAME"),
                                              ((3, 2), "SAME")])
def test_conv_equals_loops(strides, padding):
    x = floats(2, 7, 6, 3)
    w, b = floats(3, 2, 3, 4), floats(4)
    y = conv_with(tl.Conv(4, (3, 2), strides, padding), x, (w, b))
    expected = conv_reference(x, w, b, strides, padding)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_kernel_dilation_spreads_the_taps():
    x, w, b = floats(1, 7, 7, 2), floats(2, 3, 2, 3), floats(3)
    conv = tl.Conv(3, (2, 3), padding="SAME", kernel_dilation=(3, 2))
    expected = conv_reference(x, w, b, padding="SAME", dilation=(3, 2))
    np.testing.assert_allclose(conv_with(conv, x, (w, b)), expected, rtol=1e-5, atol=1e-5)


def test_explicit_padding_pairs():
    x, w = floats(1, 4, 4, 1), floats(3, 3, 1, 2)
    conv = tl.Conv(2, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    expected = conv_reference(x, w, padding="SAME")  # 3x3 stride 1: SAME pads (1, 1)
    np.testing.assert_allclose(conv_with(conv, x, w), expected, rtol=1e-5, atol=1e-5)


def test_extra_leading_axes_fold_into_the_batch():
    conv = tl.Conv(5, (3, 3))
    x = floats(2, 3, 6, 6, 4)
    w, b = conv.init(shapes.signature(x))[0]
    assert w.shape == (3, 3, 4, 5)
    y = np.asarray(conv(x))
    assert y.shape == (2, 3, 4, 4, 5)
    for i in range(2):
        np.testing.assert_allclose(y[i], conv_reference(x[i], w, b), rtol=1e-5, atol=1e-5)


def test_channels_first_layout_matches_the_channels_last_one():
    x, w, b = floats(2, 5, 6, 3), floats(3, 3, 3, 4), floats(4)
    nchw = tl.Conv(4, (3, 3), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    ws, _ = nchw.init(shapes.ShapeDtype((2, 3, 5, 6)))
    assert ws[0].shape == (4, 3, 3, 3) and ws[1].shape == (4, 1, 1)  # Trax's bias shape
    nchw.weights = (w.transpose(3, 2, 0, 1), b[:, None, None])
    y = np.asarray(nchw(x.transpose(0, 3, 1, 2))).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, conv_reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_jit_equals_eager_and_gradients_flow():
    conv = tl.Conv(4, (3, 3), (2, 2), "SAME")
    x = floats(2, 8, 8, 3)
    weights, state = conv.init(shapes.signature(x))
    eager = np.asarray(conv(x))
    jitted = jax.jit(lambda x, w: conv.pure_fn(x, w, state, None)[0])(x, weights)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    grad = jax.grad(lambda w: conv.pure_fn(x, w, state, None)[0].sum())(weights)
    # d(sum y)/d(bias) is the number of output positions per filter: 2 * 4 * 4.
    np.testing.assert_allclose(grad[1], np.full(4, 32.0), rtol=1e-6)


# -- 1-D and causal ----------------------------------------------------------------------


def test_conv1d_is_a_conv_over_width():
    conv = tl.Conv1d(6, 3, stride=2)
    x = floats(2, 9, 4)
    w, b = conv.init(shapes.signature(x))[0]
    assert str(conv) == "Conv" and w.shape == (3, 4, 6) and b.shape == (6,)
    expected = conv_reference(x[:, None], w[None], b, strides=(1, 2))[:, 0]
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_causal_conv_pads_the_past_and_never_sees_the_future():
    conv = tl.CausalConv(filters=5, kernel_width=3)
    assert str(conv) == "CausalConv"
    x = floats(2, 6, 4)
    w, b = conv.init(shapes.signature(x))[0]
    assert w.shape == (3, 4, 5) and b.shape == (5,)
    y = np.asarray(conv(x))
    padded = np.pad(x, [(0, 0), (2, 0), (0, 0)])
    expected = conv_reference(padded[:, None], w[None], b)[:, 0]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    changed = x.copy()
    changed[:, 3] += 10.0
    y2 = np.asarray(conv(changed))
    np.testing.assert_array_equal(y2[:, :3], y[:, :3])
    assert not np.allclose(y2[:, 3], y[:, 3])
    no_bias = tl.CausalConv(filters=30, kernel_width=3, use_bias=False)
    assert no_bias.init(shapes.ShapeDtype((9, 5, 20)))[0].shape == (3, 20, 30)


def test_causal_depthwise_conv_equals_loops():
    conv = tl.CausalDepthwiseConv(kernel_size=3)
    x = floats(2, 5, 4)
    w, state = conv.init(shapes.signature(x))
    assert w.shape == (3, 4) and state == ()
    expected = np.zeros(x.shape)
    for t in range(5):
        for i in range(3):
            if t - i >= 0:
                expected[:, t] += np.float64(w[i]) * x[:, t - i]
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-6)
    jitted = jax.jit(lambda x: conv.pure_fn(x, w, state, None)[0])(x)
    np.testing.assert_allclose(jitted, conv(x), rtol=1e-6, atol=1e-6)  # FMA rounding
    w16, _ = tl.CausalDepthwiseConv(use_bfloat16=True).init(shapes.signature(x))
    assert w16.dtype == jax.numpy.bfloat16


# -- bad input -------------------------------------------------------------------------------


def test_integer_images_are_refused_with_the_fix():
    conv = tl.Conv(2, (3, 3))
    conv.init(shapes.ShapeDtype((1, 5, 5, 3)))
    with pytest.raises(TypeError, match=r"Conv expects float inputs; got dtype int32.*ToFloat"):
        conv(np.ones((1, 5, 5, 3), np.int32))


def test_wrong_rank_is_refused():
    conv = tl.Conv(2, (3, 3))
    conv.init(shapes.ShapeDtype((1, 5, 5, 3)))
    with pytest.raises(ValueError, match=r"expects inputs with 4 axes in layout NHWC .*\(5, 5, 3\)"):
        conv(np.ones((5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="expects inputs with 4 axes"):
        tl.Conv(2, (3, 3)).init(shapes.ShapeDtype((5, 3)))


def test_channels_first_images_are_recognized():
    conv = tl.Conv(8, (3, 3))
    conv.init(shapes.ShapeDtype((2, 32, 32, 3)))
    with pytest.raises(ValueError) as info:
        conv(np.ones((2, 3, 32, 32), np.float32))
    message = str(info.value)
    assert "initialized for 3 input channels" in message and "has 32 there" in message
    assert "channels-first" in message and "x.transpose(0, 2, 3, 1)" in message
    with pytest.raises(ValueError, match="Feed inputs with 3 channels"):
        conv(np.ones((2, 32, 32, 5), np.float32))


def test_a_kernel_larger_than_the_image_warns_and_gives_an_empty_output():
    conv = tl.Conv(2, (5, 5))
    conv.init(shapes.ShapeDtype((1, 3, 3, 1)))
    with pytest.warns(UserWarning, match=r"larger than the input's spatial size \(3, 3\)"):
        y = conv(np.ones((1, 3, 3, 1), np.float32))
    assert y.shape == (1, 0, 0, 2)


@pytest.mark.parametrize("make, error, pattern", [
    (lambda: tl.Conv(0, (3, 3)), ValueError, "filters must be a positive int"),
    (lambda: tl.Conv(4, 3), TypeError, r"write \(3, 3\)"),
    (lambda: tl.Conv(4, (3, 3), strides=(1,)), ValueError, "one entry per spatial axis"),
    (lambda: tl.Conv(4, (3, 3), padding="FULL"), ValueError, "padding must be 'VALID' or 'SAME'"),
    (lambda: tl.Conv(4, (3,)), ValueError, "dimension_numbers must be three layout strings"),
    (lambda: tl.Conv1d(4, 0), ValueError, "kernel_size must be a positive int"),
    (lambda: tl.CausalConv(4, kernel_width=0), ValueError, "kernel_width must be a positive"),
    (lambda: tl.CausalDepthwiseConv(kernel_size=-1), ValueError, "kernel_size must be a positive"),
])
def test_bad_arguments_are_refused(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_conv_transpose_against_a_scatter_loop_and_shapes():
    import numpy as np

    from retrax import layers as tl
    from retrax import shapes

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 2)).astype(np.float32)
    for padding, stride in (("VALID", (2, 2)), ("VALID", (1, 1)), ("SAME", (2, 2))):
        up = tl.ConvTranspose(3, (2, 3), strides=stride, padding=padding)
        (w, b), _ = up.init(shapes.signature(x))
        y = np.asarray(up(x))
        if padding == "VALID":
            # Scatter: every input pixel adds its value times the (flipped) kernel.
            out = np.zeros((2, (3 - 1) * stride[0] + 2, (4 - 1) * stride[1] + 3, 3))
            flipped = np.asarray(w, np.float64)[::-1, ::-1]
            for i in range(3):
                for j in range(4):
                    out[:, i * stride[0]:i * stride[0] + 2, j * stride[1]:j * stride[1] + 3] += \
                        np.einsum("nc,hwco->nhwo", x[:, i, j].astype(np.float64), flipped)
            np.testing.assert_allclose(y, out + np.asarray(b), rtol=1e-5, atol=1e-5)
        else:
            assert y.shape == (2, 6, 8, 3)
    up = tl.ConvTranspose(2, (2, 2))
    up.init(shapes.ShapeDtype((1, 3, 3, 1)))
    with pytest.raises(tl.LayerError, match="expects float inputs"):
        up(np.ones((1, 3, 3, 1), np.int32))
