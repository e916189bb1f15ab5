"""ReformerLM with LSH attention and axial positions: predict equals eval, and an LSH model
trained by the Loop on a copy task decodes it (Trax's reformerlm_lsh_quality, scaled down)."""

import functools
import io

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import models, shapes
from retrax.supervised import decoding, training

N, VOCAB = 7, 8  # copy task: 0 w 0 w with w of N tokens in 1..VOCAB-1


def _lm(mode, chunk_len=8, **kw):
    attention = functools.partial(tl.LSHSelfAttention, chunk_len=chunk_len, n_hashes=2,
                                  n_buckets=4, predict_mem_len=32, predict_drop_len=32)
    args = dict(vocab_size=VOCAB, d_model=64, d_ff=128, d_attention_key=32,
                d_attention_value=32, n_layers=2, n_heads=2, dropout=0.0, max_len=32,
                attention_type=attention, mode=mode)
    args.update(kw)
    return models.ReformerLM(**args)


def _predict_equals_eval(length, **kw):
    tokens = np.random.RandomState(0).randint(1, VOCAB, (2, length)).astype(np.int32)
    ev = _lm("eval", **kw)
    ev.init(shapes.signature(tokens), rng=jax.random.PRNGKey(0))
    ref = np.asarray(jax.jit(ev.pure_fn)(tokens, ev.weights, ev.state, None)[0])
    pred = _lm("predict", **kw)
    pred.init(shapes.ShapeDtype((2, 1), np.int32), rng=jax.random.PRNGKey(0))
    step = jax.jit(pred.pure_fn)
    # The LSH layers' hash keys come from the same seed; everything else is shared.
    state, outs = pred.state, []
    for t in range(length):
        # predict mode does not shift: feed the previous token (0 first), as decoding does.
        prev = np.zeros((2, 1), np.int32) if t == 0 else tokens[:, t - 1:t]
        y, state = step(prev, ev.weights, state, None)
        outs.append(np.asarray(y))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), ref, atol=2e-5)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_lsh_reformerlm_predict_equals_eval_token_by_token():
    # n_hashes x length = chunk_len x (1 + n_chunks_before): LSH windows see everything,
    # the regime where one-token decoding is exact.
    _predict_equals_eval(8)


@pytest.mark.slow
def test_axial_reformerlm_predict_equals_eval():
    _predict_equals_eval(8, pos_type="axial", pos_axial_shape=(4, 8), pos_d_axial_embs=(32, 32))


def test_axial_weights_are_trax_shaped():
    lm = _lm("eval", pos_type="axial", pos_axial_shape=(4, 8), pos_d_axial_embs=(48, 16))
    lm.init(shapes.ShapeDtype((1, 32), np.int32))
    axial = [layer for layer in lm.sublayers if isinstance(layer, tl.AxialPositionalEncoding)]
    assert [w.shape for w in axial[0].weights] == [(1, 4, 1, 48), (1, 1, 8, 16)]
    with pytest.raises(ValueError, match="pos_axial_shape"):
        lm(np.zeros((1, 40), np.int32))


def _copy_batches(seed, batch=32):
    rs = np.random.RandomState(seed)
    zeros = np.zeros((batch, 1), np.int32)
    while True:
        w = rs.randint(1, VOCAB, (batch, N)).astype(np.int32)
        seq = np.concatenate([zeros, w, zeros, w], axis=1)
        weights = np.zeros(seq.shape, np.float32)
        weights[:, N + 2:] = 1.0  # the loss counts the copy only
        yield seq, seq, weights


@pytest.mark.slow
def test_lsh_reformerlm_learns_to_copy_and_decodes_it():
    # About 25 s on 2 CPU cores: 300 Adam steps (accuracy 1.0 from about step 200), then
    # greedy decoding with the predict-mode model.
    task = training.TrainTask(_copy_batches(0), tl.CrossEntropyLoss(),
                              trax.optimizers.Adam(0.005))
    loop = training.Loop(_lm("train"), task, stdout=io.StringIO())
    loop.run(300)
    pred = _lm("predict")
    pred.init(shapes.ShapeDtype((1, 1), np.int32))
    pred.weights = loop.model.weights
    rs = np.random.RandomState(5)
    for _ in range(4):
        w = rs.randint(1, VOCAB, (1, N)).astype(np.int32)
        prompt = np.concatenate([[[0]], w, [[0]]], axis=1).astype(np.int32)
        out = decoding.autoregressive_sample(pred, inputs=prompt, eos_id=-1, max_length=N,
                                             temperature=0.0)
        np.testing.assert_array_equal(np.asarray(out)[0], w[0])


