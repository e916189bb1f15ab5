"""Attention layers, masks, shifts, positional encoding (TRAX_REFERENCE §3.4)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.layers.attention import dot_product_attention


def sig(*shape, dtype=np.float32):
    return shapes.ShapeDtype(shape, dtype)


def rand(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def flat_weights(layer):
    return tl.flatten_weights_and_state(layer.weights, layer.state)[0]


# -- NumPy references (float64) ------------------------------------------------


def np_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(dh), masked with -1e9) v over the last two axes."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    dots = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        dots = np.where(mask, dots, -1e9)
    dots = dots - dots.max(-1, keepdims=True)
    probs = np.exp(dots) / np.exp(dots).sum(-1, keepdims=True)
    return probs @ v


def np_split(x, h):
    b, length, d = x.shape
    return x.reshape(b, length, h, d // h).transpose(0, 2, 1, 3)


def np_merge(x):
    b, h, length, dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, length, h * dh)


def np_multihead(xq, xkv, weights, n_heads, mask):
    wq, bq, wk, bk, wv, bv, wo, bo = (np.asarray(w, np.float64) for w in weights)
    q, k, v = xq @ wq + bq, xkv @ wk + bk, xkv @ wv + bv
    y = np_attention(np_split(q, n_heads), np_split(k, n_heads), np_split(v, n_heads), mask)
    return np_merge(y) @ wo + bo


# -- ShiftRight -------------------------------------------------------------------


def test_shift_right_ints_exact():
    layer = tl.ShiftRight()
    y = layer(np.array([[1, 2, 3], [4, 5, 6]], np.int32))
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, [[0, 1, 2], [0, 4, 5]])


def test_shift_right_floats_and_n_positions():
    x = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
    y = tl.ShiftRight(n_positions=2)(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[0], [[0, 0, 0], [0, 0, 0], [0, 1, 2], [3, 4, 5]])


def test_shift_right_is_identity_in_predict_mode():
    x = np.array([[7, 8]], np.int32)
    np.testing.assert_array_equal(tl.ShiftRight(mode="predict")(x), x)


def test_shift_right_printing():
    layer = tl.ShiftRight()
    assert (layer.n_in, layer.n_out) == (1, 1)
    assert str(layer) == "Serial[\n  ShiftRight(1)\n]"
    assert "ShiftRight(3)" in str(tl.ShiftRight(3))


# -- masks ------------------------------------------------------------------------


def test_padding_mask_exact():
    mask = tl.PaddingMask()(np.array([[3, 0, 5], [0, 0, 1]], np.int32))
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == np.bool_
    np.testing.assert_array_equal(mask[:, 0, 0], [[True, False, True], [False, False, True]])
    mask = tl.PaddingMask(pad=5)(np.array([[3, 0, 5]], np.int32))
    np.testing.assert_array_equal(mask[0, 0, 0], [True, True, False])


def test_padding_mask_printing():
    assert str(tl.PaddingMask()) == "Serial[\n  PaddingMask(0)\n]"
    assert "PaddingMask(2)" in str(tl.PaddingMask(2))


def test_padding_mask_rejects_non_2d_input():
    with pytest.raises(tl.LayerError, match=r"PaddingMask\(0\) expects a 2-D array"):
        tl.PaddingMask()(np.zeros((2, 3, 4), np.int32))


def test_encoder_decoder_mask():
    layer = tl.EncoderDecoderMask()
    assert (layer.n_in, layer.n_out, str(layer)) == (2, 1, "EncoderDecoderMask_in2")
    pad = np.array([[[[True, False, True]]]])
    mask = layer((np.zeros((1, 2, 4), np.float32), pad))
    assert mask.shape == (1, 1, 2, 3)
    np.testing.assert_array_equal(mask[0, 0], [[True, False, True]] * 2)
    with pytest.raises(tl.LayerError, match="decoder activations of shape"):
        layer((np.zeros((1, 2), np.float32), pad))


# -- heads --------------------------------------------------------------------------


def test_split_into_heads_exact_and_round_trip():
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    split = tl.SplitIntoHeads(2)(x)
    assert split.shape == (4, 3, 2)  # (B*H, L, dh)
    np.testing.assert_array_equal(split[1], [[2, 3], [6, 7], [10, 11]])  # batch 0, head 1
    np.testing.assert_array_equal(tl.MergeHeads(2)(split), x)
    unmerged = tl.SplitIntoHeads(2, merged_batch_and_head=False)(x)
    assert unmerged.shape == (2, 2, 3, 2)
    np.testing.assert_array_equal(unmerged.reshape(4, 3, 2), split)
    np.testing.assert_array_equal(tl.MergeHeads(2, merged_batch_and_head=False)(unmerged), x)


def test_heads_printing_and_errors():
    assert str(tl.SplitIntoHeads(2)) == "Serial[\n  SplitIntoHeads\n]"
    assert str(tl.MergeHeads(2)) == "Serial[\n  MergeHeads\n]"
    with pytest.raises(tl.LayerError, match="not a multiple of n_heads"):
        tl.SplitIntoHeads(3)(np.zeros((1, 2, 4), np.float32))
    with pytest.raises(tl.LayerError, match="multiple of n_heads"):
        tl.MergeHeads(3)(np.zeros((4, 2, 2), np.float32))


# -- the core computation -----------------------------------------------------------


def test_dot_product_attention_matches_numpy():
    q, k, v = rand(0, 2, 3, 5, 4), rand(1, 2, 3, 6, 4), rand(2, 2, 3, 6, 4)
    mask = np.random.default_rng(3).random((2, 1, 5, 6)) > 0.3
    mask[..., 0] = True
    y = dot_product_attention(q, k, v, mask, mode="eval")
    np.testing.assert_allclose(y, np_attention(q, k, v, mask), atol=1e-5)
    np.testing.assert_allclose(dot_product_attention(q, k, v), np_attention(q, k, v), atol=1e-5)


def test_dot_product_attention_takes_one_exp_per_logit_with_its_gradient():
    # exp(s - max) / sum: one exp over the logits, forward and backward together
    # (Trax's exp(s - logsumexp) took two, and a third in the gradient).
    q, k, v = rand(0, 2, 3, 5, 4), rand(1, 2, 3, 6, 4), rand(2, 2, 3, 6, 4)
    mask = np.tril(np.ones((5, 6), bool))

    def loss(q, k, v):
        return jax.numpy.sum(dot_product_attention(q, k, v, mask, mode="eval") ** 2)

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v).as_text()
    assert hlo.count("stablehlo.exponential") == 1
    # The gradient equals a float64 finite difference of the NumPy reference.
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
    direction = [rand(i + 5, *x.shape) for i, x in enumerate((q, k, v))]
    eps = 1e-4

    def ref_loss(t):
        args = [x.astype(np.float64) + t * d for x, d in zip((q, k, v), direction)]
        return float(np.sum(np_attention(*args, mask) ** 2))

    numeric = (ref_loss(eps) - ref_loss(-eps)) / (2 * eps)
    analytic = sum(float(np.sum(np.asarray(g, np.float64) * d)) for g, d in zip(grads, direction))
    np.testing.assert_allclose(analytic, numeric, rtol=1e-3)


def test_fully_masked_row_stays_finite():
    # Trax's -1e9 (not -inf): no NaN, and the result no longer depends on the query.
    q, k, v = rand(0, 1, 2, 4), rand(1, 1, 3, 4), rand(2, 1, 3, 4)
    y = np.asarray(dot_product_attention(q, k, v, np.zeros((1, 2, 3), bool)))
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y[0, 0], y[0, 1])


def test_pure_attention_matches_numpy_with_padding_mask():
    layer = tl.PureAttention(n_heads=2, mode="eval")
    assert (layer.n_in, layer.n_out, str(layer)) == (4, 2, "PureAttention_in4_out2")
    q, k, v = rand(0, 2, 3, 4), rand(1, 2, 5, 4), rand(2, 2, 5, 4)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool).reshape(2, 1, 1, 5)
    y, mask_out = layer((q, k, v, mask))
    expected = np_merge(np_attention(np_split(q, 2), np_split(k, 2), np_split(v, 2), mask))
    np.testing.assert_allclose(y, expected, atol=1e-5)
    np.testing.assert_array_equal(mask_out, mask)


def test_dot_product_attention_layer():
    layer = tl.DotProductAttention(mode="eval")
    assert (layer.n_in, layer.n_out) == (4, 1)
    q, k, v = rand(0, 2, 3, 4), rand(1, 2, 3, 4), rand(2, 2, 3, 4)
    np.testing.assert_allclose(layer((q, k, v, None)), np_attention(q, k, v), atol=1e-5)


def test_attention_layer_matches_numpy():
    layer = tl.Attention(8, n_heads=2, mode="eval")
    assert (layer.n_in, layer.n_out) == (2, 2)
    x = rand(0, 2, 5, 8)
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool).reshape(2, 1, 1, 5)
    layer.init((shapes.signature(x), shapes.signature(mask)))
    ws = flat_weights(layer)
    assert [tuple(w.shape) for w in ws] == [(8, 8), (8,)] * 4
    y, mask_out = layer((x, mask))
    np.testing.assert_allclose(y, np_multihead(x, x, ws, 2, mask), atol=1e-5)
    np.testing.assert_array_equal(mask_out, mask)


def test_attention_qkv_separate_sources_and_predict_cache():
    layer = tl.AttentionQKV(4, n_heads=2, mode="eval")
    assert (layer.n_in, layer.n_out) == (4, 2)
    xq, xkv = rand(0, 1, 2, 4), rand(1, 1, 3, 4)
    mask = np.ones((1, 1, 2, 3), bool)
    layer.init(tuple(shapes.signature(a) for a in (xq, xkv, xkv, mask)))
    y, _ = layer((xq, xkv, xkv, mask))
    np.testing.assert_allclose(y, np_multihead(xq, xkv, flat_weights(layer), 2, mask), atol=1e-5)
    cached = tl.AttentionQKV(4, n_heads=2, mode="predict", cache_KV_in_predict=True)
    assert str(cached).count("Cache[") == 2
    assert "Cache" not in str(tl.AttentionQKV(4, n_heads=2, mode="eval", cache_KV_in_predict=True))
    noop = tl.AttentionQKV(4, n_heads=2, q_sparsity="noop", result_sparsity="noop")
    assert str(noop).count("Dense_4") == 2
    with pytest.raises(NotImplementedError, match="q_sparsity"):
        tl.AttentionQKV(4, q_sparsity=2)


# -- causal attention ---------------------------------------------------------------


def test_causal_attention_printing_and_weight_order():
    layer = tl.CausalAttention(16, n_heads=2)
    text = str(layer)
    assert text.count("SplitIntoHeads") == 3 and "DotProductCausalAttention_in3" in text
    assert str(tl.DotProductCausalAttention()) == "DotProductCausalAttention_in3"
    assert tl.DotProductCausalAttention().n_in == 3
    layer.init(sig(1, 3, 16))
    assert [tuple(w.shape) for w in flat_weights(layer)] == [(16, 16), (16,)] * 4


def test_causal_attention_matches_numpy():
    layer = tl.CausalAttention(8, n_heads=2, mode="eval")
    x = rand(0, 2, 5, 8)
    layer.init(shapes.signature(x))
    causal = np.tril(np.ones((5, 5), bool))
    np.testing.assert_allclose(
        layer(x), np_multihead(x, x, flat_weights(layer), 2, causal), atol=1e-5
    )


def test_causal_attention_output_does_not_depend_on_the_future():
    layer = tl.CausalAttention(8, n_heads=2, mode="eval")
    x = rand(0, 1, 6, 8)
    layer.init(shapes.signature(x))
    y = np.asarray(layer(x))
    for t in range(6):
        changed = x.copy()
        changed[:, t + 1 :] = rand(t + 10, 1, 5 - t, 8)
        y2 = np.asarray(layer(changed))
        np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], atol=1e-6)
        if t < 5:
            assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :])


def test_dot_product_causal_attention_matches_numpy():
    q, k, v = rand(0, 3, 4, 2), rand(1, 3, 4, 2), rand(2, 3, 4, 2)
    y = tl.DotProductCausalAttention(mode="eval")((q, k, v))
    np.testing.assert_allclose(y, np_attention(q, k, v, np.tril(np.ones((4, 4), bool))), atol=1e-5)


def _causal_pair(max_inference_length=16):
    """The same CausalAttention weights in eval and predict mode."""
    ev = tl.CausalAttention(8, n_heads=2, mode="eval")
    pr = tl.CausalAttention(8, n_heads=2, mode="predict", max_inference_length=max_inference_length)
    w, eval_state = ev.init(sig(2, 1, 8))
    _, state = pr.init(sig(2, 1, 8))
    return (ev, eval_state), pr, w, state


def test_causal_attention_predict_equals_eval():
    (ev, eval_state), pr, w, state = _causal_pair()
    x = rand(0, 2, 7, 8)
    y_eval = jax.jit(lambda x: ev.pure_fn(x, w, eval_state, None)[0])(x)
    step = jax.jit(lambda x, s: pr.pure_fn(x, w, s, None))
    # A 3-token prompt first, then one token per call.
    y, state = step(x[:, :3], state)
    outs = [y]
    for t in range(3, 7):
        y, state = step(x[:, t : t + 1], state)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), y_eval, atol=1e-5)


def test_predict_state_is_kv_cache_with_index():
    _, _, _, state = _causal_pair(max_inference_length=16)
    leaves = jax.tree_util.tree_leaves(state)
    # (B*H, max_inference_length, dh) caches (Trax's layout) and an int32 index.
    assert [tuple(a.shape) for a in leaves] == [(4, 16, 4), (4, 16, 4), ()]
    assert leaves[2].dtype == np.int32 and int(leaves[2]) == 0


def test_predict_step_jits_once_and_carries_the_cache():
    (ev, eval_state), pr, w, state = _causal_pair()
    traces = []

    def step(x, s):
        traces.append(1)
        return pr.pure_fn(x, w, s, None)

    step = jax.jit(step)
    x = rand(0, 2, 5, 8)
    outs = []
    for t in range(5):
        y, state = step(x[:, t : t + 1], state)
        outs.append(y)
    assert len(traces) == 1
    assert int(jax.tree_util.tree_leaves(state)[-1]) == 5
    np.testing.assert_allclose(
        np.concatenate(outs, 1), ev.pure_fn(x, w, eval_state, None)[0], atol=1e-5
    )


def test_kv_cache_overflow_raises_eagerly_and_gives_nan_under_jit():
    _, pr, w, state = _causal_pair(max_inference_length=4)
    x = rand(0, 2, 1, 8)
    for _ in range(4):
        _, state = pr.pure_fn(x, w, state, None)
    with pytest.raises(tl.LayerError, match=r"key/value cache of length 4"):
        pr.pure_fn(x, w, state, None)
    with pytest.raises(tl.LayerError, match=r"cannot write 5 position"):
        pr.pure_fn(rand(0, 2, 5, 8), w, pr.init(sig(2, 1, 8))[1], None)
    y, _ = jax.jit(lambda x, s: pr.pure_fn(x, w, s, None))(x, state)
    assert np.isnan(np.asarray(y)).all()


def test_predict_cache_length_is_an_option_of_init():
    (ev, eval_state), pr, w, _ = _causal_pair(max_inference_length=4)
    # What a plain init writes on the layers (its weights and state, ...): learned
    # by running one, so that the check below names no attribute of Layer.
    before = {id(layer): dict(vars(layer)) for layer in _layers(pr)}
    pr.init(sig(2, 1, 8))
    attrs = {id(layer): dict(vars(layer)) for layer in _layers(pr)}
    init_writes = {k for layer in _layers(pr) for k, v in attrs[id(layer)].items()
                   if before[id(layer)].get(k, object()) is not v}

    def cache_lengths(state):
        return [a.shape[1] for a in jax.tree_util.tree_leaves(state) if a.ndim == 3]

    with tl.predict_cache_length(8) as n:
        assert n == 8
        _, state = pr.init(sig(2, 1, 8))
        _, abstract = pr.weights_and_state_signature(sig(2, 1, 8))
        with tl.predict_cache_length(6):  # the innermost block counts
            assert cache_lengths(pr.weights_and_state_signature(sig(2, 1, 8))[1]) == [6, 6]
    assert cache_lengths(state) == cache_lengths(abstract) == [8, 8]
    assert cache_lengths(pr.init(sig(2, 1, 8))[1]) == [4, 4]  # back to max_inference_length
    # Nothing was written on the layers but what a plain init stores.
    for layer in _layers(pr):
        now = vars(layer)
        assert now.keys() == attrs[id(layer)].keys()
        assert all(now[k] is v for k, v in attrs[id(layer)].items()
                   if k not in init_writes), type(layer).__name__
    # The longer cache serves eager steps past max_inference_length=4.
    x = rand(1, 2, 7, 8)
    outs = []
    for t in range(7):
        y, state = pr.pure_fn(x[:, t : t + 1], w, state, None)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), ev.pure_fn(x, w, eval_state, None)[0],
                               atol=1e-5)
    with pytest.raises(ValueError, match=r"predict_cache_length: length must be a positive int; "
                                         r"got 0"):
        with tl.predict_cache_length(0):
            pass


def _layers(layer):
    yield layer
    for sub in layer.sublayers:
        yield from _layers(sub)


def test_attention_dropout_in_train_mode():
    layer = tl.CausalAttention(8, n_heads=2, dropout=0.5, mode="train")
    x = rand(0, 2, 6, 8)
    w, s = layer.init(shapes.signature(x))
    run = jax.jit(lambda key: layer.pure_fn(x, w, s, key)[0])
    key1, key2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    y1 = run(key1)
    np.testing.assert_array_equal(run(key1), y1)
    assert not np.allclose(run(key2), y1)
    ev = tl.CausalAttention(8, n_heads=2, dropout=0.5, mode="eval")
    run_eval = jax.jit(lambda key: ev.pure_fn(x, w, s, key)[0])
    np.testing.assert_array_equal(run_eval(key1), run_eval(key2))
    with pytest.raises(tl.LayerError, match="needs? an rng"):
        layer.pure_fn(x, w, s, None)


def test_attention_dropout_zeroes_probabilities_and_rescales():
    q = k = np.zeros((1, 1, 1000, 1), np.float32)  # uniform attention
    v = np.ones((1, 1, 1000, 1), np.float32)
    y = jax.jit(lambda key: dot_product_attention(q, k, v, dropout=0.5, mode="train", rng=key))(
        jax.random.PRNGKey(0)
    )
    # Each output is (kept fraction) / (1 - rate), so its mean is about 1.
    assert abs(float(np.mean(y)) - 1.0) < 0.05 and float(np.std(y)) > 0.0


# -- positional encoding ------------------------------------------------------------


def test_positional_encoding_table_is_trax_sinusoid():
    pe = tl.PositionalEncoding(max_len=10)
    assert str(pe) == "PositionalEncoding"
    w, _ = pe.init(sig(1, 3, 6))
    assert w.shape == (10, 6)
    pos = np.arange(10)[:, None]
    div = np.exp(np.arange(0, 6, 2) * -(np.log(10000.0) / 6))
    expected = np.zeros((10, 6))
    expected[:, 0::2], expected[:, 1::2] = np.sin(pos * div), np.cos(pos * div)
    np.testing.assert_allclose(w, expected, atol=1e-6)
    x = rand(0, 2, 3, 6)
    np.testing.assert_allclose(pe(x), x + expected[None, :3], atol=1e-6)


def test_positional_encoding_odd_width_and_projection():
    w, _ = tl.PositionalEncoding(max_len=5).init(sig(1, 2, 5))
    assert w.shape == (5, 5)
    pe = tl.PositionalEncoding(max_len=5, d_feature=3)
    (table, proj), _ = pe.init(sig(1, 2, 4))
    assert table.shape == (5, 3) and proj.shape == (3, 4)
    x = rand(0, 1, 2, 4)
    np.testing.assert_allclose(pe(x), x + (np.asarray(table)[:2] @ proj)[None], atol=1e-5)


def test_positional_encoding_accepts_old_3d_table():
    table, _ = tl.PositionalEncoding(max_len=8).init(sig(1, 3, 4))
    x = rand(0, 2, 3, 4)
    fresh = tl.PositionalEncoding(max_len=8, mode="eval")
    y_old = fresh.pure_fn(x, np.asarray(table)[None], (), None)[0]
    np.testing.assert_allclose(y_old, x + np.asarray(table)[None, :3], atol=1e-6)


def test_positional_encoding_predict_tracks_position():
    ev = tl.PositionalEncoding(max_len=8, mode="eval")
    pr = tl.PositionalEncoding(max_len=8, mode="predict")
    w, _ = ev.init(sig(1, 5, 4))
    _, state = pr.init(sig(1, 1, 4))
    assert state.dtype == np.int32 and int(state) == 0
    x = rand(0, 1, 5, 4)
    y1, state = pr.pure_fn(x[:, :2], w, state, None)  # two positions at once
    assert int(state) == 2
    y2, state = pr.pure_fn(x[:, 2:3], w, state, None)
    assert int(state) == 3
    np.testing.assert_allclose(
        np.concatenate([y1, y2], 1), ev.pure_fn(x, w, (), None)[0][:, :3], atol=1e-6
    )


def test_positional_encoding_errors_past_max_len():
    pr = tl.PositionalEncoding(max_len=4, mode="predict")
    w, state = pr.init(sig(1, 1, 2))
    x = np.zeros((1, 3, 2), np.float32)
    _, state = pr.pure_fn(x, w, state, None)
    with pytest.raises(tl.LayerError, match=r"cannot add 3 position\(s\) at position 3.*max_len=4"):
        pr.pure_fn(x, w, state, None)
    y, _ = jax.jit(lambda x, s: pr.pure_fn(x, w, s, None))(x, state)
    assert np.isnan(np.asarray(y)).all()
    ev = tl.PositionalEncoding(max_len=4, mode="eval")
    ev.init(sig(1, 1, 2))
    with pytest.raises(tl.LayerError, match="exceeds max_len=4"):
        ev(np.zeros((1, 5, 2), np.float32))


def test_positional_encoding_train_randomness():
    x = np.zeros((1, 4, 6), np.float32)
    drop = tl.PositionalEncoding(max_len=8, dropout=0.5, mode="train")
    w, s = drop.init(shapes.signature(x))
    run = jax.jit(lambda key: drop.pure_fn(x, w, s, key)[0])
    y1, y2 = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    assert not np.allclose(y1, y2)
    # Dropout is broadcast over positions (dropout_broadcast_dims=(-2,)): a feature is
    # dropped at every position or at none (position 0 is skipped: sin(0) = 0).
    dropped = np.asarray(y1)[0, 1:] == 0
    assert (dropped.all(0) | ~dropped.any(0)).all()
    offset = tl.PositionalEncoding(max_len=8, start_from_zero_prob=0.0, max_offset_to_add=4)
    run = jax.jit(lambda key: offset.pure_fn(x, w, s, key)[0])
    starts = set()
    for seed in range(12):
        y = np.asarray(run(jax.random.PRNGKey(seed)))[0]
        starts.add(next(i for i in range(4) if np.allclose(y, np.asarray(w)[i : i + 4])))
    assert len(starts) > 1


# -- argument errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: tl.CausalAttention(10, n_heads=3),
        lambda: tl.Attention(10, n_heads=4),
        lambda: tl.AttentionQKV(6, n_heads=4),
    ],
)
def test_d_feature_must_be_a_multiple_of_n_heads(make):
    with pytest.raises(ValueError, match=r"not a multiple of n_heads"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: tl.CausalAttention(8, n_heads=2, dropout=1.0),
        lambda: tl.Attention(8, n_heads=2, dropout=1.5),
        lambda: tl.PureAttention(dropout=1.0),
        lambda: tl.DotProductCausalAttention(dropout=1.0),
        lambda: tl.PositionalEncoding(dropout=1.0),
    ],
)
def test_dropout_must_be_below_one(make):
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: tl.CausalAttention(8, n_heads=2, mode="Train"),
        lambda: tl.Attention(8, mode="decode"),
        lambda: tl.PureAttention(mode="x"),
        lambda: tl.DotProductCausalAttention(mode="x"),
        lambda: tl.PositionalEncoding(mode="x"),
        lambda: tl.ShiftRight(mode="x"),
    ],
)
def test_bad_mode(make):
    with pytest.raises(ValueError, match=r"mode must be one of"):
        make()


def test_other_argument_errors():
    with pytest.raises(ValueError, match="max_inference_length must be a positive int"):
        tl.DotProductCausalAttention(max_inference_length=0)
    with pytest.raises(ValueError, match="n_positions must be an int >= 0"):
        tl.ShiftRight(-1)
    with pytest.raises(NotImplementedError, match="use_dconv"):
        tl.CausalAttention(8, use_dconv=True)
    with pytest.raises(ValueError, match="max_offset_to_add >= 1"):
        tl.PositionalEncoding(start_from_zero_prob=0.5)
