"""tl.InfinitePositionalEncoding against a NumPy float64 reference of Trax 1.4.1's formula:
eval, predict (prompt and token by token) == eval, time-bin channels, weights."""

import jax
import numpy as np
from jax.extend import random as jax_extend_random

from retrax import layers as tl
from retrax import shapes


def reference(length, d, drift=0.03):
    """Trax's embeddings without affine phase or transform, in float64."""
    half = (d + 1) // 2
    key = jax.random.split(jax.random.PRNGKey(234234535))[0]
    counters = np.arange(length * half, dtype=np.uint32)
    words = np.asarray(jax_extend_random.threefry_2x32(
        key, np.concatenate([counters, np.zeros_like(counters)])))[:length * half]
    steps = words.reshape(length, half).astype(np.float64) / (2 ** 31 - 1) * 3 ** .5
    noise = np.cumsum(steps, axis=0) * drift ** .5
    t, c = np.mgrid[0:length, 0:d]
    d_drift = drift ** (half / (d // 2)) if d > 2 else drift
    freq = np.geomspace(.5, .5 * d_drift ** 2, num=half)[c // 2]
    cycles = (c % 2) / 4 + freq * t + noise[:, c[0] // 2] / 4
    return np.cos(2 * np.pi * cycles)


def _layer(mode, **kw):
    pe = tl.InfinitePositionalEncoding(affine=False, mode=mode, **kw)
    pe.init(shapes.ShapeDtype((2, 1, 7)), rng=jax.random.PRNGKey(0))
    return pe


def test_eval_matches_trax_formula_and_predict_matches_eval():
    x = np.random.RandomState(0).randn(2, 40, 7).astype(np.float32)
    ev = _layer("eval", transform="none")
    want = np.asarray(ev(x))
    np.testing.assert_allclose(want, x + reference(40, 7), atol=2e-4)
    pred = _layer("predict", transform="none")
    step = jax.jit(pred.pure_fn)
    y, state = step(x[:, :33], (), pred.state, None)  # a prompt, then one token at a time
    outs = [np.asarray(y)]
    for t in range(33, 40):
        y, state = step(x[:, t:t + 1], (), state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, 1), want, atol=1e-4)
    assert np.asarray(state[0]).tolist() == [40, 40]


def test_transforms_and_time_bin_channels():
    x = np.zeros((1, 6, 7), np.float32)
    anyt = _layer("eval")  # transform='any': an orthogonal (7, 7) map
    w = np.asarray(anyt.weights)
    np.testing.assert_allclose(w @ w.T, np.eye(7), atol=1e-5)
    np.testing.assert_allclose(np.asarray(anyt(x))[0], reference(6, 7) @ w, atol=1e-4)
    diag = _layer("eval", transform="diag")
    assert diag.weights.shape == (7,)
    binned = _layer("eval", transform="none", time_bin_length=4)
    y = np.asarray(binned(x))[0]
    np.testing.assert_allclose(y[:, :4], reference(6, 7)[:, :4], atol=1e-4)
    t = np.arange(6)
    np.testing.assert_allclose(y[:, 4:], np.stack([1 / (1 + t // 4), t % 4 / 4, t // 4 % 2], -1),
                               atol=1e-6)