def _encdec(mode):
    return models.Reformer(10, d_model=16, d_ff=32, n_encoder_layers=1, n_decoder_layers=2,
                           n_heads=2, dropout=0.0, max_len=16, mode=mode)


@pytest.mark.slow
def test_reformer_encdec_predict_equals_eval_and_decodes_in_one_loop():
    # Predict mode: the encoder runs once (tl.Cache), EncDecAttention keeps its keys and
    # values, the decoder's causal SelfAttention remembers max_len positions.
    src = np.array([[3, 4, 5, 0], [7, 2, 0, 0]], np.int32)
    tgt = np.random.RandomState(1).randint(1, 10, (2, 6)).astype(np.int32)
    ev = _encdec("eval")
    ev.init((shapes.signature(src), shapes.signature(tgt)), rng=jax.random.PRNGKey(1))
    want = np.asarray(jax.jit(ev.pure_fn)((src, tgt), ev.weights, ev.state, None)[0][0])
    pred = _encdec("predict")
    pred.init((shapes.signature(src), shapes.ShapeDtype((2, 1), np.int32)))
    weights = list(ev.weights)
    weights[2] = (weights[2],)  # the encoder sits in a tl.Cache in predict mode
    pred.weights = tuple(weights)
    step = jax.jit(pred.pure_fn)
    state, outs = pred.state, []
    for t in range(6):
        prev = np.zeros((2, 1), np.int32) if t == 0 else tgt[:, t - 1:t]
        (logits, _), state = step((src, prev), pred.weights, state, None)
        outs.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(outs, axis=1), want, atol=2e-5)
    got = np.asarray(decoding.autoregressive_sample(pred, inputs=src[:1], eos_id=-1,
                                                    max_length=5, temperature=0.0))
    fn, seq = jax.jit(ev.pure_fn), []
    for _ in range(5):
        tokens = np.zeros((1, 6), np.int32)
        tokens[0, :len(seq)] = seq
        logits = np.asarray(fn((src[:1], tokens), ev.weights, ev.state, None)[0][0])
        seq.append(int(np.argmax(logits[0, len(seq)])))
    np.testing.assert_array_equal(got[0], seq)


def test_positional_choices_and_refusals_name_the_value_to_change():
    def lm(**kw):
        return models.ReformerLM(vocab_size=8, d_model=12, d_ff=16, n_layers=1, mode="eval",
                                 **kw)

    with pytest.raises(ValueError, match="multiple of 8 \\(got 12\\)"):
        lm(pos_type="fixed-base")
    with pytest.raises(ValueError, match="needs pos_axial_shape"):
        lm(pos_type="axial", pos_axial_shape=(4, 8))
    with pytest.raises(ValueError, match="gin binding"):
        lm(pos_type="time-bin")
    with pytest.raises(ValueError, match="even d_model"):
        models.Reformer(8, d_model=9, n_heads=1, pos_type="sin-cos")
    for pos_type, name in (("sin-cos", "SinCos"), ("infinite", "Infinite"),
                           ("infinite-affine", "Infinite")):
        layers = [type(layer).__name__ for layer in lm(pos_type=pos_type).sublayers]
        assert f"{name}PositionalEncoding" in layers
    layers = [type(layer).__name__ for layer in models.ReformerLM(
        vocab_size=8, d_model=16, n_layers=1, pos_type="fixed-base").sublayers]
    assert "FixedBasePositionalEncoding" in layers


@pytest.mark.slow
def test_lsh_reformerlm_gradient_memory_barely_grows_with_depth():
    # XLA's compiled temp memory of the gradient at 2 and 12 layers. Measured: 3.35 and
    # 4.49 MiB (0.11 MiB per extra layer). Before LSH's gathers had permutation gradients
    # and run_heads' zero carry was tied to its inputs: 3.49 and 6.29 MiB (ratio 1.8).
    def temp_mib(n_layers):
        model = models.ReformerLM(vocab_size=64, d_model=64, d_ff=128, d_attention_key=32,
                                  d_attention_value=32, n_layers=n_layers, n_heads=2,
                                  max_len=512, attention_type=tl.LSHSelfAttention, dropout=0.0)
        x = np.ones((1, 512), np.int32)
        weights, state = model.init(shapes.signature(x))

        def loss(ws):
            return model.pure_fn(x, ws, state, jax.random.PRNGKey(0))[0].sum()

        compiled = jax.jit(jax.grad(loss)).lower(weights).compile()
        return compiled.memory_analysis().temp_size_in_bytes / 2**20

    two, twelve = temp_mib(2), temp_mib(12)
    assert twelve < 1.5 * two, (two, twelve)
