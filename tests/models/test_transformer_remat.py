"""remat=True on the Transformer models: the same model (tree, weights, outputs, dropout
masks, gradients) whose training keeps only each residual block's inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.layers.remat import RematSerial


def _grads(model, weights, state, inputs, rng, pick):
    def loss(w):
        return pick(model.pure_fn(inputs, w, state, rng)[0])
    return jax.jit(jax.value_and_grad(loss))(weights)


def _assert_same(a, b):
    (va, ga), (vb, gb) = a, b
    np.testing.assert_allclose(va, vb, rtol=1e-6)
    leaves_a, leaves_b = jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)
    assert len(leaves_a) == len(leaves_b)
    scale = max(float(jnp.abs(g).max()) for g in leaves_b)
    assert scale > 0.1  # the gradients are not all ~0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-5 * scale)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_lm_with_remat_is_the_same_model_with_the_same_gradients():
    kw = dict(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2, max_len=32,
              dropout=0.2)
    plain = models.TransformerLM(**kw)
    remat = models.TransformerLM(remat=True, **kw)
    assert str(remat) == str(plain)
    x = (np.arange(12).reshape(2, 6) % 15 + 1).astype(np.int32)
    weights, state = plain.init(shapes.signature(x))
    w2, _ = remat.init(shapes.signature(x))
    assert jax.tree_util.tree_structure(w2) == jax.tree_util.tree_structure(weights)
    rng = jax.random.PRNGKey(7)  # train mode: dropout masks must match too

    def pick(y):
        return jnp.sum(y[..., 3] * jnp.arange(6.0))
    _assert_same(_grads(remat, weights, state, x, rng, pick),
                 _grads(plain, weights, state, x, rng, pick))


@pytest.mark.slow
def test_encoder_and_encoder_decoder_with_remat_have_the_same_gradients():
    # The encoder blocks carry the integer padding mask through the rematerialized blocks.
    src = np.array([[3, 4, 5, 0], [6, 7, 0, 0]], np.int32)
    tgt = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    rng = jax.random.PRNGKey(1)
    for build, inputs in (
            (lambda **r: models.TransformerEncoder(8, n_classes=3, d_model=8, d_ff=16,
                                                   n_layers=1, n_heads=2, dropout=0.1, **r),
             src),
            (lambda **r: models.Transformer(8, d_model=8, d_ff=16, n_encoder_layers=1,
                                            n_decoder_layers=1, n_heads=2, dropout=0.1, **r),
             (src, tgt))):
        plain, remat = build(), build(remat=True)
        weights, state = plain.init(shapes.signature(inputs))

        def pick(y):
            y = y[0] if isinstance(y, tuple) else y
            return jnp.sum(jnp.sin(y))
        _assert_same(_grads(remat, weights, state, inputs, rng, pick),
                     _grads(plain, weights, state, inputs, rng, pick))
        # Eval mode (nothing to differentiate): the same outputs.
        for got, want in zip(jax.tree_util.tree_leaves(
                tl.with_mode(remat, "eval").pure_fn(inputs, weights, state, None)[0]),
                jax.tree_util.tree_leaves(
                    tl.with_mode(plain, "eval").pure_fn(inputs, weights, state, None)[0])):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_remat_keeps_less_memory_for_the_gradient():
    # 4 layers, 4 heads, length 128: plain autodiff keeps each layer's (2, 4, 128, 128)
    # attention weights (512 KiB, plus their dropout masks); remat keeps each block's
    # (2, 128, 32) input (32 KiB) and recomputes the rest block by block.
    kw = dict(vocab_size=16, d_model=32, d_ff=64, n_layers=4, n_heads=4, max_len=128,
              dropout=0.1)
    x = np.ones((2, 128), np.int32)

    def temp_bytes(model):
        weights, state = model.init(shapes.signature(x))

        def loss(w, rng):
            return jnp.sum(model.pure_fn(x, w, state, rng)[0][..., 0])
        compiled = jax.jit(jax.grad(loss)).lower(weights, jax.random.PRNGKey(0)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    attention_bytes = 2 * 4 * 128 * 128 * 4
    plain, remat = temp_bytes(models.TransformerLM(**kw)), temp_bytes(
        models.TransformerLM(remat=True, **kw))
    assert plain >= 4 * attention_bytes  # not vacuous: plain keeps every layer's attention
    # Measured: 8.3 MiB plain, 2.5 MiB remat.
    assert plain - remat >= 4 * attention_bytes
    assert remat < 0.5 * plain


def test_remat_serial_runs_as_serial_and_refuses_a_non_bool():
    block = RematSerial(tl.Dense(3), tl.Relu())
    assert block.name == "Serial"
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(4, 2)
    weights, state = block.init(shapes.signature(x))
    (w, b), _ = weights
    np.testing.assert_allclose(block(x), np.maximum(x @ np.asarray(w) + np.asarray(b), 0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="remat must be True or False"):
        models.TransformerLM(vocab_size=8, d_model=4, d_ff=8, n_layers=1, n_heads=2,
                             remat="yes")
