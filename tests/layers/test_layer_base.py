"""The layer contract (TRAX_REFERENCE §1): init, pure_fn, weights/state, sharing, errors."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random

THIS_FILE = "test_layer_base.py"


def sig(*shape, dtype=np.float32):
    return shapes.ShapeDtype(shape, dtype)


def next_line() -> int:
    """The line number after the caller's line (where a layer is created)."""
    return inspect.currentframe().f_back.f_lineno + 1


# -- init, weights, state, rng -----------------------------------------------


def test_init_returns_and_stores_weights_and_state():
    dense = tl.Dense(2)
    weights, state = dense.init(sig(1, 3))
    w, b = weights
    assert w.shape == (3, 2) and b.shape == (2,) and state == ()
    assert dense.weights[0] is w and dense.weights[1] is b
    assert dense.state == ()


def test_init_uses_a_fixed_default_seed():
    w1, _ = tl.Dense(2).init(sig(1, 3))
    w2, _ = tl.Dense(2).init(sig(1, 3))
    dense = tl.Dense(2)
    w3, _ = dense.init(sig(1, 3))
    w4, _ = dense.init(sig(1, 3))
    for other in (w2, w3, w4):
        np.testing.assert_array_equal(w1[0], other[0])
        np.testing.assert_array_equal(w1[1], other[1])
    w5, _ = dense.init(sig(1, 3), rng=random.get_prng(1))
    assert not np.array_equal(w1[0], w5[0])


def test_weights_and_state_are_settable():
    dense = tl.Dense(2)
    dense.init(sig(1, 2))
    dense.weights = (np.eye(2, dtype=np.float32), np.array([1.0, -1.0], np.float32))
    assert dense(np.array([[2.0, 3.0]], np.float32)).tolist() == [[3.0, 2.0]]
    drop = tl.Dropout(0.5)
    drop.init(sig(2))
    drop.state = jnp.array(0.25, jnp.float32)
    assert float(drop.state) == 0.25
    rng = random.get_prng(7)
    drop.rng = rng
    np.testing.assert_array_equal(drop.rng, rng)


def test_only_weights_state_rng_are_settable_public_attributes():
    dense = tl.Dense(2)
    with pytest.raises(ValueError, match="not 'weighs'"):
        dense.weighs = 1
    with pytest.raises(ValueError, match=r"\('weights', 'state', 'rng'\)"):
        dense.name = "other"
    dense._private = 3  # Private attributes are fine.


def test_default_arity_and_name():
    layer = tl.Layer()
    assert (layer.n_in, layer.n_out, layer.name, layer.sublayers) == (1, 1, "Layer", ())
    assert str(tl.Layer(n_in=2, n_out=3, name="Named")) == "Named_in2_out3"
    with pytest.raises(ValueError, match="n_in must be a non-negative int; got -1"):
        tl.Layer(n_in=-1)


def test_output_signature_does_not_initialize():
    model = tl.Serial(tl.Dense(4), tl.Dup())
    out = model.output_signature(sig(2, 3))
    assert out == (sig(2, 4), sig(2, 4))
    assert model.weights == ((), ())  # Still not initialized.
    model.init(sig(2, 3))
    assert model.output_signature(sig(5, 3)) == (sig(5, 4), sig(5, 4))


def test_weights_and_state_signature():
    model = tl.Serial(tl.Dense(4), tl.Dropout(0.1))
    w_sig, s_sig = model.weights_and_state_signature(sig(2, 3))
    assert w_sig == ((sig(3, 4), sig(4)), ())
    assert s_sig == ((), sig())
    assert model.weights == ((), ())  # The layer is left alone.


