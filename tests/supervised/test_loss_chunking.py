"""Loop(..., loss_chunk_size=n): the final Dense and the cross-entropy computed over chunks
of positions; the same loss and gradients as unchunked, less memory, clear refusals."""

from __future__ import annotations

import io
import warnings

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import models, shapes
from retrax.supervised import training
from retrax.supervised.loss_chunking import LossChunkedModel


def _lm(vocab=16, max_len=32, **kw):
    return models.TransformerLM(vocab_size=vocab, d_model=8, d_ff=16, n_layers=1, n_heads=2,
                                max_len=max_len, **kw)


def _batch():
    x = (np.arange(21).reshape(3, 7) * 5 % 15 + 1).astype(np.int32)
    w = np.ones((3, 7), np.float32)
    w[2, 4:] = 0.0  # padding: weight 0
    return x, x, w


@pytest.mark.parametrize("loss,chunk", [
    pytest.param(tl.CrossEntropyLoss, 4, marks=pytest.mark.slow),
    pytest.param(lambda: tl.WeightedCategoryCrossEntropy(0.1), 21, marks=pytest.mark.slow),
    pytest.param(tl.CrossEntropyLossWithLogSoftmax, 50, marks=pytest.mark.slow)])
def test_chunked_loss_and_gradients_equal_the_unchunked(loss, chunk):
    # 21 positions in chunks of 4 (the last one padded), of 21, of 50 (one padded chunk).
    model = _lm(dropout=0.1)
    x, y, w = _batch()
    weights, state = model.init(shapes.signature(x))
    loss_layer = loss()
    lw, ls = loss_layer.init((model.output_signature(shapes.signature(x)),
                              shapes.signature(y), shapes.signature(w)))
    view = LossChunkedModel(model, loss_layer, chunk)
    rng = jax.random.PRNGKey(4)  # train mode: the dropout masks must be the same too

    def chunked(ws):
        return view.pure_fn((x, y, w), ws, state, rng)[0]

    def whole(ws):
        return loss_layer.pure_fn((model.pure_fn(x, ws, state, rng)[0], y, w), lw, ls, None)[0]

    (got, got_grads), (want, want_grads) = (jax.jit(jax.value_and_grad(f))(weights)
                                            for f in (chunked, whole))
    assert float(want) > 1.0
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(got_grads), jax.tree_util.tree_leaves(want_grads)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow  # two Loops train
def test_loop_with_loss_chunk_size_trains_like_without():
    x, y, w = _batch()

    def data():
        while True:
            yield x, y, w

    losses = []
    for chunk in (0, 8):
        task = training.TrainTask(data(), tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning about the chunk size any more
            loop = training.Loop(_lm(dropout=0.1), task, loss_chunk_size=chunk,
                                 stdout=io.StringIO())
        loop.run(2)
        losses.append(np.asarray(loop.history.get("train", "metrics/CrossEntropyLoss")))
        loop.close()
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)


@pytest.mark.slow
def test_chunked_loss_keeps_less_memory():
    # Vocabulary 4096, 2 x 256 positions: the logits (and their softmax for the gradient)
    # are 8 MiB each; in chunks of 64 positions they are 1 MiB at a time.
    model = _lm(vocab=4096, max_len=256, dropout=0.0)
    x = np.ones((2, 256), np.int32)
    w = np.ones((2, 256), np.float32)
    weights, state = model.init(shapes.signature(x))
    loss_layer = tl.CrossEntropyLoss()
    lw, ls = loss_layer.init((model.output_signature(shapes.signature(x)),
                              shapes.signature(x), shapes.signature(w)))
    view = LossChunkedModel(model, loss_layer, 64)

    def temp_bytes(f):
        compiled = jax.jit(jax.grad(f)).lower(weights).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    whole = temp_bytes(lambda ws: loss_layer.pure_fn(
        (model.pure_fn(x, ws, state, None)[0], x, w), lw, ls, None)[0])
    chunked = temp_bytes(lambda ws: view.pure_fn((x, x, w), ws, state, None)[0])
    logits_bytes = 2 * 256 * 4096 * 4
    assert whole >= 2 * logits_bytes  # not vacuous: the whole loss holds the logits twice
    # Measured: 26.3 MiB whole, 5.4 MiB in chunks of 64 positions.
    assert chunked < whole - 1.5 * logits_bytes


def test_refusals_name_the_fix():
    with pytest.raises(ValueError, match="cross-entropy losses"):
        LossChunkedModel(_lm(), tl.L2Loss(), 4)
    with pytest.raises(ValueError, match="ending in Dense"):
        LossChunkedModel(tl.Serial(tl.Dense(4), tl.Relu()), tl.CrossEntropyLoss(), 4)
    with pytest.raises(ValueError, match="loss_chunk_size must be an int >= 0"):
        training.Loop(_lm(), training.TrainTask(iter([_batch()]), tl.CrossEntropyLoss(),
                                                trax.optimizers.Adam(0.01)),
                      loss_chunk_size=-1)
