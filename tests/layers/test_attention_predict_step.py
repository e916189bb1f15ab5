"""The per-token program of predict-mode attention: one Q/K/V product (ProjectQKV)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.layers.attention_math import dot_product_attention, normalize_after_attention
from retrax.layers.causal_attention import ProjectQKV


def rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def np_heads(x, h, merged):
    b, length, d = x.shape
    y = x.reshape(b, length, h, d // h).transpose(0, 2, 1, 3)
    return y.reshape(b * h, length, d // h) if merged else y


@pytest.mark.parametrize("merged", [False, True])
@pytest.mark.parametrize("mode", ["predict", "eval", None])
def test_project_qkv_equals_three_dense_products(merged, mode):
    layer = ProjectQKV(tl.Dense(8), tl.Dense(8), tl.Dense(8), n_heads=2,
                       merged_batch_and_head=merged, mode=mode)
    x = rand(0, 2, 3, 6)
    layer.init(shapes.signature(x))
    ws = [(rand(10 + i, 6, 8), rand(20 + i, 8)) for i in range(3)]
    layer.weights = ((), tuple((wb, ((), (), ())) for wb in ws))
    got = layer(x)
    x64 = x.astype(np.float64)
    for y, (w, b) in zip(got, ws):
        want = np_heads(x64 @ w + b, 2, merged)
        assert y.shape == want.shape
        np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-5, atol=1e-5)
    # The fused product gives the Branch's values (up to float rounding).
    branch = ProjectQKV(tl.Dense(8), tl.Dense(8), tl.Dense(8), 2, merged)
    branch.init(shapes.signature(x))
    branch.weights = layer.weights
    for y, z in zip(got, branch(x)):
        np.testing.assert_allclose(y, z, rtol=1e-6, atol=1e-6)


def test_causal_attention_layout_is_the_same_in_every_mode():
    trees, texts = [], []
    for mode in ("train", "eval", "predict"):
        layer = tl.CausalAttention(8, n_heads=2, mode=mode)
        weights, _ = layer.init(shapes.ShapeDtype((1, 1, 8)))
        trees.append(jax.tree_util.tree_structure(weights))
        texts.append(str(layer))
        assert [w.shape for w in jax.tree_util.tree_leaves(weights)] == [
            (8, 8), (8,), (8, 8), (8,), (8, 8), (8,), (8, 8), (8,)]
    assert trees[0] == trees[1] == trees[2]
    assert texts[0] == texts[1] == texts[2]
    assert "Branch_out3" in texts[0]


def _loop_dots(fused):
    """``dot`` ops in a compiled 4-token decoding loop of one attention layer."""
    d = 256  # small products in a single step XLA merges by itself; in a loop it does not
    dense = [tl.Dense(d) for _ in range(4)]
    layer = tl.ConfigurableAttention(
        *dense, n_heads=4, merged_batch_and_head=False,
        qkv_attention_layer=tl.DotProductCausalAttention(max_inference_length=8, mode="predict"),
        mode="predict" if fused else None)
    weights, state = layer.init(shapes.ShapeDtype((1, 1, d)))

    def loop(w, s, x):
        def body(_, carry):
            y, s = layer.pure_fn(carry[0], w, carry[1], None)
            return y, s
        return jax.lax.fori_loop(0, 4, body, (x, s))

    x = jnp.ones((1, 1, d), jnp.float32)
    return jax.jit(loop).lower(weights, state, x).compile().as_text().count(" dot(")


def test_predict_loop_runs_one_qkv_product():
    # q/k/v as one product, the two products over the cache, the output Dense.
    assert _loop_dots(fused=True) == 4
    assert _loop_dots(fused=False) == 6  # three separate q/k/v products


def test_train_program_is_the_branch():
    layer = ProjectQKV(tl.Dense(8), tl.Dense(8), tl.Dense(8), 2, mode="train")
    plain = ProjectQKV(tl.Dense(8), tl.Dense(8), tl.Dense(8), 2)  # no mode: the Branch
    x = jnp.ones((2, 3, 8), jnp.float32)
    weights, state = layer.init(shapes.signature(x))
    plain.init(shapes.signature(x))

    def text_of(lyr):
        return jax.jit(lambda w: lyr.pure_fn(x, w, state, None)[0]).lower(weights).as_text()

    assert text_of(layer) == text_of(plain)


def test_non_dense_projections_run_as_a_branch_in_predict_mode():
    layer = ProjectQKV(tl.Serial(tl.Dense(4)), tl.Dense(4), tl.Dense(4), 2, mode="predict")
    x = rand(1, 1, 2, 4)
    layer.init(shapes.signature(x))
    q, k, v = layer(x)
    (wq, bq), = layer.weights[1][0][0]
    np.testing.assert_allclose(q, np_heads(x @ np.asarray(wq) + np.asarray(bq), 2, False),
                               rtol=1e-5, atol=1e-6)
    assert k.shape == v.shape == (1, 2, 2, 2)


def test_transformer_lm_predict_equals_eval():
    kw = dict(vocab_size=32, d_model=32, d_ff=64, n_layers=1, n_heads=4, max_len=16)
    eval_model = models.TransformerLM(mode="eval", **kw)
    predict_model = models.TransformerLM(mode="predict", **kw)
    x = np.random.default_rng(2).integers(1, 32, (2, 7)).astype(np.int32)
    weights, _ = eval_model.init(shapes.signature(x), rng=jax.random.PRNGKey(5))
    _, state = predict_model.init(shapes.ShapeDtype((2, 1), np.int32))
    want = np.asarray(eval_model(x))
    step = jax.jit(predict_model.pure_fn)
    shifted = np.pad(x, ((0, 0), (1, 0)))[:, :-1]  # eval shifts right; predict does not
    got = []
    for chunk in (shifted[:, :3], *(shifted[:, i:i + 1] for i in range(3, 7))):
        y, state = step(chunk, weights, state, None)  # a prompt, then one token at a time
        got.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(got, axis=1), want, atol=1e-5)


@pytest.mark.parametrize("lq", [1, 3])
def test_normalize_after_attention_equals_dot_product_attention(lq):
    q, k, v = rand(3, 2, lq, 4), rand(4, 2, 6, 4), rand(5, 2, 6, 3)
    mask = np.arange(6)[None, :] <= (2 + np.arange(lq))[:, None]
    want = dot_product_attention(q, k, v, mask, mode="predict")
    got = normalize_after_attention(q, k, v, mask)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # float64 reference: softmax of the masked, scaled logits, then @ v
    dots = np.einsum("bqd,bkd->bqk", q.astype(np.float64), k) / 2.0
    dots = np.where(mask, dots, -1e9)
    probs = np.exp(dots - dots.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, probs @ v, rtol=1e-5, atol=1e-6)
    bad = normalize_after_attention(q, k, v, mask, jnp.asarray(True))
    assert np.isnan(np.asarray(bad)).all()
    ok = normalize_after_attention(q, k, v, mask, jnp.asarray(False))
    np.testing.assert_array_equal(ok, got)


def test_normalize_after_attention_bfloat16_normalizes_in_float32():
    # Logits 256 and 258 (q . k / 2): a bfloat16 logsumexp would be off by 2^-7.
    q = np.array([[[16.0, 0.0, 0.0, 0.0]]], np.float32)  # d_head 4: logits scaled by 1/2
    k = np.array([[[32.0, 0.0, 0.0, 0.0], [32.25, 0.0, 0.0, 0.0]]], np.float32)
    v = np.array([[[1.0], [0.0]]], np.float32)
    mask = np.ones((1, 2), bool)
    y = normalize_after_attention(*(jnp.asarray(a, jnp.bfloat16) for a in (q, k, v)), mask)
    assert y.dtype == jnp.bfloat16
    want = 1.0 / (1.0 + np.exp(2.0))  # weight of the first key
    assert abs(float(y[0, 0, 0]) - want) < 2 ** -8