def test_pure_fn_does_not_mutate_the_layer():
    model = tl.Serial(tl.Dense(2), tl.Cache(tl.Fn("Inc", lambda x: x + 1)))
    weights, state = model.init(sig(1, 2))
    other = ((np.zeros((2, 2), np.float32), np.ones(2, np.float32)), ((),))
    y, new_state = model.pure_fn(np.ones((1, 2), np.float32), other, state, None)
    assert y.tolist() == [[2.0, 2.0]]
    assert new_state[1][0].tolist() == [[2.0, 2.0]]
    assert model.weights[0][0] is weights[0][0]
    assert model.state == state == ((), ((), ()))


def test_call_keeps_the_new_state():
    cache = tl.Cache(tl.Fn("Inc", lambda x: x + 1))
    cache.init(sig())
    cache(np.array(1.0, np.float32))
    assert cache.state[0].item() == 2.0


def test_layer_forward_not_implemented():
    x = np.ones(2, np.float32)
    with pytest.raises(NotImplementedError):
        tl.Layer().forward(x)
    with pytest.raises(tl.LayerError, match="NotImplementedError"):
        tl.Layer()(x)


def test_pure_layer_checks_its_inputs():
    layer = tl.PureLayer(lambda xs: xs[0] - xs[1], n_in=2, name="Diff")
    assert layer((np.float32(5), np.float32(3))) == 2.0
    with pytest.raises(TypeError, match="expects a tuple of 2 inputs"):
        layer.forward(np.ones(2))
    with pytest.raises(ValueError, match="expects 2 inputs; got 3"):
        layer.forward((1, 2, 3))


@pytest.mark.parametrize("style", ["public", "trax"])
def test_subclass_with_a_sublayer(style):
    """A user layer that calls a sublayer's pure_fn in forward.

    ``public``: the sublayer is passed as ``sublayers=`` and read as ``sublayers``.
    ``trax``: Trax 1.4.1's subclass convention, which user code written for Trax
    follows (it assigns ``self._sublayers``); it keeps working.
    """

    class Twice(tl.Layer):
        def __init__(self, layer):
            if style == "public":
                super().__init__(sublayers=[layer])
            else:
                super().__init__()
                self._sublayers = (layer,)

        def init_weights_and_state(self, input_signature):
            w, s = self.sublayers[0].init(input_signature, use_cache=True)
            self.weights, self.state = (w,), (s,)

        def forward(self, x):
            sub = self.sublayers[0]
            y, s = sub.pure_fn(x, self.weights[0], self.state[0], None, use_cache=True)
            y, s = sub.pure_fn(y, self.weights[0], s, None, use_cache=True)
            self.state = (s,)
            return y

    layer = Twice(tl.Dense(1))
    assert len(layer.sublayers) == 1 and str(layer) == "Twice[\n  Dense_1\n]"
    layer.init(sig(1, 1))
    layer.weights = ((np.array([[3.0]], np.float32), np.array([1.0], np.float32)),)
    x = np.array([[2.0]], np.float32)
    assert layer(x).tolist() == [[22.0]]  # 3 * (3 * 2 + 1) + 1

    def loss(w):
        return layer.pure_fn(x, w, layer.state, None)[0].sum()

    ((gw, gb),) = jax.jit(jax.grad(loss))(layer.weights)
    # d/dw [w (w x + b) + b] = 2 w x + b; d/db = w + 1.
    assert gw.tolist() == [[13.0]] and gb.tolist() == [4.0]


# -- jit, grad, vmap through a nested tree ------------------------------------


def _nested_model():
    return tl.Serial(
        tl.Dense(4),
        tl.Branch(tl.Dense(4), [tl.Relu(), tl.Dense(4)]),
        tl.Parallel(tl.LayerNorm(), tl.Dropout(0.5)),
        tl.Add(),
        tl.Residual(tl.Dense(4), tl.Tanh(), shortcut=tl.Dense(4)),
        tl.Dense(2),
    )


@pytest.fixture(scope="module")
def nested():
    model = _nested_model()
    weights, state = model.init(sig(3, 3))
    x = np.linspace(-1.0, 1.0, 9, dtype=np.float32).reshape(3, 3)
    return model, weights, state, x, random.get_prng(42)


