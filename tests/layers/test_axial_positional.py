"""tl.AxialPositionalEncoding: Trax's weight layout, grid arithmetic, predict, dropout, errors."""

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def _layer(mode="eval", **kw):
    args = dict(shape=(3, 4), d_embs=(2, 3), mode=mode)
    args.update(kw)
    layer = tl.AxialPositionalEncoding(**args)
    layer.init(shapes.ShapeDtype((2, 12, 5)), rng=jax.random.PRNGKey(0))
    return layer


def test_weights_layout_and_values_by_hand():
    layer = _layer()
    w0, w1 = (np.asarray(w, np.float64) for w in layer.weights)
    assert w0.shape == (1, 3, 1, 2) and w1.shape == (1, 1, 4, 3)
    assert 0.5 < np.std(np.concatenate([w0.ravel(), w1.ravel()])) < 2.0  # stddev 1
    x = np.random.RandomState(0).randn(2, 12, 5).astype(np.float32)
    expected = np.stack([np.concatenate([w0[0, p // 4, 0], w1[0, 0, p % 4]])
                         for p in range(12)])
    np.testing.assert_allclose(np.asarray(layer(x)), x + expected[None], atol=1e-6)
    # A shorter sequence takes the first positions.
    np.testing.assert_allclose(np.asarray(layer(x[:, :7])), x[:, :7] + expected[None, :7],
                               atol=1e-6)


def test_predict_token_by_token_equals_eval():
    ev = _layer()
    pred = _layer(mode="predict")
    pred.weights = ev.weights
    x = np.random.RandomState(1).randn(2, 12, 5).astype(np.float32)
    step = jax.jit(pred.pure_fn)
    state, outs = pred.state, []
    for t in range(0, 12, 3):
        y, state = step(x[:, t:t + 3], pred.weights, state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), np.asarray(ev(x)), atol=1e-6)
    assert int(state) == 12


def test_dropout_broadcast_over_the_grid_drops_whole_features():
    layer = _layer(mode="train", dropout=0.5, dropout_broadcast_dims=(1, 2))
    x = np.zeros((2, 12, 5), np.float32)
    y, _ = layer.pure_fn(x, layer.weights, layer.state, jax.random.PRNGKey(3))
    ev = _layer()
    ev.weights = layer.weights
    ratio = np.asarray(y) / np.asarray(ev(x))
    kept = []
    for b in range(2):
        for f in range(5):
            assert np.allclose(ratio[b, :, f], 0.0) or np.allclose(ratio[b, :, f], 2.0)
            kept.append(bool(ratio[b, 0, f] > 1))
    assert 0 < sum(kept) < 10  # this key drops some features and keeps others


def test_bad_shapes_say_what_to_change():
    with pytest.raises(ValueError, match="sum to 5"):
        tl.AxialPositionalEncoding(shape=(3, 4), d_embs=(2, 2)).init(
            shapes.ShapeDtype((1, 12, 5)))
    with pytest.raises(ValueError, match="at most 12"):
        _layer()(np.zeros((1, 16, 5), np.float32))
    with pytest.raises(ValueError, match="equally long"):
        tl.AxialPositionalEncoding(shape=(3, 4), d_embs=(5,))
