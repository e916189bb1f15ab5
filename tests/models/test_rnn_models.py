"""RNNLM, GRULM and LSTMSeq2SeqAttn (Trax 1.4.1's trax.models.rnn): shapes, values,
configs, predict mode and decoding."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.supervised import decoding

RNG = np.random.default_rng(1415)


def tokens(batch, length, vocab, low=1):
    return RNG.integers(low, vocab, (batch, length)).astype(np.int32)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def f64(x):
    return np.asarray(x, np.float64)


def jitted(model, weights, state):
    """``x -> outputs`` of the model under one jit, threading the state (a predict model's
    carries) from call to call: eager calls would compile each lax.scan again."""
    fn = jax.jit(model.pure_fn)
    state = [state]

    def run(x):
        y, state[0] = fn(x, weights, state[0], jax.random.PRNGKey(0))  # (train-mode dropout)
        return y

    return run


def lstm_step(x, c, h, w, b):
    i, j, f, o = np.split(np.concatenate([x, h], -1) @ w + b, 4, -1)
    c = c * sigmoid(f) + sigmoid(i) * np.tanh(j)
    return c, np.tanh(c) * sigmoid(o)


# -- Trax's own tests -------------------------------------------------------------------


def test_rnnlm_forward_shape():
    model = models.RNNLM(vocab_size=20, d_model=16)
    x = np.ones((3, 28), np.int32)
    assert jitted(model, *model.init(shapes.signature(x)))(x).shape == (3, 28, 20)


def test_grulm_forward_shape():
    model = models.GRULM(vocab_size=20, d_model=16)
    x = np.ones((3, 28), np.int32)
    assert jitted(model, *model.init(shapes.signature(x)))(x).shape == (3, 28, 20)


def test_lstmseq2seqattn_forward_shape():
    model = models.LSTMSeq2SeqAttn(input_vocab_size=20, target_vocab_size=20, d_model=16)
    x = np.ones((3, 28), np.int32)
    ys = jitted(model, *model.init([shapes.signature(x), shapes.signature(x)]))([x, x])
    assert [y.shape for y in ys] == [(3, 28, 20), (3, 28)]


def test_module_paths():
    from retrax.models import rnn

    assert rnn.RNNLM is models.RNNLM and rnn.GRULM is models.GRULM
    assert rnn.LSTMSeq2SeqAttn is models.LSTMSeq2SeqAttn


# -- values -----------------------------------------------------------------------------


def test_rnnlm_equals_two_stacked_lstms_by_hand():
    model = models.RNNLM(vocab_size=9, d_model=4, mode="eval")
    x = tokens(2, 5, 9)
    model.init(shapes.signature(x))
    leaves = [f64(a) for a in jax.tree_util.tree_leaves(model.weights)]
    emb, w1, b1, w2, b2, wd, bd = leaves
    assert [a.shape for a in leaves] == [(9, 4), (8, 16), (16,), (8, 16), (16,), (4, 9), (9,)]
    shifted = np.concatenate([np.zeros((2, 1), np.int32), x[:, :-1]], 1)
    e = emb[shifted]
    c1 = h1 = c2 = h2 = np.zeros((2, 4))
    outs = []
    for t in range(5):
        c1, h1 = lstm_step(e[:, t], c1, h1, w1, b1)
        c2, h2 = lstm_step(h1, c2, h2, w2, b2)
        outs.append(h2 @ wd + bd)
    np.testing.assert_allclose(f64(model(x)), np.stack(outs, 1), rtol=1e-5, atol=1e-6)


def test_rnnlm_with_gru_cells():
    model = models.RNNLM(vocab_size=10, d_model=6, rnn_cell=tl.GRUCell,
                         rnn_cell_d_state_multiplier=1, mode="eval")
    x = tokens(2, 4, 10)
    model.init(shapes.signature(x))
    assert model(x).shape == (2, 4, 10)
    assert models.config_of(model)["kwargs"]["rnn_cell"] == "GRUCell"
    # A GRU state is d_model wide: the LSTM multiplier of 2 is refused with the reason.
    wrong = models.RNNLM(vocab_size=10, d_model=6, rnn_cell=tl.GRUCell)
    with pytest.raises(ValueError, match=r"state's last axis must be 6 \(n_units\)"):
        wrong.init(shapes.signature(x))


def test_rnnlm_dropout_only_in_train_mode():
    x = tokens(2, 6, 12)
    train = models.RNNLM(vocab_size=12, d_model=8, dropout=0.5)
    w, s = train.init(shapes.signature(x))
    run = jax.jit(train.pure_fn)
    a, _ = run(x, w, s, jax.random.PRNGKey(1))
    b, _ = run(x, w, s, jax.random.PRNGKey(2))
    assert not np.allclose(a, b)
    run = jax.jit(tl.with_mode(train, "eval").pure_fn)
    c, _ = run(x, w, s, jax.random.PRNGKey(1))
    d, _ = run(x, w, s, jax.random.PRNGKey(2))
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(a, c)


# -- configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("build", [
    lambda: models.RNNLM(vocab_size=11, d_model=4, dropout=0.2),
    lambda: models.GRULM(vocab_size=11, d_model=4, n_layers=2),
    lambda: models.LSTMSeq2SeqAttn(input_vocab_size=7, target_vocab_size=9, d_model=4,
                                   n_encoder_layers=1, n_decoder_layers=3),
], ids=["RNNLM", "GRULM", "LSTMSeq2SeqAttn"])
def test_config_round_trip(build):
    model = build()
    config = models.config_of(model)
    assert config["name"] in models.names()
    again = models.from_config(config, mode="predict")
    assert models.config_of(again) == config
    assert again.mode == "predict"
    assert str(again).count("LSTM") == str(model).count("LSTM")
    sig = (shapes.ShapeDtype((1, 3), np.int32) if model.n_in == 1 else
           (shapes.ShapeDtype((1, 3), np.int32),) * 2)
    flat = tl.flatten_weights_and_state(*model.weights_and_state_signature(sig))[0]
    flat_again = tl.flatten_weights_and_state(*again.weights_and_state_signature(sig))[0]
    assert [w.shape for w in flat] == [w.shape for w in flat_again]


def test_recorded_defaults_are_traxs():
    assert models.config_of(models.RNNLM(vocab_size=5))["kwargs"] == {
        "vocab_size": 5, "d_model": 512, "n_layers": 2, "rnn_cell": "LSTMCell",
        "rnn_cell_d_state_multiplier": 2, "dropout": 0.1}
    assert models.config_of(models.GRULM())["kwargs"] == {
        "vocab_size": 256, "d_model": 512, "n_layers": 1}
    assert models.config_of(models.LSTMSeq2SeqAttn())["kwargs"] == {
        "input_vocab_size": 256, "target_vocab_size": 256, "d_model": 512,
        "n_encoder_layers": 2, "n_decoder_layers": 2, "n_attention_heads": 1,
        "attention_dropout": 0.0}


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_layers must be 2"):
        models.RNNLM(vocab_size=5, n_layers=3)
    with pytest.raises(TypeError, match="not tl.LSTMCell\\(16\\)"):
        models.RNNLM(vocab_size=5, rnn_cell=tl.LSTMCell(16))
    with pytest.raises(ValueError, match="'NoSuchCell' is not a layer"):
        models.RNNLM(vocab_size=5, rnn_cell="NoSuchCell")
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        models.GRULM(vocab_size=0)
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        models.LSTMSeq2SeqAttn(attention_dropout=1.0)
    with pytest.raises(ValueError, match="mode must be"):
        models.GRULM(mode="infer")
    with pytest.raises(ValueError, match="not a multiple of n_heads"):
        models.LSTMSeq2SeqAttn(d_model=6, n_attention_heads=4)


def test_float_inputs_to_an_lm():
    model = models.GRULM(vocab_size=5, d_model=4)
    with pytest.raises(TypeError, match="integer token ids"):
        model.init(shapes.ShapeDtype((2, 3), np.float32))
        model(np.ones((2, 3), np.float32))


# -- predict mode and decoding ----------------------------------------------------------


def load_flat(model, weights):
    """Gives ``model`` the arrays of ``weights`` in order (Trax's flat checkpoint order).

    A predict-mode ``LSTMSeq2SeqAttn`` wraps its key/value projections in
    ``tl.Cache`` (as Trax does), so its weight tree differs from the eval model's
    while the flat order is the same.
    """
    tree = jax.tree_util.tree_structure(model.weights)
    model.weights = jax.tree_util.tree_unflatten(tree, jax.tree_util.tree_leaves(weights))
    return model.weights


def greedy_by_hand(step, first, n, enc=None):
    """Greedy decoding as a Python loop over ``step`` (a fresh predict-mode runner)."""
    current, out = first, []
    for _ in range(n):
        y = step(current if enc is None else (enc, current))
        y = y if enc is None else y[0]
        current = np.asarray(np.argmax(y[:, -1], -1), np.int32)[:, None]
        out.append(current[:, 0])
    return np.stack(out, 1)


@pytest.mark.parametrize("name", ["RNNLM", "GRULM"])
def test_lm_predict_mode_and_decoding(name):
    build = {"RNNLM": models.RNNLM, "GRULM": models.GRULM}[name]
    kwargs = {"vocab_size": 13, "d_model": 8, **({"n_layers": 2} if name == "GRULM" else {})}
    full, model = build(**kwargs, mode="eval"), build(**kwargs, mode="predict")
    x = tokens(3, 9, 13)
    w, s = full.init(shapes.signature(x))
    # Larger weights, so that greedy decoding is not one token repeated.
    w = jax.tree_util.tree_map(lambda a: a * 8.0, w)
    expected = jitted(full, w, s)(x)
    _, fresh = model.init(shapes.ShapeDtype((3, 1), np.int32))
    model.weights = w
    step = jax.jit(model.pure_fn)

    def runner():
        state = [fresh]

        def run(inputs):
            y, state[0] = step(inputs, w, state[0], None)
            return y

        return run

    # Predict mode does not shift: feed [0] + x, a prefix at once, then one token at a time.
    shifted = np.concatenate([np.zeros((3, 1), np.int32), x[:, :-1]], 1)
    run = runner()
    pieces = [run(shifted[:, :5])] + [run(shifted[:, t:t + 1]) for t in range(5, 9)]
    np.testing.assert_allclose(np.concatenate(pieces, 1), expected, rtol=1e-5, atol=1e-6)
    # autoregressive_sample (one compiled loop) equals greedy decoding by hand.
    prompt = x[:, :4]
    got = decoding.autoregressive_sample(model, prompt, batch_size=3, temperature=0.0,
                                         max_length=7, eos_id=None)
    by_hand = greedy_by_hand(runner(), shifted[:, :5], 7)
    np.testing.assert_array_equal(got, by_hand)
    assert len(set(by_hand.ravel().tolist())) > 1
    # A repeated call reuses its program and gives the same tokens.
    before = decoding.compiled_programs(model)
    again = decoding.autoregressive_sample(model, prompt, batch_size=3, temperature=0.0,
                                           max_length=7, eos_id=None)
    np.testing.assert_array_equal(again, got)
    assert decoding.compiled_programs(model) == before


@pytest.mark.slow
def test_seq2seq_padding_predict_mode_and_decoding():
    kwargs = dict(input_vocab_size=10, target_vocab_size=8, d_model=8, n_encoder_layers=2,
                  n_decoder_layers=2, n_attention_heads=2)
    full = models.LSTMSeq2SeqAttn(**kwargs, mode="eval")
    src, tgt = tokens(2, 5, 10), tokens(2, 4, 8)
    src[:, -1] = 0  # trailing padding
    w, s = full.init((shapes.signature(src), shapes.signature(tgt)))
    w = jax.tree_util.tree_map(lambda a: a * 4.0, w)
    run = jitted(full, w, s)
    log_probs, targets = run((src, tgt))
    np.testing.assert_array_equal(targets, tgt)
    np.testing.assert_allclose(np.exp(f64(log_probs)).sum(-1), 1.0, atol=1e-5)
    # Padding (0) is masked out of the attention and the encoder LSTM runs left to right:
    # a real token instead of the padding changes the outputs, other padding does not.
    for token, same in ((0, True), (3, False)):
        other = src.copy()
        other[:, -1] = token
        assert np.allclose(run((other, tgt))[0], log_probs, rtol=1e-5, atol=1e-6) == same
    # Predict mode, one target token at a time, equals eval.
    model = models.LSTMSeq2SeqAttn(**kwargs, mode="predict")
    _, fresh = model.init((shapes.signature(src), shapes.ShapeDtype((2, 1), np.int32)))
    w_predict = load_flat(model, w)
    shifted = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)
    step = jitted(model, w_predict, fresh)
    pieces = [step((src, shifted[:, t:t + 1]))[0] for t in range(4)]
    np.testing.assert_allclose(np.concatenate(pieces, 1), log_probs, rtol=1e-5, atol=1e-6)
    # autoregressive_sample equals greedy decoding by hand.
    got = decoding.autoregressive_sample(model, src, batch_size=2, temperature=0.0,
                                         max_length=6, eos_id=None)
    by_hand = greedy_by_hand(jitted(model, w_predict, fresh), shifted[:, :1], 6, enc=src)
    np.testing.assert_array_equal(got, by_hand)


def test_decoding_refuses_a_train_mode_rnn():
    model = models.GRULM(vocab_size=5, d_model=4)
    model.init(shapes.ShapeDtype((1, 1), np.int32))
    with pytest.raises(ValueError, match="needs mode='predict'"):
        decoding.autoregressive_sample(model, np.ones((1, 2), np.int32), max_length=2)


def test_gradient_steps_reduce_the_loss():
    model = models.GRULM(vocab_size=6, d_model=8)
    x = np.tile(np.arange(1, 6, dtype=np.int32), (4, 2))  # a periodic sequence
    w, s = model.init(shapes.signature(x))
    loss_layer = tl.CrossEntropyLoss()
    weights = np.ones(x.shape, np.float32)
    lw, ls = loss_layer.init((shapes.ShapeDtype(x.shape + (6,)), shapes.signature(x),
                              shapes.signature(weights)))

    def loss_fn(w):
        logits = model.pure_fn(x, w, s, None)[0]  # GRULM gives logits; the loss takes them
        return loss_layer.pure_fn((logits, x, weights), lw, ls, None)[0]

    step = jax.jit(jax.value_and_grad(loss_fn))
    first, _ = step(w)
    for _ in range(30):
        _, g = step(w)
        w = jax.tree_util.tree_map(lambda p, d: p - 2.0 * d, w, g)
    assert float(step(w)[0]) < 0.5 * float(first)