def test_jit_of_pure_fn_matches_eager(nested):
    model, weights, state, x, rng = nested
    y, new_state = model.pure_fn(x, weights, state, rng)
    y_jit, state_jit = jax.jit(model.pure_fn)(x, weights, state, rng)
    np.testing.assert_allclose(y_jit, y, rtol=1e-5, atol=1e-6)
    assert jax.tree_util.tree_structure(state_jit) == jax.tree_util.tree_structure(new_state)
    # Dropout is active in train mode: another rng gives another output.
    y_other, _ = model.pure_fn(x, weights, state, random.get_prng(43))
    assert not np.allclose(y_other, y)


def test_vmap_of_pure_fn_matches_eager_rows(nested):
    model, weights, state, x, rng = nested
    xs = x[:, None, :]  # Three examples of shape (1, 3).

    def one(xi):
        return model.pure_fn(xi, weights, state, rng)[0]

    y_vmap = jax.vmap(one)(xs)
    one_jit = jax.jit(one)  # Equal to eager: see test_jit_of_pure_fn_matches_eager.
    y_rows = np.stack([one_jit(xi) for xi in xs])
    np.testing.assert_allclose(y_vmap, y_rows, rtol=1e-5, atol=1e-6)


def test_grad_of_pure_fn_is_finite_and_matches_finite_differences(nested):
    model, weights, state, x, rng = nested

    def loss(w):
        y, _ = model.pure_fn(x, w, state, rng)
        return jnp.sum(y**2)

    grads = jax.jit(jax.grad(loss))(weights)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(weights)
    leaves = jax.tree_util.tree_leaves(grads)
    assert len(leaves) == len(jax.tree_util.tree_leaves(weights))
    assert all(np.isfinite(g).all() for g in leaves)
    # The Dense inside Branch's second branch gets a gradient.
    assert np.abs(grads[1][1][1][1][0]).sum() > 0

    # Central difference on one kernel entry of that Dense.
    def loss_at(delta):
        w = jax.tree_util.tree_map(lambda a: a, weights)
        kernel = np.array(w[1][1][1][1][0])
        kernel[0, 1] += delta
        w = _replace(w, (1, 1, 1, 1, 0), jnp.asarray(kernel))
        return float(loss(w))

    eps = 1e-2
    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = float(grads[1][1][1][1][0][0, 1])
    assert analytic == pytest.approx(numeric, rel=2e-2, abs=1e-4)


def _replace(tree, path, value):
    if not path:
        return value
    i = path[0]
    items = list(tree)
    items[i] = _replace(items[i], path[1:], value)
    return tuple(items)


# -- weight sharing ------------------------------------------------------------


def test_shared_layer_weights_appear_once():
    dense = tl.Dense(2)
    model = tl.Serial(dense, dense)
    weights, state = model.init(sig(1, 2))
    assert weights[1] is tl.GET_WEIGHTS_FROM_CACHE
    assert state[1] is tl.GET_STATE_FROM_CACHE
    assert model.weights[1] is tl.GET_WEIGHTS_FROM_CACHE
    flat_w, _ = tl.flatten_weights_and_state(weights, state)
    assert len(flat_w) == 2
    parallel = tl.Parallel(dense, dense)
    assert parallel.init((sig(1, 2), sig(1, 2)))[0][1] is tl.GET_WEIGHTS_FROM_CACHE


