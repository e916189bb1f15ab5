"""SelfAttention and EncDecAttention (Trax's efficient attention) against a NumPy float64
reference, the batching options against each other, and predict against eval."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def reference(x, weights, causal, chunk_len, n_before, n_after, mask=None, share_qk=False):
    """Per example and head, in float64: scores q.k/sqrt(d) with Trax's subtractive masks."""
    x = np.asarray(x, np.float64)
    ws = [np.asarray(w, np.float64) for w in weights]
    batch, length, _ = x.shape
    out = np.zeros_like(x)
    pos = np.arange(length)
    for b in range(batch):
        for h in range(ws[0].shape[0]):
            if share_qk:
                w_q, w_v, w_o = (w[h] for w in ws)
                q = x[b] @ w_q
                k = q / np.sqrt(np.mean(q ** 2, -1, keepdims=True) + 1e-6)
            else:
                w_q, w_k, w_v, w_o = (w[h] for w in ws)
                q, k = x[b] @ w_q, x[b] @ w_k
            v = x[b] @ w_v
            dots = q @ k.T / np.sqrt(k.shape[-1])
            if chunk_len:
                cq, ck = pos[:, None] // chunk_len, pos[None, :] // chunk_len
                n_chunks = length // chunk_len
                offset = (ck - cq) % n_chunks
                seen = (offset <= n_after) | (offset >= n_chunks - n_before)
                dots = np.where(seen, dots, -np.inf)
            if causal:
                dots = dots - 1e9 * (pos[:, None] < pos[None, :])
            if share_qk:
                dots = dots - 1e5 * (pos[:, None] == pos[None, :])
            if mask is not None:
                dots = dots - 1e9 * (~mask[b])[None, :]
            p = np.exp(dots - dots.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            out[b] += (p @ v) @ w_o
    return out


CASES = [  # causal, chunk_len, n_chunks_before, n_chunks_after, share_qk
    (False, None, 0, 0, False),
    (True, None, 0, 0, False),
    (True, 2, 1, 0, False),
    (False, 2, 1, 1, False),
    (True, 4, 1, 0, True),
]


@pytest.mark.parametrize("causal, chunk_len, before, after, share_qk", CASES)
def test_self_attention_matches_numpy(causal, chunk_len, before, after, share_qk):
    x = np.random.default_rng(0).normal(size=(2, 8, 6)).astype(np.float32)
    attn = tl.SelfAttention(n_heads=2, d_qk=4, d_v=3, causal=causal, chunk_len=chunk_len,
                            n_chunks_before=before, n_chunks_after=after, share_qk=share_qk,
                            mode="eval")
    weights, _ = attn.init(shapes.signature(x))
    assert [w.shape for w in weights] == ([(2, 6, 4), (2, 6, 3), (2, 3, 6)] if share_qk else
                                          [(2, 6, 4), (2, 6, 4), (2, 6, 3), (2, 3, 6)])
    np.testing.assert_allclose(attn(x), reference(x, weights, causal, chunk_len, before, after,
                                                  share_qk=share_qk), atol=2e-5)


def test_masked_self_attention_ignores_padding_everywhere():
    x = np.random.default_rng(1).normal(size=(2, 6, 4)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)  # also position 0
    attn = tl.SelfAttention(n_heads=2, d_qk=4, d_v=4, masked=True, mode="eval")
    weights, _ = attn.init((shapes.signature(x), shapes.signature(mask)))
    np.testing.assert_allclose(attn((x, mask)),
                               reference(x, weights, False, None, 0, 0, mask=mask), atol=2e-5)


@pytest.mark.slow  # five compilations of forward and gradient
def test_batching_options_give_the_same_outputs_and_gradients():
    x = np.random.default_rng(2).normal(size=(2, 8, 6)).astype(np.float32)
    outs, grads = [], []
    for kwargs in ({}, {"n_parallel_heads": 1}, {"n_parallel_heads": 2},
                   {"n_parallel_heads": 4, "use_python_loop": True},
                   {"use_reference_code": True}):
        attn = tl.SelfAttention(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4,
                                n_chunks_before=1, mode="eval", **kwargs)
        weights, state = attn.init(shapes.signature(x))
        outs.append(attn(x))
        grads.append(jax.grad(lambda w, a=attn, s=state: (a.pure_fn(x, w, s, None)[0] ** 2)
                              .sum())(weights))
    for out, grad in zip(outs[1:], grads[1:]):
        np.testing.assert_allclose(out, outs[0], atol=1e-5)
        for a, b in zip(grad, grads[0]):
            np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("share_qk", [False, True])
def test_predict_equals_eval_token_by_token(share_qk):
    x = np.random.default_rng(3).normal(size=(1, 12, 6)).astype(np.float32)
    kwargs = dict(n_heads=2, d_qk=4, d_v=4, causal=True, chunk_len=4, n_chunks_before=1,
                  share_qk=share_qk)
    evaluate = tl.SelfAttention(mode="eval", **kwargs)
    weights, _ = evaluate.init(shapes.signature(x))
    want = evaluate(x)
    predict = tl.SelfAttention(mode="predict", **kwargs)
    _, state = predict.init(shapes.signature(x[:, :1]))
    step = jax.jit(predict.pure_fn)
    prompt, state = step(x[:, :4], weights, state, None)  # a prompt of one chunk
    got = [prompt]
    for t in range(4, 12):
        y, state = step(x[:, t:t + 1], weights, state, None)
        got.append(y)
    np.testing.assert_allclose(np.concatenate(got, 1), want, atol=2e-5)


def test_enc_dec_attention_is_trax_141s_sum_over_real_positions():
    rng = np.random.default_rng(4)
    q, kv = (rng.normal(size=s).astype(np.float32) for s in ((1, 3, 8), (1, 5, 6)))
    mask = np.array([[1, 1, 1, 0, 0]], bool)
    attn = tl.EncDecAttention(n_heads=2, d_qk=4, d_v=4, mode="eval")
    (w_q, w_k, w_v, w_o), _ = attn.init(tuple(shapes.signature(a) for a in (q, kv, mask)))
    # Every real position gets weight 1 in float32 (see EncDecAttention's doc).
    values = np.einsum("ld,hdv->hlv", kv[0, :3], np.asarray(w_v)).sum(1)  # (heads, d_v)
    want = np.einsum("hv,hvd->d", values, np.asarray(w_o))
    np.testing.assert_allclose(attn((q, kv, mask))[0], np.broadcast_to(want, (3, 8)),
                               atol=1e-5)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
@pytest.mark.parametrize("masked", [True, False])
def test_enc_dec_predict_caches_the_encoder_keys_and_equals_eval(masked):
    # masked: Trax 1.4.1's sum over real positions; unmasked: a softmax over the queries.
    rng = np.random.default_rng(5)
    q = rng.normal(size=(2, 4, 8)).astype(np.float32)
    kv = rng.normal(size=(2, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    inputs = (lambda a, b, m: (a, b, m)) if masked else (lambda a, b, m: (a, b))
    sig = tuple(shapes.signature(a) for a in inputs(q[:, :1], kv, mask))
    ev = tl.EncDecAttention(n_heads=2, d_qk=4, d_v=3, masked=masked, mode="eval")
    weights, _ = ev.init(sig)
    want = np.asarray(ev(inputs(q, kv, mask)))
    pred = tl.EncDecAttention(n_heads=2, d_qk=4, d_v=3, masked=masked, mode="predict")
    _, state = pred.init(sig)
    assert state == ()  # filled by the first call, as tl.Cache's
    step = pred.pure_fn  # eager: cheaper than compiling for four tiny calls
    got = []
    for t in range(4):
        # After the first call the encoder output is not read again: zeros give the same.
        enc = kv if t == 0 else np.zeros_like(kv)
        y, state = step(inputs(q[:, t:t + 1], enc, mask), weights, state, None)
        got.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(got, 1), want, atol=1e-5)
    w_k = np.asarray(weights[1])
    assert [a.shape for a in state] == [(2, 2, 5, 4), (2, 2, 5, 3)]
    np.testing.assert_allclose(state[0], np.einsum("bld,hde->bhle", kv, w_k), atol=1e-6)
    with pytest.raises(ValueError, match="fresh state from init"):
        pred.pure_fn(inputs(q[:, :1], kv[:, :3], mask[:, :3]), weights, state, None)


def test_refusals_name_the_value_to_change():
    attn = tl.SelfAttention(n_heads=2, d_qk=4, d_v=4, chunk_len=3, mode="eval")
    attn.init(shapes.ShapeDtype((1, 8, 4)))
    with pytest.raises(Exception, match="chunk_len=3 must divide the sequence length"):
        attn(np.ones((1, 8, 4), np.float32))
    with pytest.raises(ValueError, match="n_parallel_heads"):
        tl.SelfAttention(n_heads=4, n_parallel_heads=3)
    with pytest.raises(Exception, match="needs chunk_len, or predict_mem_len"):
        tl.SelfAttention(causal=True, mode="predict").init(shapes.ShapeDtype((1, 4, 8)))
    attn = tl.SelfAttention(mode="eval")
    attn.init(shapes.ShapeDtype((1, 4, 8)))
    with pytest.raises(Exception, match="Embed tokens first"):
        attn(np.ones((1, 4), np.int32))
