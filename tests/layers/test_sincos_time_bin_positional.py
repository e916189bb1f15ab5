"""tl.SinCosPositionalEncoding and tl.TimeBinPositionalEncoding (Trax's research position
encodings) against NumPy float64: eval, predict == eval, train offsets, bad input."""

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def sincos(positions, d):
    freq = np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))
    angles = np.asarray(positions, np.float64)[:, None] * freq
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def test_sincos_eval_predict_and_train_offsets():
    x = np.random.RandomState(0).randn(2, 5, 6).astype(np.float32)
    ev = tl.SinCosPositionalEncoding(mode="eval")
    np.testing.assert_allclose(np.asarray(ev(x)), x + sincos(np.arange(5), 6), atol=1e-5)
    pred = tl.SinCosPositionalEncoding(mode="predict")
    _, state = pred.init(shapes.ShapeDtype((2, 1, 6)))
    step, outs = jax.jit(pred.pure_fn), []
    for t in range(5):
        y, state = step(x[:, t:t + 1], (), state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(ev(x)), atol=1e-5)
    # 'train': positions start at some s in [0, add_offset), the same for the batch.
    train = tl.SinCosPositionalEncoding(add_offset=16, start_from_zero_one_in=1000,
                                        mode="train")
    starts, fn = set(), jax.jit(train.pure_fn)
    for seed in range(6):
        y = np.asarray(fn(x, (), (), jax.random.PRNGKey(seed))[0])
        found = [s for s in range(16)
                 if np.allclose(y, x + sincos(np.arange(s, s + 5), 6), atol=1e-5)]
        assert len(found) == 1, seed
        starts.add(found[0])
    assert len(starts) > 1
    zero = tl.SinCosPositionalEncoding(start_from_zero_one_in=1, mode="train")
    np.testing.assert_allclose(np.asarray(zero.pure_fn(x, (), (), jax.random.PRNGKey(0))[0]),
                               np.asarray(ev(x)), atol=1e-6)
    with pytest.raises(ValueError, match="even d_model"):
        ev(np.zeros((1, 3, 5), np.float32))


def test_time_bin_replaces_the_last_three_features():
    x = np.random.RandomState(1).randn(2, 7, 5).astype(np.float32)
    ev = tl.TimeBinPositionalEncoding(time_bin_length=3, mode="eval")
    t = np.arange(7)
    want = np.stack([1 / (1 + t // 3), (t % 3) / 3, (t // 3) % 2], -1)
    y = np.asarray(ev(x))
    np.testing.assert_array_equal(y[..., :2], x[..., :2])
    np.testing.assert_allclose(y[..., 2:], np.broadcast_to(want, (2, 7, 3)), atol=1e-6)
    pred = tl.TimeBinPositionalEncoding(time_bin_length=3, mode="predict")
    _, state = pred.init(shapes.ShapeDtype((2, 1, 5)))
    step = jax.jit(pred.pure_fn)
    prompt, state = step(x[:, :4], (), state, None)  # a prompt, then tokens
    outs = [np.asarray(prompt)]
    for i in range(4, 7):
        out, state = step(x[:, i:i + 1], (), state, None)
        outs.append(np.asarray(out))
    np.testing.assert_allclose(np.concatenate(outs, 1), y, atol=1e-6)
    assert np.asarray(state).tolist() == [7, 7]
    # Narrower than the features: the last ones remain (Trax's behaviour).
    np.testing.assert_allclose(np.asarray(ev(x[..., :2]))[0], want[:, 1:], atol=1e-6)
    assert tl.TimeBinPositionalEncoding.num_features == 3