def test_shared_layer_output_and_gradients_from_both_uses():
    dense = tl.Dense(2)
    model = tl.Serial(dense, dense)
    model.init(sig(1, 2))
    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([0.5, -1.0], np.float32)
    model.weights = ((w, b), tl.GET_WEIGHTS_FROM_CACHE)
    x = np.array([[1.0, -1.0]], np.float32)
    y1 = x @ w + b
    np.testing.assert_allclose(model(x), y1 @ w + b)

    def loss(weights):
        return jnp.sum(model.pure_fn(x, weights, model.state, None)[0])

    grads = jax.grad(loss)(model.weights)
    g2 = np.ones((1, 2), np.float32)  # dL/dy2
    g1 = g2 @ w.T  # dL/dy1
    np.testing.assert_allclose(grads[0][0], y1.T @ g2 + x.T @ g1)
    np.testing.assert_allclose(grads[0][1], g2.sum(0) + g1.sum(0))
    assert grads[1] == tl.GET_WEIGHTS_FROM_CACHE


# -- flatten / unflatten -----------------------------------------------------------


def test_flatten_unflatten_round_trip():
    model = tl.Serial(tl.Dense(3), tl.Dropout(0.1), tl.Relu(), tl.LayerNorm())
    weights, state = model.init(sig(2, 4))
    flat_w, flat_s = tl.flatten_weights_and_state(weights, state)
    assert [a.shape for a in flat_w] == [(4, 3), (3,), (3,), (3,)]
    assert len(flat_s) == 1 and flat_s[0].dtype == np.float32  # Dropout's rate.
    ws_sig = model.weights_and_state_signature(sig(2, 4))
    w2, s2 = tl.unflatten_weights_and_state(flat_w, flat_s, ws_sig)
    assert jax.tree_util.tree_structure(w2) == jax.tree_util.tree_structure(weights)
    for a, b in zip(jax.tree_util.tree_leaves(w2), jax.tree_util.tree_leaves(weights)):
        assert a is b
    assert s2[1] is flat_s[0]
    w3, s3 = tl.unflatten_weights_and_state(flat_w, flat_s, ws_sig, weights_only=True)
    assert s3 is None
    with pytest.raises(ValueError, match="Too many weights arrays: the model needs 4, got 5"):
        tl.unflatten_weights_and_state(flat_w + [flat_w[0]], flat_s, ws_sig)
    with pytest.raises(ValueError, match="Not enough weights arrays"):
        tl.unflatten_weights_and_state(flat_w[:3], flat_s, ws_sig)


def test_to_list():
    assert tl.to_list((np.array([1, 2]), np.array(3))) == [[1, 2], 3]


# -- printing ------------------------------------------------------------------------


def test_full_printout_of_a_composite_model():
    model = tl.Serial(
        tl.Dense(4),
        tl.Relu(),
        tl.Branch(tl.Dense(4), None),
        tl.Concatenate(),
        tl.Residual(tl.Dense(8), shortcut=tl.Dense(8)),
        tl.Dropout(0.1),
        tl.Parallel(tl.Dense(2), None),
        tl.Embedding(32, 16),
        tl.Select([0, 0]),
        tl.Flatten(),
        tl.Weights(tl.RandomNormalInitializer(), (3,)),
        tl.LogSoftmax(),
    )
    expected = """\
Serial_in2_out4[
  Dense_4
  Serial[
    Relu
  ]
  Branch_out2[
    Dense_4
    None
  ]
  Concatenate_in2
  Serial[
    Branch_out2[
      Dense_8
      Dense_8
    ]
    Add_in2
  ]
  Dropout
  Parallel_in2_out2[
    Dense_2
    Serial
  ]
  Embedding_32_16
  Select[0,0]_out2
  Flatten_keep1
  Weights_(3,)_in0
  LogSoftmax
]"""
    assert str(model) == expected
    assert repr(model) == expected


def test_printout_of_nested_branch_with_list_arguments():
    block = tl.Serial(
        tl.Branch(
            [tl.Dense(16), tl.Relu()],
            [tl.Dense(16), tl.Relu()],
        ),
        tl.Add(),
    )
    expected = """\
Serial[
  Branch_out2[
    [Dense_16, Serial[
      Relu
    ]]
    [Dense_16, Serial[
      Relu
    ]]
  ]
  Add_in2
]"""
    assert str(block) == expected


