"""tl.LSHSelfAttention and tl.PureLSHSelfAttention: closeness to full attention, predict
mode (token by token and through autoregressive_sample), determinism, causal and padding
masks, bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.supervised import decoding


def _clustered(seed=0, batch=2, length=64, d=16, n_clusters=8):
    rs = np.random.RandomState(seed)
    centers = rs.randn(n_clusters, d) * 3
    x = centers[rs.randint(0, n_clusters, (batch, length))] + 0.3 * rs.randn(batch, length, d)
    return x.astype(np.float32)


def _lsh(x, seed=0, **kw):
    args = dict(n_heads=2, d_qk=8, d_v=8, chunk_len=16, mode="eval")
    args.update(kw)
    layer = tl.LSHSelfAttention(**args)
    sig = shapes.signature(x)
    if args.get("masked"):
        sig = (sig, shapes.ShapeDtype(x.shape[:2], bool))
    layer.init(sig, rng=jax.random.PRNGKey(seed))
    return layer


_COMPILED = {}


def _run(layer, inputs, state=None):
    """The layer's output from a compiled call (compiled once per layer)."""
    fn = _COMPILED.setdefault(id(layer), (layer, jax.jit(layer.pure_fn)))[1]
    state = layer.state if state is None else state
    return np.asarray(fn(inputs, layer.weights, state, None)[0])


