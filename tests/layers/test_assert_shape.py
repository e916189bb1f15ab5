"""Shape assertions (TRAX_REFERENCE §3.7)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import layers as tl


def ones(*shape):
    return np.ones(shape, np.float32)


def distinct(*shape, start=0):
    """An array of ``shape`` whose values differ from each other (and from ``start``'s)."""
    return (np.arange(int(np.prod(shape)), dtype=np.float32) + start).reshape(shape)


PASS = [
    ("aba,ba", [(10, 5, 10), (5, 10)]),
    ("aba,ba", [(5, 5, 5), (5, 5)]),
    ("a", [(5,)]),
    ("", [()]),
    ("aa", [(3, 3)]),
    ("a,", [(5,), ()]),
    ("a,b,a,ab", [(5,), (2,), (5,), (5, 2)]),
    ("23,1,93", [(2, 3), (1,), (9, 3)]),
    ("a...bc,abc", [(1, 5, 5, 2, 3), (1, 2, 3)]),
    ("...bc,abc", [(5, 5, 2, 3), (1, 2, 3)]),
    ("...bc,abc", [(2, 3), (1, 2, 3)]),  # '...' matching no dims
    ("...bc,...bc", [(1, 2, 3), (1, 2, 3)]),
    ("bb...,...bb", [(2, 2, 5, 6), (5, 6, 2, 2)]),
    ("...22,...3", [(1, 2, 3, 2, 2), (1, 2, 3, 3)]),
]

FAIL = [
    ("24,1,93", [(2, 3), (1,), (9, 3)]),
    ("ab...cde,2", [(2, 3, 4, 5), (2,)]),
    ("b...c,2", [(2,), (2,)]),
    ("...a,...b", [(1, 2, 3, 7), (1, 2, 8)]),  # the two '...' differ
    ("...abc,2", [(4, 5), (2,)]),
    ("...2,...8", [(1, 2, 3, 9), (1, 3, 3, 8)]),
    ("aba,ab", [(10, 5, 10), (5, 8)]),
    ("aba,ab", [(10, 5, 10), (5, 10, 4)]),
    ("aa", [(10, 5)]),
]


@pytest.mark.parametrize("spec, shapes_", PASS)
def test_assert_shape_passes(spec, shapes_):
    layer = tl.AssertShape(spec)
    xs = [distinct(*s, start=1000 * i) for i, s in enumerate(shapes_)]
    inputs = xs[0] if len(xs) == 1 else tuple(xs)
    y = layer(inputs)
    ys = [y] if len(xs) == 1 else list(y)
    assert len(ys) == len(xs)
    assert all(a is b for a, b in zip(ys, xs))  # Inputs pass through unchanged, in order.
    # Under jit (as in a train step) the values pass through.
    jitted = jax.jit(lambda x: layer.pure_fn(x, layer.weights, layer.state, None)[0])(inputs)
    jitted = [jitted] if len(xs) == 1 else list(jitted)
    assert len(jitted) == len(xs)
    for a, b in zip(jitted, xs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("spec, shapes_", FAIL)
def test_assert_shape_fails(spec, shapes_):
    layer = tl.AssertShape(spec)
    xs = [ones(*s) for s in shapes_]
    with pytest.raises(tl.LayerError, match="AssertShape Error. Expected"):
        layer(xs[0] if len(xs) == 1 else tuple(xs))


@pytest.mark.parametrize("spec", ["b......c,2", "b..c,2", "...c...,2", "a-b"])
def test_malformed_specs_fail_at_construction(spec):
    with pytest.raises(ValueError, match="assert_shape"):
        tl.AssertShape(spec)


def test_assert_shape_names():
    assert str(tl.AssertShape("a")) == ""
    assert str(tl.AssertShape("a,b")) == "_in2_out2"
    assert str(tl.AssertShape("a,b", visible_layer=True)) == "AssertShape_in2_out2"


@pytest.mark.parametrize(
    "spec, layer, shape, expected",
    [
        ("abc->abc", lambda: tl.Dropout(0.1, mode="eval"), (2, 5, 20), lambda x: x),
        ("...ab->...c", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5),
         lambda x: x.reshape(1, 2, 3, 20)),
        ("xyzab->xyzc", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5),
         lambda x: x.reshape(1, 2, 3, 20)),
        ("abcde->x", lambda: tl.Flatten(n_axes_to_keep=0), (1, 2, 3, 4, 5),
         lambda x: x.reshape(120)),
        (
            "...cd->...x,...cd",
            lambda: tl.Branch(tl.Flatten(n_axes_to_keep=2), tl.Dropout(0.1, mode="eval")),
            (1, 2, 3, 4),
            lambda x: (x.reshape(1, 2, 12), x),
        ),
        ("...34->1234,...34", lambda: tl.Branch(tl.Dropout(0.1, mode="eval"), tl.Serial()),
         (1, 2, 3, 4), lambda x: (x, x)),
    ],
)
def test_assert_function_passes(spec, layer, shape, expected):
    x = distinct(*shape)
    y = tl.AssertFunction(spec, layer())(x)
    want = expected(x)
    if isinstance(want, tuple):
        assert isinstance(y, tuple) and len(y) == len(want)
        for a, b in zip(y, want):
            np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_array_equal(y, want)  # the wrapped layer's output, unchanged