# -- errors --------------------------------------------------------------------------


def test_error_too_few_inputs_on_the_stack():
    model = tl.Serial(tl.Dense(3), tl.Add())
    with pytest.raises(
        tl.LayerError, match="Serial_in2 takes 2 inputs from the stack but got a single array"
    ):
        model.init(sig(1, 2))
    with pytest.raises(tl.LayerError, match=r"Add_in2 takes 2 inputs .* got 1 items"):
        tl.Add()((np.ones(2),))


def test_error_incompatible_shapes_names_path_file_shapes_and_fix():
    line = next_line()
    model = tl.Serial(tl.Relu(), tl.Dense(4))
    model.init(sig(2, 8))
    with pytest.raises(tl.LayerError, match=r"layer Serial\[1\] > Dense_4 \(in pure_fn\)") as info:
        model(np.ones((2, 5), np.float32))
    message = str(info.value)
    assert f"{THIS_FILE}, line {line}" in message
    assert "layer input shapes: ShapeDtype{shape:(2, 5), dtype:float32}" in message
    assert "expects inputs whose last axis is 8" in message
    assert "Feed inputs of width 8, or re-run init()" in message
    assert info.value.layer_name == "Dense_4"
    assert info.value.path == ["Serial[1]"]


def test_error_path_through_nested_combinators():
    model = tl.Serial(
        tl.Relu(),
        tl.Relu(),
        tl.Branch(None, tl.Dense(4)),
        tl.Concatenate(),
    )
    model.init(sig(1, 8))
    with pytest.raises(tl.LayerError, match=r"Serial\[2\] > Branch_out2\[1\] > Dense_4"):
        model(np.ones((1, 5), np.float32))
    residual = tl.Serial(tl.Dense(8), tl.Residual(tl.Dense(4)))
    with pytest.raises(
        tl.LayerError, match=r"Serial\[1\] > Serial\[1\] > Add_in2 \(in init\)"
    ) as info:
        residual.init(sig(1, 3))
    assert "incompatible shapes for broadcasting: (1, 8), (1, 4)" in str(info.value)
    assert "JAX has removed its internal frames" not in str(info.value)


def test_error_path_inside_scan_and_cond():
    scan = tl.Serial(tl.Scan(tl.Serial(tl.Dense(2)), n_carry=0))
    scan.init(sig(3, 4))
    with pytest.raises(tl.LayerError, match=r"Serial\[0\] > Scan\[0\] > Serial\[0\] > Dense_2"):
        scan(np.ones((3, 5), np.float32))
    cond = tl.Serial(tl.Cond(tl.Fn("IsPos", lambda x: x > 0), tl.Dense(4)))
    cond.init((sig(), sig(1, 4)))
    with pytest.raises(tl.LayerError, match=r"Serial_in2\[0\] > Cond_in2\[1\] > Dense_4"):
        cond((np.float32(1), np.ones((1, 5), np.float32)))


def test_error_calling_before_init():
    with pytest.raises(tl.LayerError, match="Dense_3 has weights that are not initialized yet"):
        tl.Dense(3)(np.ones((1, 2), np.float32))


def test_error_weights_of_the_wrong_structure():
    model = tl.Serial(tl.Dense(8), tl.Dense(3))
    with pytest.raises(
        ValueError,
        match=r"Number of weight elements \(1\) does not equal the number of sublayers \(2\)",
    ):
        model.weights = ((np.ones((4, 8)), np.ones(8)),)
    model.init(sig(1, 4))
    with pytest.raises(ValueError, match=r"Number of weight elements \(3\) does not equal"):
        model.weights = model.weights + ((),)
    with pytest.raises(ValueError, match=r"at \[1\]\[0\] expected shape \(8, 3\), got \(8, 2\)"):
        model.weights = (model.weights[0], (np.ones((8, 2)), np.ones(2)))
    with pytest.raises(ValueError, match="Number of state elements"):
        model.state = ((),)
    x = np.ones((1, 4), np.float32)
    bad = (model.weights[0], (np.ones((8, 2), np.float32), np.ones(2, np.float32)))
    with pytest.raises(
        tl.LayerError, match=r"(?s)Serial\[1\] > Dense_3 .*expected shape \(8, 3\), got \(8, 2\)"
    ):
        model.pure_fn(x, bad, model.state, None)
    with pytest.raises(tl.LayerError, match="its weights must be a tuple of 2 entries"):
        model.pure_fn(x, model.weights[:1], model.state, None)


