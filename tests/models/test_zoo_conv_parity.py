"""Parity with real Trax 1.4.1 for the feed-forward and convolutional zoo (tests/fixtures/trax/trax-1.4.1-zoo).

- ``mlp/``: ``MLP(layer_widths=(16, 8))`` on (3, 4, 5) floats;
- ``wide_resnet/``: ``WideResnet(n_blocks=1, n_output_classes=5)`` on (2, 8, 8, 3)
  images, checkpoint with BatchNorm state. On 8x8 images Trax's final
  ``AvgPool(8, 8)`` sees a 2x2 map and pools to nothing, so its output is the
  Dense bias (kernel (0, 5)); the trunk is therefore also checked, with the
  checkpoint's kernels and non-trivial BatchNorm statistics, against a NumPy
  float64 composition of Trax's WideResnet.

The checkpoints are loaded the way a user loads them:
``model.init_from_file(path, weights_only=False, input_signature=...)``.
"""

from __future__ import annotations

import json
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from zoo_fixtures import ZOO, kwargs_of

from retrax import layers as tl
from retrax import models, shapes
from retrax.compat.trax_pickle import read_trax_checkpoint
from retrax.layers.base import walk_layers

NAMES = ["mlp", "wide_resnet"]
RTOL = 1e-5  # relative to the largest |output|


def loaded(name: str, mode: str = "eval"):
    folder = ZOO / name
    assert (folder / "meta.json").exists(), f"missing fixture folder {folder}"
    meta = json.loads((folder / "meta.json").read_text())
    model = getattr(models, meta["model"])(**kwargs_of(meta), mode=mode)
    x = np.load(folder / "input0.npy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # WideResnet's empty 8x8 pooling
        model.init_from_file(str(folder / "model.pkl.gz"), weights_only=False,
                             input_signature=shapes.signature(x))
    return model, x, np.load(folder / "output0.npy"), read_trax_checkpoint(folder / "model.pkl.gz")


@pytest.mark.parametrize("name", NAMES)
def test_the_checkpoint_loads_one_to_one(name):
    model, _, _, checkpoint = loaded(name)
    flat_w, flat_s = tl.flatten_weights_and_state(model.weights, model.state)
    assert len(flat_w) == len(checkpoint.flat_weights)
    for ours, theirs in zip(flat_w, checkpoint.flat_weights):
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
        np.testing.assert_array_equal(ours, theirs)
    assert len(flat_s) == len(checkpoint.flat_state)
    for ours, theirs in zip(flat_s, checkpoint.flat_state):
        assert ours.shape == theirs.shape and np.dtype(ours.dtype) == np.dtype(theirs.dtype)
        np.testing.assert_array_equal(ours, theirs)
    if name == "wide_resnet":  # 7 BatchNorms: (running_mean, running_var, n_batches) each
        assert [s.shape for s in flat_s[:3]] == [(1, 1, 1, 16), (1, 1, 1, 16), ()]


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_match_trax(name):
    model, x, expected, _ = loaded(name)
    weights, state = model.weights, model.state
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        jitted = jax.jit(lambda x: model.pure_fn(x, weights, state, None)[0])(x)
        eager = model(x)
    tolerance = RTOL * float(np.abs(expected).max())
    for y in (jitted, eager):
        y = np.asarray(y)
        assert y.shape == expected.shape and y.dtype == expected.dtype
        assert float(np.abs(y - expected).max()) <= tolerance


# -- the WideResnet trunk against NumPy float64 ---------------------------------------------


def conv_same(x, w, b, stride):
    """'SAME' 3x3 NHWC/HWIO convolution in float64, XLA's padding (odd position at the end)."""
    k = w.shape[0]
    pads = []
    for size in x.shape[1:3]:
        total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = np.pad(x, [(0, 0), pads[0], pads[1], (0, 0)])
    oh, ow = math.ceil(x.shape[1] / stride), math.ceil(x.shape[2] / stride)
    y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    for di in range(k):
        for dj in range(k):
            y += xp[:, di: di + stride * (oh - 1) + 1: stride,
                    dj: dj + stride * (ow - 1) + 1: stride] @ w[di, dj]
    return y + b


def batch_norm(x, beta, gamma, mean, var, train):
    if train:
        mean, var = x.mean((0, 1, 2), keepdims=True), x.var((0, 1, 2), keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def wide_resnet_trunk(x, flat_w, flat_s, train):
    """Trax's WideResnet(n_blocks=1) up to its final Relu, from the flat weights and state."""
    w = iter(np.asarray(a, np.float64) for a in flat_w)
    s = iter(np.asarray(a, np.float64) for a in flat_s)
    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731

    def bn(v):
        beta, gamma = next(w), next(w)
        mean, var, _ = next(s), next(s), next(s)
        return batch_norm(v, beta, gamma, mean, var, train)

    h = conv_same(x, next(w), next(w), 1)
    for stride in (1, 2, 2):
        shortcut = conv_same(h, next(w), next(w), stride)  # Branch: shortcut weights first
        main = conv_same(relu(bn(h)), next(w), next(w), stride)
        main = conv_same(relu(bn(main)), next(w), next(w), 1)
        h = 2 * (shortcut + main)  # the group's empty second Residual doubles
    return relu(bn(h))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_wide_resnet_trunk_with_the_checkpoint_kernels_and_batch_norm_statistics(mode):
    model, x, _, checkpoint = loaded("wide_resnet", mode)
    rng = np.random.default_rng(5)
    norms = [layer for layer in walk_layers(model) if isinstance(layer, tl.BatchNorm)]
    assert len(norms) == 7
    for bn in norms:  # as if trained: beta ~0.1, gamma and variances in [0.5, 1.5], 12 batches
        c = bn.weights[0].shape[0]
        bn.weights = (jnp.asarray(rng.normal(size=c) * 0.1, jnp.float32),
                      jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32))
        bn.state = (jnp.asarray(rng.normal(size=(1, 1, 1, c)) * 0.1, jnp.float32),
                    jnp.asarray(rng.uniform(0.5, 1.5, (1, 1, 1, c)), jnp.float32),
                    jnp.array(12, jnp.int32))
    flat_w, flat_s = tl.flatten_weights_and_state(model.weights, model.state)
    kernels = [w for w in flat_w if w.ndim == 4]
    assert len(kernels) == 10
    for ours, theirs in zip(kernels, [w for w in checkpoint.flat_weights if w.ndim == 4]):
        np.testing.assert_array_equal(ours, theirs)
    trunk = tl.Serial(model.sublayers[:10])  # ToFloat .. final Relu, sharing the layers
    assert str(model.sublayers[10]) == "AvgPool(8,8)"
    y, new_state = trunk.pure_fn(x, trunk.weights, trunk.state, None)
    y = np.asarray(y)
    expected = wide_resnet_trunk(x.astype(np.float64), flat_w, flat_s, train=mode == "train")
    assert y.shape == expected.shape == (2, 2, 2, 64)
    assert float(np.abs(y - expected).max()) <= RTOL * float(np.abs(expected).max())
    counts = [int(a) for a in tl.flatten_weights_and_state((), new_state)[1] if a.ndim == 0]
    assert counts == [13 if mode == "train" else 12] * 7
