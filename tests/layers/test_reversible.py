"""Reversible layers: Trax 1.4.1's semantics, exact inverses, and gradients through the
custom_vjp of ReversibleSerial equal to plain autodiff."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random
from retrax.layers.reversible import (
    ReversibleConcatenatePair,
    ReversibleHalfResidual,
    ReversibleLayer,
    ReversibleReshape,
    ReversibleSelect,
    ReversibleSerial,
    ReversibleSwap,
)


def test_reversible_swap_as_in_trax():
    layer = ReversibleSwap()
    ys = layer([np.array([1, 2]), np.array([10, 20])])
    assert tl.to_list(ys) == [[10, 20], [1, 2]]
    assert isinstance(layer, ReversibleLayer) and layer.has_backward
    assert layer.reverse(ys)[0].tolist() == [1, 2]


def test_select_is_a_permutation_and_reverses():
    layer = ReversibleSelect([2, 0, 1])
    xs = (np.array(0.0), np.array(1.0), np.array(2.0))
    ys = layer(xs)
    assert [float(v) for v in ys] == [2.0, 0.0, 1.0]
    assert [float(v) for v in layer.reverse(ys)] == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="exactly once"):
        ReversibleSelect([0, 0])


def test_concatenate_pair_and_reshape_reverse():
    x, y = np.ones((2, 3), np.float32), np.zeros((2, 3), np.float32)
    pair = ReversibleConcatenatePair()
    out = pair((x, y))
    np.testing.assert_array_equal(out[0], np.concatenate([x, y], -1))
    back = pair.reverse(out)
    np.testing.assert_array_equal(back[0], x)
    np.testing.assert_array_equal(back[1], y)
    with pytest.raises(ValueError, match="even d_model"):
        pair.reverse((np.ones((2, 5)), np.ones((2, 5))))
    reshape = ReversibleReshape((2, 3), (6,))
    z = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(reshape.reverse(reshape(z)), z)


def test_half_residual_by_hand():
    dense = tl.Dense(3)
    layer = ReversibleHalfResidual(dense)
    assert (layer.n_in, layer.n_out) == (2, 2)
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    b = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    weights, _ = layer.init((shapes.signature(a), shapes.signature(b)))
    (w, bias), = weights[0]
    ya, yb = layer((a, b))
    np.testing.assert_allclose(ya, a + b @ np.asarray(w) + np.asarray(bias), rtol=1e-6)
    np.testing.assert_array_equal(yb, b)
    ra, rb = layer.reverse((ya, yb), layer.weights, layer.state)
    np.testing.assert_allclose(ra, a, atol=1e-6)


def test_half_residual_with_attention_layer_takes_the_context_it_needs():
    # acc, x, y -> acc + Add(LayerNorm(x), y): n_in = 1 + 2.
    layer = ReversibleHalfResidual(tl.LayerNorm(), attention_layer=tl.Add())
    assert (layer.n_in, layer.n_out) == (3, 3)
    xs = tuple(np.full((1, 4), v, np.float32) + np.arange(4, dtype=np.float32)
               for v in (0.0, 1.0, 2.0))
    layer.init(tuple(shapes.signature(x) for x in xs))
    out = layer(xs)
    ln = tl.LayerNorm()
    ln.init(shapes.signature(xs[1]))
    np.testing.assert_allclose(out[0], xs[0] + ln(xs[1]) + xs[2], rtol=1e-6)
    assert len(layer.weights) == 2


def by_hand(model, xs, weights, state, rng):
    """The model's layers one after another, each with the key ReversibleSerial gives it
    (hash_fold_in(rng, i)), differentiated by plain autodiff."""
    stack = list(xs)
    for i, layer in enumerate(model.sublayers):
        key = None if rng is None else random.hash_fold_in(rng, i)
        out = layer.pure_fn(tuple(stack[:layer.n_in]), weights[i], state[i], key)[0]
        stack = list(out) + stack[layer.n_in:]
    return tuple(stack), None


def _blocks(n, dropout=0.0):
    def block():
        return [ReversibleHalfResidual(tl.LayerNorm(), tl.Dense(8), tl.Relu(), tl.Dense(4),
                                       tl.Dropout(dropout)),
                ReversibleSwap()]
    return [block() for _ in range(n)]


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradients_equal_plain_autodiff(dropout):
    model = ReversibleSerial(_blocks(3, dropout))
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    weights, state = model.init((shapes.signature(x),) * 2)
    rng = jax.random.PRNGKey(3)

    def loss(run):
        def f(w, x):
            y0, y1 = run((x, 2.0 * x), w, state, rng)[0]
            return jnp.sum(y0 ** 2) + jnp.sum(jnp.sin(y1))
        return f

    reversible = jax.grad(loss(model.pure_fn), argnums=(0, 1))(weights, x)
    plain = jax.grad(loss(lambda *a: by_hand(model, *a)), argnums=(0, 1))(weights, x)
    jitted = jax.jit(jax.grad(loss(model.pure_fn), argnums=(0, 1)))(weights, x)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(plain))
    assert scale > 1.0
    for got in (reversible, jitted):
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(plain)):
            np.testing.assert_allclose(a, b, rtol=0, atol=2e-6 * scale)


@pytest.mark.slow
def test_reverse_recovers_inputs_and_reverse_and_grad_matches():
    model = ReversibleSerial(_blocks(2))
    x = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    weights, state = model.init((shapes.signature(x),) * 2)
    ys, new_state = model.pure_fn((x, -x), weights, state, None)
    rec = model.reverse(ys, weights, state, new_state)
    np.testing.assert_allclose(rec[0], x, atol=1e-5)
    np.testing.assert_allclose(rec[1], -x, atol=1e-5)
    ct = (jnp.ones_like(ys[0]), jnp.zeros_like(ys[1]))
    rec2, (x_ct, w_ct) = model.reverse_and_grad(ys, ct, weights, state, new_state)
    _, vjp = jax.vjp(lambda xs, w: by_hand(model, xs, w, state, None)[0], (x, -x), weights)
    want_x_ct, want_w_ct = vjp(ct)
    np.testing.assert_allclose(rec2[0], x, atol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves((x_ct, w_ct)),
                    jax.tree_util.tree_leaves((want_x_ct, want_w_ct))):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_integer_items_pass_through_and_get_no_gradient():
    # (acc, x, mask): the mask is an int array carried along the stack.
    model = ReversibleSerial(
        ReversibleHalfResidual(tl.Fn('MaskedTanh', lambda x, m: jnp.tanh(x) * m)),
        ReversibleSelect([1, 0, 2]),
        ReversibleHalfResidual(tl.Dense(4)),
        ReversibleSwap())
    x = np.ones((1, 4), np.float32)
    mask = np.array([[1, 0, 1, 1]], np.int32)
    weights, state = model.init((shapes.signature(x), shapes.signature(x),
                                 shapes.signature(mask)))

    def f(w, x):
        out = model.pure_fn((x, x, mask), w, state, None)[0]
        assert out[2].dtype == np.int32
        return jnp.sum(out[0] * out[1])

    got = jax.grad(f)(weights, x)
    def g(w, x):
        out = by_hand(model, (x, x, mask), w, state, None)[0]
        return jnp.sum(out[0] * out[1])

    want = jax.grad(g)(weights, x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_memory_of_the_backward_pass_does_not_store_activations():
    # jax.grad through the custom_vjp keeps only the outputs (plus weights): the
    # compiled temporaries of a 12-layer model stay well below plain autodiff's.
    def temp_bytes(model_cls, n):
        model = model_cls(_blocks(n))
        x = np.ones((4, 64, 4), np.float32)
        weights, state = model.init((shapes.signature(x),) * 2)

        def loss(w, x):
            y = model.pure_fn((x, x), w, state, None)[0]
            return jnp.sum(y[0]) + jnp.sum(y[1])
        compiled = jax.jit(jax.grad(loss)).lower(weights, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temp_bytes(ReversibleSerial, 12) < 0.7 * temp_bytes(tl.Serial, 12)


@pytest.mark.slow
def test_memory_of_12_layers_is_that_of_2_with_attention_dropout():
    # Attention dropout draws a (1, 2, 256, 256) mask per layer (512 KiB). Plain autodiff
    # keeps such tensors for every layer; the reversible backward must recompute them
    # layer by layer (not hold every layer's mask from the start of the pass, which XLA's
    # scheduler does with masks that depend on the key alone: see reversible._tied).
    d, length = 16, 256
    mask_bytes = 1 * 2 * length * length * 4

    def temp_bytes(model_cls, n):
        model = model_cls([[ReversibleHalfResidual(
            tl.LayerNorm(), attention_layer=tl.SelfAttention(
                n_heads=2, d_qk=8, d_v=8, causal=True, attention_dropout=0.5, mode='train')),
            ReversibleSwap()] for _ in range(n)])
        x = np.ones((1, length, d), np.float32)
        weights, state = model.init((shapes.signature(x),) * 2)

        def loss(w, x, rng):
            y = model.pure_fn((x, x), w, state, rng)[0]
            return jnp.sum(y[0]) + jnp.sum(y[1] ** 2)
        compiled = jax.jit(jax.grad(loss)).lower(weights, x, jax.random.PRNGKey(0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain_extra = temp_bytes(tl.Serial, 12) - temp_bytes(tl.Serial, 2)
    reversible_extra = temp_bytes(ReversibleSerial, 12) - temp_bytes(ReversibleSerial, 2)
    # Not vacuous: plain autodiff keeps at least one mask-sized tensor per added layer.
    assert plain_extra >= 10 * mask_bytes
    # The 10 added reversible layers together cost less than one layer's mask (measured:
    # ~34 KiB; 4.5 MiB when every layer's mask was held from the start of the pass).
    assert reversible_extra < mask_bytes


def test_refusals():
    with pytest.raises(ValueError, match="not reversible"):
        ReversibleSerial(tl.Dense(2))
    layer = ReversibleHalfResidual(tl.Dense(3))
    sig = shapes.ShapeDtype((1, 2))
    layer.init((sig, sig))
    with pytest.raises(Exception, match="residual has shape"):
        layer((np.ones((1, 2), np.float32), np.ones((1, 2), np.float32)))
