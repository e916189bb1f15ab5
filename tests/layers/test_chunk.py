"""tl.Chunk (Trax 1.4.1 combinators.Chunk): a layer run on batch chunks, Trax's layout."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random
from retrax.layers import combinators


def center_over_batch():
    """A layer whose output depends on the whole batch it sees: shows the chunks."""
    return tl.Fn("CenterOverBatch", lambda x: x - x.mean(axis=0))


def test_chunk_is_in_combinators_and_tl():
    assert combinators.Chunk is tl.Chunk


def test_each_chunk_is_run_on_its_own_rows():
    x = np.array([[1.0], [3.0], [10.0], [20.0], [0.0], [4.0]], np.float32)
    y = tl.Chunk(center_over_batch(), 2)(x)
    # Chunks [1, 3], [10, 20], [0, 4]: each centred on its own mean (2, 15, 2).
    assert y.tolist() == [[-1.0], [1.0], [-5.0], [5.0], [-2.0], [2.0]]
    y3 = tl.Chunk(center_over_batch(), 3)(x)
    # Chunks [1, 3, 10] (mean 14/3) and [20, 0, 4] (mean 8).
    np.testing.assert_allclose(
        y3[:, 0], [1 - 14 / 3, 3 - 14 / 3, 10 - 14 / 3, 12.0, -8.0, -4.0], rtol=1e-6)


def test_unchunkable_batch_runs_as_one_chunk_by_default():
    x = np.array([[1.0], [3.0], [10.0], [20.0]], np.float32)
    y = tl.Chunk(center_over_batch(), 3)(x)    # 3 does not divide 4
    assert y.tolist() == [[-7.5], [-5.5], [1.5], [11.5]]


def test_unchunkable_batch_raises_when_asked():
    chunked = tl.Chunk(tl.Dense(4), 3, pass_unchunkable=False)
    chunked.init(shapes.ShapeDtype((6, 3)))
    with pytest.raises(tl.LayerError) as e:
        chunked(np.ones((2, 3), np.float32))
    msg = str(e.value)
    assert "chunk_size 3 must divide the batch size" in msg
    assert "batch size 2 (shape (2, 3))" in msg and "pass_unchunkable=True" in msg
    assert e.value.layer_path == "Serial[0] > ReshapeToChunks"
    with pytest.raises(tl.LayerError, match="chunk_size 3 must divide"):
        tl.Chunk(tl.Dense(4), 3, pass_unchunkable=False).init(shapes.ShapeDtype((4, 3)))


def test_dense_chunked_equals_numpy_and_the_unchunked_layer():
    dense = tl.Dense(2)
    chunked = tl.Chunk(dense, 2)
    weights, state = chunked.init(shapes.ShapeDtype((4, 3)))
    # Trax's layout: Serial(ReshapeToChunks, Scan(layer), ReshapeFromChunks).
    assert len(weights) == 3 and weights[0] == () and weights[2] == ()
    (w, b), = weights[1]
    assert w.shape == (3, 2) and b.shape == (2,)
    assert state == ((), ((), ()), ())
    w = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 3.0]], np.float32)
    b = np.array([0.25, -0.5], np.float32)
    chunked.weights = ((), ((w, b),), ())
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    want = x.astype(np.float64) @ w.astype(np.float64) + b
    np.testing.assert_allclose(chunked(x), want, rtol=1e-6)
    np.testing.assert_allclose(dense(x), want, rtol=1e-6)   # the shared Dense, unchunked
    # Integer inputs (Trax's own test feeds ints) give the same numbers.
    np.testing.assert_allclose(chunked(x.astype(np.int32)), want, rtol=1e-6)


def test_printing_and_arity():
    chunked = tl.Chunk(tl.Dense(4), 2)
    assert str(chunked) == (
        "Serial[\n  ReshapeToChunks\n  Scan[\n    Dense_4\n  ]\n  ReshapeFromChunks\n]"
    )
    assert (chunked.n_in, chunked.n_out) == (1, 1)
    two_in_two_out = tl.Fn("SumDiff", lambda a, b: (a + b, a - b), n_out=2)
    chunked2 = tl.Chunk(two_in_two_out, 2)
    assert (chunked2.n_in, chunked2.n_out) == (2, 2)


def test_several_inputs_and_outputs_are_all_chunked():
    def f(a, b):
        # Per-chunk sums show the chunking in both outputs.
        return a + b.sum(axis=0), a * 0 + a.shape[0]
    chunked = tl.Chunk(tl.Fn("F", f, n_out=2), 2)
    a = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    b = np.array([10.0, 20.0, 30.0, 40.0], np.float32)
    s, n = chunked((a, b))
    assert s.tolist() == [31.0, 32.0, 73.0, 74.0]
    assert n.tolist() == [2.0, 2.0, 2.0, 2.0]


def test_chunk_size_below_one_returns_the_layer():
    dense = tl.Dense(3)
    assert tl.Chunk(dense, 0) is dense
    assert tl.Chunk(dense, -1) is dense


def test_bad_arguments():
    with pytest.raises(ValueError, match="chunk_size must be an int; got 2.5"):
        tl.Chunk(tl.Dense(3), 2.5)
    with pytest.raises(ValueError, match="layer must be a layer; got list"):
        tl.Chunk([tl.Dense(3)], 2)


def test_jit_equals_eager_and_gradients_match_the_unchunked_layer():
    block = tl.Serial(tl.Dense(5), tl.Relu(), tl.Dense(2))
    chunked = tl.Chunk(block, 2)
    x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    weights, state = chunked.init(shapes.signature(x), rng=random.get_prng(1))
    eager, _ = chunked.pure_fn(x, weights, state, None)
    jitted, _ = jax.jit(chunked.pure_fn)(x, weights, state, None)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)
    inner = weights[1][0]
    plain, _ = block.pure_fn(x, inner, state[1][0], None)
    np.testing.assert_allclose(eager, plain, rtol=1e-6, atol=1e-7)

    def loss_chunked(w):
        return (chunked.pure_fn(x, ((), (w,), ()), state, None)[0] ** 2).sum()

    def loss_plain(w):
        return (block.pure_fn(x, w, state[1][0], None)[0] ** 2).sum()

    g_chunked = jax.tree_util.tree_leaves(jax.grad(loss_chunked)(inner))
    g_plain = jax.tree_util.tree_leaves(jax.grad(loss_plain)(inner))
    for a, b in zip(g_chunked, g_plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_chunk_inside_a_model_same_seed_same_weights():
    def model():
        return tl.Serial(tl.Dense(4), tl.Chunk(tl.Serial(tl.Dense(4), tl.Relu()), 2), tl.Dense(1))
    sig = shapes.ShapeDtype((4, 3))
    w1, _ = model().init(sig, rng=random.get_prng(3))
    w2, _ = model().init(sig, rng=random.get_prng(3))
    for a, b in zip(jax.tree_util.tree_leaves(w1), jax.tree_util.tree_leaves(w2)):
        np.testing.assert_array_equal(a, b)
    m = model()
    m.init(sig, rng=random.get_prng(3))
    assert m(np.ones((4, 3), np.float32)).shape == (4, 1)