def test_error_non_layer_inside_a_combinator():
    with pytest.raises(ValueError, match=r"position \[2\]: str 'relu'"):
        tl.Serial(tl.Dense(2), tl.Dense(2), "relu")
    with pytest.raises(ValueError, match=r"position \[1\]: int"):
        tl.Residual(tl.Dense(2), 5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: tl.Dense(0), "n_units must be a positive int; got 0"),
        (lambda: tl.Dense(-1), "n_units must be a positive int; got -1"),
        (lambda: tl.Embedding(0, 4), "vocab_size must be a positive int; got 0"),
        (lambda: tl.Embedding(4, -2), "d_feature must be a positive int; got -2"),
        (lambda: tl.Select([-1]), "indices must be non-negative ints"),
        (lambda: tl.Concatenate(n_items=0), "n_items must be a positive int; got 0"),
        (lambda: tl.Dropout(1.0), r"rate must be in \[0, 1\); got 1.0"),
        (lambda: tl.Dropout(-0.1), r"rate must be in \[0, 1\); got -0.1"),
        (lambda: tl.Dropout(0.1, mode="bogus"), "mode must be one of .*got 'bogus'"),
        (lambda: tl.Flatten(-1), "n_axes_to_keep must be >= 0; got -1"),
        (lambda: tl.LayerNorm(epsilon=0.0), "epsilon must be > 0"),
        (lambda: tl.Layer(n_out=-2), "n_out must be a non-negative int; got -2"),
    ],
)
def test_errors_for_bad_sizes(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_layer_error_carries_the_creation_site():
    line = next_line()
    dense = tl.Dense(3)
    with pytest.raises(tl.LayerError) as info:
        dense(np.ones((1, 2), np.float32))
    filename, lineno = info.value.caller
    assert filename.endswith(THIS_FILE) and lineno == line
    assert info.value.function_name == "__call__"


def test_trax_alias_import():
    assert trax.layers is tl
    assert trax.shapes.ShapeDtype is shapes.ShapeDtype


def test_a_combinator_of_initialized_layers_runs_without_its_own_init():
    # As in Trax: Chunk(dense)(x) and Serial(dense, ...)(x) use dense's weights.
    import numpy as np

    from retrax import layers as tl
    from retrax import shapes

    dense = tl.Dense(4)
    dense.init(shapes.ShapeDtype((8, 5)))
    x = np.random.default_rng(0).normal(size=(9, 5)).astype(np.float32)
    np.testing.assert_allclose(tl.Chunk(dense, 3)(x), dense(x), rtol=1e-6)
    model = tl.Serial(dense, tl.Dropout(0.5, mode="eval"))  # Dropout's state starts fresh
    np.testing.assert_allclose(model(x), dense(x), rtol=1e-6)
    assert model.initialized and float(model.state[1]) == 0.5
    # A layer without weights yet is still refused, naming what to do.
    import pytest

    with pytest.raises(tl.LayerError, match="not initialized yet"):
        tl.Serial(dense, tl.Dense(2))(x)
    wrong = tl.Dense(4)
    wrong.init(shapes.ShapeDtype((1, 7)))
    with pytest.raises(tl.LayerError, match=r"expected shape \(7, 4\), got \(5, 4\)"):
        tl.Serial(wrong)(x)