def test_assert_function_in_train_mode_passes_dropout_through():
    y = tl.AssertFunction("abc->abc", tl.Dropout(0.5))(distinct(2, 5, 20, start=1))
    kept = y != 0
    assert 0 < kept.mean() < 1  # (dropout ran)
    np.testing.assert_allclose(y[kept], 2 * distinct(2, 5, 20, start=1)[kept])


@pytest.mark.parametrize(
    "spec, layer, shape",
    [
        ("abc->cba", lambda: tl.Dropout(0.1), (2, 5, 20)),
        ("abcde->abcde", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5)),
        ("abcde->abcd", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5)),
        (
            "...cd->...x,...cd,...cd,...cd",
            lambda: tl.Branch(tl.Flatten(n_axes_to_keep=2), tl.Dropout(0.1), tl.Serial()),
            (1, 2, 3, 4),
        ),
        (
            "...34->...x,...y",
            lambda: tl.Branch(tl.Flatten(n_axes_to_keep=3), tl.Serial()),
            (1, 2, 3, 4),
        ),
    ],
)
def test_assert_function_fails(spec, layer, shape):
    with pytest.raises(tl.LayerError):
        tl.AssertFunction(spec, layer())(ones(*shape))


def test_decorated_function_prints_with_the_wrapper():
    @tl.assert_shape("a,a->a")
    def Plus():  # noqa: N802
        return tl.Add()

    layer = Plus()
    assert str(layer) == "Serial_in2[\n  _in2_out2\n  Add_in2\n]"
    assert layer((ones(3), ones(3))).tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(
        tl.LayerError,
        match=r"AssertShape Error. Expected 'a,a'.*test_assert_shape.py:\d+ \(input\)",
    ):
        layer((ones(3), ones(4)))


def test_decorated_class_checks_inside_forward():
    @tl.assert_shape("...a->...a")
    class Keep(tl.Layer):
        def forward(self, x):
            return x[..., : self._width]

    keep = Keep()
    keep._width = 3
    assert str(keep) == "Keep"  # No wrapper level for classes.
    np.testing.assert_array_equal(keep(distinct(2, 3)), distinct(2, 3))
    keep._width = 1
    with pytest.raises(tl.LayerError, match=r"AssertShape Error. Expected '...a'.*\(output\)"):
        keep(ones(2, 3))


def test_spec_needs_one_arrow():
    with pytest.raises(ValueError, match="exactly one '->'"):
        tl.assert_shape("ab")
    with pytest.raises(ValueError, match="exactly one '->'"):
        tl.AssertFunction("a->b->c", tl.Serial())
