"""MLP, Resnet50, WideResnet and the Atari networks: Trax 1.4.1 structure, shapes, configs, training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.fastmath import random
from retrax.layers.base import walk_layers
from retrax.models import resnet

RNG = np.random.default_rng(3)


def n_arrays(tree) -> int:
    return len(jax.tree_util.tree_leaves(tree))


# -- MLP ---------------------------------------------------------------------------------


def test_mlp_shape_and_weights_as_in_trax():
    model = models.MLP(layer_widths=(32, 16, 8))
    x = np.ones((7, 28, 28, 3), np.float32)
    weights, _ = model.init(shapes.signature(x))
    assert model(x).shape == (7, 8)
    flat = tl.flatten_weights_and_state(weights, ())[0]
    assert [w.shape for w in flat] == [(2352, 32), (32,), (32, 16), (16,), (16, 8), (8,)]


def test_mlp_equals_numpy_composition():
    model = models.MLP(layer_widths=(5, 4, 3), activation_fn=tl.Tanh, out_activation=True)
    x = RNG.normal(size=(2, 3, 2)).astype(np.float32)
    weights, _ = model.init(shapes.signature(x), rng=random.get_prng(1))
    h = x.reshape(2, -1).astype(np.float64)
    for w, b in (pair for pair in weights if len(pair) == 2):
        h = np.tanh(h @ np.asarray(w, np.float64) + b)
    np.testing.assert_allclose(model(x), h, rtol=1e-5, atol=1e-6)
    assert str(model).splitlines()[1].strip() == "Flatten_keep1"


def test_mlp_without_flatten_acts_on_the_last_axis():
    model = models.MLP(layer_widths=(6,), flatten=False)
    model.init(shapes.ShapeDtype((2, 5, 4)))
    assert model(np.ones((2, 5, 4), np.float32)).shape == (2, 5, 6)
    assert "Flatten" not in str(model)


def test_mlp_refuses_no_layers():
    with pytest.raises(ValueError, match="layer_widths must be a non-empty tuple"):
        models.MLP(layer_widths=())


def sgd_losses(model, x, labels, steps, lr):
    weights, state = model.init(shapes.signature(x), rng=random.get_prng(0))
    one_hot = jax.nn.one_hot(labels, 2)

    def loss_fn(w, s):
        logits, s = model.pure_fn(x, w, s, None)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * one_hot, -1)), s

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    losses = []
    for _ in range(steps):
        (loss, state), grads = step(weights, state)
        weights = jax.tree_util.tree_map(lambda w, g: w - lr * g, weights, grads)
        losses.append(float(loss))
    return losses, state


def bright_and_dark_images(n, size=8):
    """Class 1 has a brighter centre square; the noise is the same in every run."""
    labels = np.arange(n) % 2
    x = np.random.default_rng(n).normal(size=(n, size, size, 3)).astype(np.float32) * 0.3
    x[labels == 1, size // 4: 3 * size // 4, size // 4: 3 * size // 4] += 1.0
    return x, labels


def test_sgd_steps_reduce_the_mlp_loss_on_tiny_images():
    x, labels = bright_and_dark_images(16)
    losses, _ = sgd_losses(models.MLP(layer_widths=(16, 2)), x, labels, steps=20, lr=0.1)
    assert losses[-1] < 0.5 * losses[0]


# -- ResNets -------------------------------------------------------------------------------


def test_resnet50_output_shape_and_weight_count():
    model = models.Resnet50(d_hidden=8, n_output_classes=10)
    sig = shapes.ShapeDtype((3, 256, 256, 3))
    assert model.output_signature(sig).shape == (3, 10)
    w_sig, s_sig = model.weights_and_state_signature(sig)
    flat_w, flat_s = tl.flatten_weights_and_state(w_sig, s_sig)
    # 53 convolutions and 53 BatchNorms (kernel + bias, beta + gamma each), the Dense.
    assert len(flat_w) == 53 * 4 + 2 and len(flat_s) == 53 * 3
    # AvgPool(7, 7) leaves 2x2 windows of 32 * d_hidden channels at 256 pixels.
    assert flat_w[-2].shape == (2 * 2 * 256, 10)
    assert flat_w[0].shape == (7, 7, 3, 8)


def test_resnet50_with_filter_response_norm():
    model = models.Resnet50(d_hidden=2, n_output_classes=3, norm=tl.FilterResponseNorm,
                            non_linearity=tl.ThresholdedLinearUnit)
    sig = shapes.ShapeDtype((1, 224, 224, 3))
    assert model.output_signature(sig).shape == (1, 3)
    assert "FilterResponseNorm" in str(model) and "BatchNorm" not in str(model)


def test_blocks_are_lists_in_trax_order():
    block = resnet.ConvBlock(3, (2, 3, 4), (2, 2), tl.BatchNorm, tl.Relu, mode="eval")
    assert len(block) == 2 and isinstance(block[0], tl.Layer)
    layer = tl.Serial(block)
    weights, state = layer.init(shapes.ShapeDtype((1, 6, 6, 5)))
    assert layer.output_signature(shapes.ShapeDtype((1, 6, 6, 5))).shape == (1, 3, 3, 4)
    shapes_w = [w.shape for w in tl.flatten_weights_and_state(weights, state)[0]]
    # shortcut first (Trax's Branch puts the shortcut on top), then the main path.
    assert shapes_w[:4] == [(1, 1, 5, 4), (4,), (4,), (4,)]
    assert shapes_w[4] == (1, 1, 5, 2)
    identity = tl.Serial(resnet.IdentityBlock(3, (2, 3, 5), tl.BatchNorm, tl.Relu))
    assert identity.output_signature(shapes.ShapeDtype((2, 4, 4, 5))).shape == (2, 4, 4, 5)
    with pytest.raises(ValueError, match="filters must be three ints"):
        resnet.IdentityBlock(3, (2, 3), tl.BatchNorm, tl.Relu)


def test_wide_resnet_shape_and_state_count():
    model = models.WideResnet(n_blocks=1, n_output_classes=10)
    x = np.ones((3, 32, 32, 3), np.float32)
    weights, state = model.init(shapes.signature(x))
    flat_w, flat_s = tl.flatten_weights_and_state(weights, state)
    assert len(flat_w) == 36 and len(flat_s) == 7 * 3  # as Trax's checkpoint of this model
    assert flat_w[-2].shape == (64, 10)
    assert model.output_signature(shapes.signature(x)).shape == (3, 10)


def test_wide_resnet_group_of_one_block_doubles_through_an_empty_residual():
    # Trax's Residual() of no layers adds its input to itself.
    group = tl.Serial(resnet.WideResnetGroup(1, 2, mode="eval"))
    x = RNG.normal(size=(1, 4, 4, 2)).astype(np.float32)
    group.init(shapes.signature(x))
    first = group.sublayers[0]
    np.testing.assert_allclose(group(x), 2 * np.asarray(first(x)), rtol=1e-6)


def test_sgd_steps_reduce_a_small_resnet_loss_and_move_batch_norm_statistics():
    x, labels = bright_and_dark_images(8)
    model = tl.Serial(tl.Conv(4, (3, 3), padding="SAME"),
                      resnet.WideResnetGroup(1, 4, bn_momentum=0.9),
                      tl.BatchNorm(momentum=0.9), tl.Relu(), tl.AvgPool((8, 8)), tl.Flatten(),
                      tl.Dense(2))
    losses, state = sgd_losses(model, x, labels, steps=15, lr=1.0)
    assert losses[-1] < 0.25 * losses[0]
    n_batches = [int(leaf) for leaf in jax.tree_util.tree_leaves(state) if leaf.ndim == 0]
    assert n_batches == [15, 15, 15]


# -- Atari networks ------------------------------------------------------------------------


def test_atari_cnn_shapes_and_frame_stacking():
    model = models.AtariCnn(hidden_sizes=(4, 4), output_size=6)
    model.init(shapes.ShapeDtype((1, 1, 28, 28, 3)))
    x = np.arange(2 * 3 * 28 * 28 * 3).reshape(2, 3, 28, 28, 3)
    assert model(x).shape == (2, 3, 6)
    first_conv = next(layer for layer in walk_layers(model) if isinstance(layer, tl.Conv))
    assert first_conv.weights[0].shape == (5, 5, 12, 4)  # 4 frames x 3 channels
    body = models.AtariCnnBody(hidden_sizes=(2, 3, 4), output_size=5)
    assert body.output_signature(shapes.ShapeDtype((1, 2, 36, 36, 1), np.uint8)).shape == (1, 2, 5)


def test_frame_stack_mlp_sees_only_the_last_frames():
    model = models.FrameStackMLP(n_frames=2, hidden_sizes=(16,), output_size=6)
    model.init(shapes.ShapeDtype((1, 1, 3)))
    x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    y = np.asarray(model(x))
    assert y.shape == (2, 5, 6)
    changed = x.copy()
    changed[:, 1] += 5.0  # step 1 is seen by steps 1 and 2 only
    y2 = np.asarray(model(changed))
    np.testing.assert_array_equal(y2[:, [0, 3, 4]], y[:, [0, 3, 4]])
    assert not np.allclose(y2[:, 1], y[:, 1]) and not np.allclose(y2[:, 2], y[:, 2])


# -- configs -----------------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [
    ("MLP", {"layer_widths": (4, 2), "activation_fn": tl.Gelu}),
    ("Resnet50", {"d_hidden": 2, "norm": tl.FilterResponseNorm,
                  "non_linearity": tl.ThresholdedLinearUnit}),
    ("WideResnet", {"n_blocks": 2, "widen_factor": 2}),
    ("AtariCnn", {}), ("AtariCnnBody", {}), ("FrameStackMLP", {}),
])
def test_each_model_records_its_config_and_from_config_rebuilds_it(name, kwargs):
    model = models.REGISTRY[name](**kwargs, mode="eval")
    config = models.config_of(model)
    assert config["name"] == name and "mode" not in config["kwargs"]
    again = models.from_config(config, mode="eval")
    assert models.config_of(again) == config and str(again) == str(model)
    if name == "MLP":
        assert config["kwargs"]["activation_fn"] == "Gelu"


@pytest.mark.slow
def test_resnet50_runs_on_trax_test_images():
    # Trax's own shape test: d_hidden=8 on three 256x256 images.
    model = models.Resnet50(d_hidden=8, n_output_classes=10)
    x = np.ones((3, 256, 256, 3), np.float32)
    weights, state = model.init(shapes.signature(x))
    y, new_state = jax.jit(model.pure_fn)(x, weights, state, None)
    assert y.shape == (3, 10) and bool(jnp.all(jnp.isfinite(y)))
    counts = [int(a) for a in jax.tree_util.tree_leaves(new_state) if a.ndim == 0]
    assert counts == [1] * 53
    eval_y = tl.with_mode(model, "eval").pure_fn(x, weights, new_state, None)[0]
    assert eval_y.shape == (3, 10)