def _rel_err(y, ref):
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("causal", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_more_hashes_approach_full_attention(causal):
    x = _clustered()
    full = tl.SelfAttention(n_heads=2, d_qk=8, d_v=8, share_qk=True, causal=causal, mode="eval")
    full.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
    ref = _run(full, x)
    errs = {}
    for n_hashes in (1, 8):
        lsh = _lsh(x, causal=causal, n_hashes=n_hashes, n_buckets=4)
        lsh.weights = full.weights  # same layout: (w_q, w_v, w_o) per head
        errs[n_hashes] = _rel_err(_run(lsh, x), ref)
    # Relative Frobenius error, n_hashes 1 / 2 / 4 / 8: non-causal 0.137 / 0.049 / 0.029 /
    # 0.018, causal 0.271 / 0.118 / 0.050 / 0.023.
    assert errs[8] < 0.04, errs
    assert errs[8] < errs[1] / 5, errs


@pytest.mark.slow
def test_window_over_everything_is_full_attention():
    # n_hashes * L = chunk_len * (1 + n_chunks_before): every chunk sees every position.
    x = np.random.RandomState(1).randn(2, 8, 12).astype(np.float32)
    lsh = _lsh(x, causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    full = tl.SelfAttention(n_heads=2, d_qk=8, d_v=8, share_qk=True, causal=True, mode="eval")
    full.init(shapes.signature(x))
    full.weights = lsh.weights
    np.testing.assert_allclose(_run(lsh, x), _run(full, x), atol=2e-6)


def _predict_layer(x, eval_layer, **kw):
    args = dict(n_heads=2, d_qk=8, d_v=8, causal=True, mode="predict")
    args.update(kw)
    layer = tl.LSHSelfAttention(**args)
    layer.init(shapes.signature(x), rng=jax.random.PRNGKey(0))
    layer.weights = eval_layer.weights
    return layer


@pytest.mark.slow
def test_predict_token_by_token_equals_eval():
    x = np.random.RandomState(2).randn(2, 8, 12).astype(np.float32)
    kw = dict(causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    ref = _run(_lsh(x, **kw), x)
    pred = _predict_layer(x[:, :1], _lsh(x, **kw), predict_mem_len=16, predict_drop_len=4,
                          **kw)
    step = jax.jit(pred.pure_fn)
    state, outs = pred.state, []
    for t in range(8):
        y, state = step(x[:, t:t + 1], pred.weights, state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref, atol=2e-6)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_predict_prompt_equals_eval_then_decodes():
    x = _clustered(seed=3, length=32, d=12)
    kw = dict(causal=True, chunk_len=4, n_hashes=2, n_buckets=4)
    ev = _lsh(x, **kw)
    pred = _predict_layer(x, ev, predict_mem_len=64, predict_drop_len=8, **kw)
    np.testing.assert_array_equal(np.asarray(pred(x)), _run(ev, x))
    assert int(pred.state[0]) == 32
    y = pred(x[:, :1])
    assert y.shape == (2, 1, 12) and np.all(np.isfinite(np.asarray(y)))
    assert int(pred.state[0]) == 33


@pytest.mark.slow
def test_same_seed_same_result_and_hashes_depend_on_the_seed():
    x = _clustered(seed=4)
    kw = dict(causal=False, n_hashes=2, n_buckets=8)
    a, b, c = _lsh(x, seed=5, **kw), _lsh(x, seed=5, **kw), _lsh(x, seed=6, **kw)
    for u, v in zip(jax.tree_util.tree_leaves((a.weights, a.state)),
                    jax.tree_util.tree_leaves((b.weights, b.state))):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    y = _run(a, x)
    np.testing.assert_array_equal(y, np.asarray(b(x)))
    # Only the hash key differs: other buckets, other outputs.
    assert not np.allclose(y, _run(a, x, state=c.state), atol=1e-3)
    # 'train': fresh rotations from the call's rng, the same for the same rng.
    train = tl.LSHSelfAttention(n_heads=2, d_qk=8, d_v=8, chunk_len=16, n_hashes=2,
                                n_buckets=8, mode="train")
    w, s = train.init(shapes.signature(x), rng=jax.random.PRNGKey(5))
    step = jax.jit(train.pure_fn)
    y1, _ = step(x, w, s, jax.random.PRNGKey(1))
    y2, _ = step(x, w, s, jax.random.PRNGKey(1))
    y3, _ = step(x, w, s, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))
    assert not np.allclose(np.asarray(y1), np.asarray(y3), atol=1e-3)


@pytest.mark.slow
def test_causal_output_does_not_depend_on_later_inputs():
    x = _clustered(seed=7, batch=1, length=32, d=12)
    lsh = _lsh(x, causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    w, s = lsh.weights, lsh.state
    t = 13

    def out_at_t(inputs):
        return lsh.pure_fn(inputs, w, s, None)[0][0, t].sum()

    grad = np.asarray(jax.jit(jax.grad(out_at_t))(jnp.asarray(x)))[0]
    assert np.all(grad[t + 1:] == 0.0)
    assert np.abs(grad[:t + 1]).sum() > 0
    # With a window over the whole sorted sequence, changing later inputs changes nothing.
    x8 = x[:, :8]
    wide = _lsh(x8, causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    changed = x8.copy()
    changed[:, 5:] += 3.0
    np.testing.assert_allclose(_run(wide, changed)[:, :5], _run(wide, x8)[:, :5],
                               atol=1e-6)


def test_padding_is_not_attended_to():
    x = _clustered(seed=8, length=32, d=12)
    mask = np.ones((2, 32), bool)
    mask[:, 24:] = False
    lsh = _lsh(x, causal=False, masked=True, chunk_len=8, n_hashes=2, n_buckets=4)
    changed = x.copy()
    changed[:, 24:] = 50.0
    np.testing.assert_allclose(_run(lsh, (changed, mask))[:, :24],
                               _run(lsh, (x, mask))[:, :24], atol=1e-6)


@pytest.mark.slow
def test_pure_lsh_on_projected_heads_equals_lsh():
    x = _clustered(seed=9, length=32, d=12)
    lsh = _lsh(x, causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    expected = _run(lsh, x)
    # The weightless layer on projected heads (rows example-major), summed through w_o.
    w_q, w_v, w_o = lsh.weights
    qk = jnp.einsum("bld,hde->bhle", x, w_q).reshape(4, 32, 8)
    v = jnp.einsum("bld,hde->bhle", x, w_v).reshape(4, 32, 8)
    pure = tl.PureLSHSelfAttention(n_heads=2, d_qk=8, d_v=8, causal=True, chunk_len=8,
                                   n_hashes=2, n_buckets=4, mode="eval")
    pure.init((shapes.signature(qk), shapes.signature(v)))
    pure.state = lsh.state
    o = _run(pure, (qk, v)).reshape(2, 2, 32, 8)
    np.testing.assert_allclose(np.asarray(jnp.einsum("bhle,hed->bld", o, w_o)), expected,
                               atol=2e-5)


def test_bad_arguments_are_refused_with_the_value_to_change():
    with pytest.raises(ValueError, match="n_buckets must be an even"):
        tl.LSHSelfAttention(n_buckets=5)
    x = np.zeros((1, 12, 8), np.float32)
    with pytest.raises(ValueError, match="chunk_len=8 must divide"):
        _lsh(x, chunk_len=8, n_hashes=1, n_buckets=2)(x)
    with pytest.raises(ValueError, match="buckets do not fit"):
        _lsh(x, chunk_len=4, n_buckets=16)(x)
    pred = tl.LSHSelfAttention(n_heads=2, d_qk=8, d_v=8, causal=True, chunk_len=4,
                               mode="predict")
    pred.init(shapes.signature(x[:, :1]))
    with pytest.raises(ValueError, match="n_buckets given explicitly"):
        pred(x[:, :1])
    with pytest.raises(ValueError, match="needs causal=True"):
        tl.PureLSHSelfAttention(mode="predict", n_buckets=4).init(
            (shapes.ShapeDtype((2, 8, 4)), shapes.ShapeDtype((2, 8, 4))))
    with pytest.raises(ValueError, match="n_buckets given explicitly"):
        tl.PureLSHSelfAttention(mode="predict", causal=True).init(
            (shapes.ShapeDtype((2, 8, 4)), shapes.ShapeDtype((2, 8, 4))))
    # More buckets than positions are accepted when max_length_for_buckets says so (Trax's
    # decoding test: 32 x 32 buckets, sequences of 32).
    ok = _lsh(x, chunk_len=4, n_buckets=16, max_length_for_buckets=16)
    assert ok(x).shape == x.shape


def _pure(mode, seed=0, **kw):
    args = dict(n_heads=2, d_qk=8, d_v=8, causal=True, chunk_len=8, n_hashes=2, n_buckets=4,
                predict_mem_len=16, predict_drop_len=2, mode=mode)
    args.update(kw)
    layer = tl.PureLSHSelfAttention(**args)
    sig = shapes.ShapeDtype((4, 1 if mode == "predict" else 8, 8))
    layer.init((sig, sig), rng=jax.random.PRNGKey(seed))
    return layer


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_pure_lsh_predict_equals_eval_prompt_then_token_by_token():
    # Rows = 2 examples x 2 heads; n_hashes x L = chunk_len x (1 + n_chunks_before): the
    # eval window sees everything, the regime where one-token decoding is exact.
    rs = np.random.RandomState(10)
    qk, v = (rs.randn(4, 8, 8).astype(np.float32) for _ in range(2))
    want = _run(_pure("eval"), (qk, v))
    pred = _pure("predict")
    step = jax.jit(pred.pure_fn)
    # A prompt of 5 (padded to 8 inside, as Trax), then one token at a time.
    y, state = step((qk[:, :5], v[:, :5]), pred.weights, pred.state, None)
    outs = [np.asarray(y)]
    for t in range(5, 8):
        y, state = step((qk[:, t:t + 1], v[:, t:t + 1]), pred.weights, state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=2e-6)
    assert int(state[0]) == 8
    # Token by token from the start: the same numbers; same seed, same result.
    again = _pure("predict")
    state, outs = again.state, []
    for t in range(8):
        y, state = step((qk[:, t:t + 1], v[:, t:t + 1]), again.weights, state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(again.state[2]), np.asarray(pred.state[2]))
    assert not np.array_equal(np.asarray(_pure("predict", seed=1).state[2]),
                              np.asarray(pred.state[2]))


def _split_heads():
    return tl.Fn("SplitHeads", lambda x: x.reshape(x.shape[0], x.shape[1], 2, 8)
                 .transpose(0, 2, 1, 3).reshape(-1, x.shape[1], 8))


def _pure_lm(mode):
    merge = tl.Fn("MergeHeads", lambda o: o.reshape(-1, 2, o.shape[1], 8)
                  .transpose(0, 2, 1, 3).reshape(-1, o.shape[1], 16))
    return tl.Serial(
        tl.ShiftRight(mode=mode), tl.Embedding(11, 16),
        tl.Branch([tl.Dense(16), _split_heads()], [tl.Dense(16), _split_heads()]),
        tl.PureLSHSelfAttention(n_heads=2, d_qk=8, d_v=8, causal=True, chunk_len=8,
                                n_hashes=2, n_buckets=4, predict_mem_len=16,
                                predict_drop_len=16, mode=mode),
        merge, tl.Dense(11))


@pytest.mark.slow  # compiles the decoding program and an eval model
def test_pure_lsh_model_decodes_in_one_compiled_loop_as_eval_does():
    ev = _pure_lm("eval")
    ev.init(shapes.ShapeDtype((1, 8), np.int32), rng=jax.random.PRNGKey(3))
    pred = _pure_lm("predict")
    pred.init(shapes.ShapeDtype((1, 1), np.int32), rng=jax.random.PRNGKey(3))
    pred.weights = ev.weights
    prompt = np.array([[4, 7]], np.int32)
    got = np.asarray(decoding.autoregressive_sample(pred, inputs=prompt, eos_id=-1,
                                                    max_length=5, temperature=0.0))
    # Greedy decoding with the eval model on the whole (zero-padded) sequence: causal, and
    # the window sees every position, so later padding changes nothing.
    fn, seq = jax.jit(ev.pure_fn), [4, 7]
    for _ in range(5):
        tokens = np.zeros((1, 8), np.int32)
        tokens[0, :len(seq)] = seq
        logits = np.asarray(fn(tokens, ev.weights, ev.state, None)[0])
        seq.append(int(np.argmax(logits[0, len(seq)])))
    np.testing.assert_array_equal(got[0], seq[2:])


@pytest.mark.slow
def test_predict_prompt_not_a_multiple_of_chunk_len_is_padded_as_trax():
    # Trax pads a prompt to a multiple of chunk_len at the end; the outputs are those of
    # 'eval' on the zero-padded sequence, cut back to the prompt.
    x = _clustered(seed=11, length=16, d=12)
    kw = dict(causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    ev = _lsh(x, **kw)
    pred = _predict_layer(x, ev, predict_mem_len=32, predict_drop_len=4, **kw)
    padded = x.copy()
    padded[:, 13:] = 0.0
    np.testing.assert_allclose(np.asarray(pred(x[:, :13])), _run(ev, padded)[:, :13],
                               atol=1e-6)
    assert int(pred.state[0]) == 13


@pytest.mark.slow
def test_pure_lsh_wrapper_is_lsh_attention_with_dense_projections():
    # num_weights=2 without biases: Dense(qk), Dense(v), heads, PureLSH, Dense(out) computes
    # LSHSelfAttention with the same hash key when the kernels hold its per-head weights.
    x = _clustered(seed=12, batch=1, length=16, d=8)
    kw = dict(causal=True, chunk_len=8, n_hashes=2, n_buckets=4)
    lsh = _lsh(x, d_qk=4, d_v=4, **kw)
    wrapper = tl.PureLSHSelfAttentionWrapper(n_heads=2, d_qk=4, d_v=4, bias=False,
                                             num_weights=2, mode="eval", **kw)
    wrapper.init(shapes.signature(x))
    w_q, w_v, w_o = (np.asarray(w) for w in lsh.weights)
    kernels = [w.transpose(1, 0, 2).reshape(8, 8) for w in (w_q, w_v)]
    treedef = jax.tree_util.tree_structure(wrapper.weights)
    wrapper.weights = jax.tree_util.tree_unflatten(treedef, kernels + [w_o.reshape(8, 8)])
    state = list(wrapper.state)
    state[1] = lsh.state  # the same hash key
    np.testing.assert_allclose(np.asarray(wrapper.pure_fn(x, wrapper.weights, tuple(state),
                                                          None)[0]),
                               _run(lsh, x), atol=2e-5)
