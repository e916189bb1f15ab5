"""dot_product_attention with bfloat16 inputs: bfloat16 matmuls, a float32 softmax."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from retrax.layers.attention import dot_product_attention


def test_logits_near_256_still_give_probabilities_that_sum_to_one():
    # dh = 1 (scale 1): logits 256 and 258, both exact in bfloat16. The softmax is
    # (e^-2, 1) / (1 + e^-2) = (0.1192, 0.8808). A bfloat16 logsumexp rounds 258.127 to 258
    # and would give weights (0.135, 1.0), an output of 0.135 for values (1, 0).
    q = jnp.asarray([[[1.0]]], jnp.bfloat16)
    k = jnp.asarray([[[256.0], [258.0]]], jnp.bfloat16)
    v = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]]], jnp.bfloat16)
    out = dot_product_attention(q, k, v)
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 1, 2)
    want = np.array([np.exp(-2.0), 1.0]) / (1.0 + np.exp(-2.0))  # float64
    # bfloat16 output: within its rounding (2^-8 relative).
    np.testing.assert_allclose(np.asarray(out, np.float64)[0, 0], want, rtol=2 ** -8)


def test_bfloat16_matches_float64_with_a_causal_mask_and_dropout_pattern_unchanged():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 5, 8)) * 3 for _ in range(3))
    mask = np.tril(np.ones((5, 5), bool))
    low = [jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)]
    out = jax.jit(dot_product_attention)(*low, mask)
    # Reference on the bfloat16-rounded inputs, in float64.
    qr, kr, vr = (np.asarray(x, np.float64) for x in low)
    dots = np.where(mask, qr @ kr.transpose(0, 2, 1) / np.sqrt(8), -1e9)
    probs = np.exp(dots - dots.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out, np.float64), probs @ vr, atol=0.06, rtol=0.02)
    # Dropout draws the same mask as in float32 (the probabilities' shape decides it).
    key = jax.random.PRNGKey(3)
    attend = jax.jit(lambda q, k, v: dot_product_attention(q, k, v, mask, dropout=0.5, rng=key))
    hi = attend(*(jnp.asarray(x, jnp.float32) for x in low))
    lo = attend(*low)
    # (A different mask would change outputs by O(1); bfloat16 rounding by ~1%.)
    np.testing.assert_allclose(np.asarray(lo, np.float64), np.asarray(hi), atol=0.1, rtol=0.03)


def test_matmuls_in_bfloat16_softmax_in_float32():
    args = [jax.ShapeDtypeStruct((2, 4, 8), jnp.bfloat16)] * 3
    text = jax.jit(dot_product_attention).lower(*args).as_text()
    dots = re.findall(r"stablehlo.dot_general.*?-> tensor<[0-9x]*x(\w+)>", text)
    assert dots == ["bf16", "bf16"]
    exps = re.findall(r"stablehlo.exponential .*?: tensor<[0-9x]*x(\w+)>", text)
    assert exps and set(exps) == {"f32"}


def test_float32_program_unchanged():
    args = [jax.ShapeDtypeStruct((2, 4, 8), jnp.float32)] * 3
    text = jax.jit(dot_product_attention).lower(*args).as_text()
    assert "bf16" not in text and "convert" not in text
