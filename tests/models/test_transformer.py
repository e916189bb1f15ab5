"""Transformer models: structure, weight layout, modes (TRAX_REFERENCE §1.4, §4)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import models, shapes


def int_sig(*shape):
    return shapes.ShapeDtype(shape, np.int32)


def flat(weights, state=()):
    return tl.flatten_weights_and_state(weights, state)


def tokens(seed, *shape, vocab=20, low=1):
    return np.random.default_rng(seed).integers(low, vocab, size=shape).astype(np.int32)


# Trax's real output (TRAX_REFERENCE §1.4) plus retrax's final LogSoftmax line.
TRAX_PRINTED_LM = """\
Serial[
  Serial[
    ShiftRight(1)
  ]
  Embedding_32_16
  Dropout
  PositionalEncoding
  Serial[
    Branch_out2[
      None
      Serial[
        LayerNorm
        Serial[
          Serial[
            Serial[
              Branch_out3[
                [Dense_16, Serial[
                  SplitIntoHeads
                ]]
                [Dense_16, Serial[
                  SplitIntoHeads
                ]]
                [Dense_16, Serial[
                  SplitIntoHeads
                ]]
              ]
              DotProductCausalAttention_in3
              Serial[
                MergeHeads
              ]
              Dense_16
            ]
          ]
        ]
        Dropout
      ]
    ]
    Add_in2
  ]
  Serial[
    Branch_out2[
      None
      Serial[
        LayerNorm
        Dense_32
        Serial[
          Relu
        ]
        Dropout
        Dense_16
        Dropout
      ]
    ]
    Add_in2
  ]
  LayerNorm
  Dense_32
]"""
RETRAX_PRINTED_LM = TRAX_PRINTED_LM[: -len("]")] + "  LogSoftmax\n]"

SMALL_LM = dict(vocab_size=20, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16)
SMALL_ENCDEC = dict(
    input_vocab_size=20,
    d_model=16,
    d_ff=32,
    n_encoder_layers=1,
    n_decoder_layers=2,
    n_heads=2,
    max_len=16,
)


# -- structure ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["train", "predict"])
def test_transformer_lm_prints_like_trax_plus_log_softmax(mode):
    model = models.TransformerLM(
        vocab_size=32, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=64, mode=mode
    )
    assert str(model) == RETRAX_PRINTED_LM


def test_transformer_lm_sublayer_count():
    model = models.TransformerLM(vocab_size=32, d_model=16, d_ff=32, n_layers=2, n_heads=2)
    assert len(model.sublayers) == 11  # Trax's 10, plus LogSoftmax
    assert model.sublayers[-1].name == "LogSoftmax"


def test_models_are_reachable_as_trax_models():
    assert trax.models.TransformerLM is models.TransformerLM
    assert models.transformer.Transformer is models.Transformer


@pytest.mark.parametrize("n_layers", [1, 2])
def test_transformer_lm_flat_weight_order(n_layers):
    v, d, d_ff, max_len = 13, 8, 12, 10
    model = models.TransformerLM(
        vocab_size=v, d_model=d, d_ff=d_ff, n_layers=n_layers, n_heads=2, max_len=max_len
    )
    w_sig, s_sig = model.weights_and_state_signature(int_sig(1, 4))
    flat_w, flat_s = flat(w_sig, s_sig)
    block = [(d,), (d,)] + [(d, d), (d,)] * 4 + [(d,), (d,), (d, d_ff), (d_ff,), (d_ff, d), (d,)]
    expected = [(v, d), (max_len, d)] + block * n_layers + [(d,), (d,), (d, v), (v,)]
    assert [tuple(w.shape) for w in flat_w] == expected
    assert len(flat_w) == 2 + 16 * n_layers + 4
    # train/eval state: one float32 rate per Dropout.
    assert [(tuple(s.shape), np.dtype(s.dtype)) for s in flat_s] == [((), np.dtype(np.float32))] * (
        1 + 3 * n_layers
    )


def test_transformer_lm_weights_are_identical_across_modes():
    shapes_by_mode, values_by_mode = [], []
    for mode in ("train", "eval", "predict"):
        model = models.TransformerLM(**SMALL_LM, mode=mode)
        w_sig, _ = model.weights_and_state_signature(int_sig(1, 1))
        shapes_by_mode.append([tuple(w.shape) for w in flat(w_sig)[0]])
        model.init(int_sig(1, 1), rng=trax.fastmath.random.get_prng(5))
        values_by_mode.append([np.asarray(w) for w in flat(model.weights)[0]])
    assert shapes_by_mode[0] == shapes_by_mode[1] == shapes_by_mode[2]
    # The same key gives the same weights in every mode (a trained model's weights
    # serve its predict-mode copy).
    for values in values_by_mode[1:]:
        assert len(values) == len(values_by_mode[0])
        for a, b in zip(values, values_by_mode[0]):
            np.testing.assert_array_equal(a, b)


def test_transformer_lm_predict_state_layout():
    model = models.TransformerLM(**dict(SMALL_LM, n_layers=1), mode="predict")
    _, s_sig = model.weights_and_state_signature(int_sig(3, 1))
    # Trax's order: embedding dropout, PE index, (k, v, index, 3 dropouts) per layer. The
    # caches are (B*H, max_inference_length, dh) as in Trax; max_inference_length = max_len.
    got = [(tuple(s.shape), np.dtype(s.dtype).name) for s in flat((), s_sig)[1]]
    cache = ((6, 16, 8), "float32")
    assert (
        got == [((), "float32"), ((), "int32"), cache, cache, ((), "int32")] + [((), "float32")] * 3
    )


def test_max_inference_length_sets_the_cache_length():
    model = models.TransformerLM(**SMALL_LM, mode="predict", max_inference_length=5)
    _, s_sig = model.weights_and_state_signature(int_sig(1, 1))
    caches = [s.shape for s in flat((), s_sig)[1] if len(s.shape) == 3]
    assert caches == [(2, 5, 8)] * 4
    with pytest.raises(ValueError, match="max_inference_length must be a positive int"):
        models.TransformerLM(**SMALL_LM, max_inference_length=0)


def test_transformer_shares_the_embedding_once():
    model = models.Transformer(**SMALL_ENCDEC)
    sig = (int_sig(2, 5), int_sig(2, 4))
    w_sig, _ = model.weights_and_state_signature(sig)
    shapes_ = [tuple(w.shape) for w in flat(w_sig)[0]]
    d, v = 16, 20
    enc = 16 * 1
    dec = 2 * (16 + 10)  # causal attention + cross attention + FF per decoder layer
    assert len(shapes_) == 2 + enc + 2 + 1 + dec + 2 + 2  # emb, pe, ..., ln, pe, dense
    assert shapes_.count((v, d)) == 1
    separate = models.Transformer(**SMALL_ENCDEC, output_vocab_size=7)
    w_sig, _ = separate.weights_and_state_signature(sig)
    shapes_ = [tuple(w.shape) for w in flat(w_sig)[0]]
    assert (v, d) in shapes_ and (7, d) in shapes_ and shapes_[-2:] == [(d, 7), (7,)]


def test_transformer_printing_starts_like_trax():
    text = str(models.Transformer(**SMALL_ENCDEC))
    assert text.startswith(
        "Serial_in2_out2[\n  Select[0,1,1]_in2_out3\n  Branch_out2[\n    []\n    Serial[\n"
        "      PaddingMask(0)\n"
    )
    assert text.endswith("  Dense_20\n  LogSoftmax\n]")
    assert "Cache[" in str(models.Transformer(**SMALL_ENCDEC, mode="predict"))


# -- forward shapes (ports of Trax's transformer_test) ------------------------------------


def test_transformer_lm_forward_shape():
    model = models.TransformerLM(vocab_size=16, d_model=32, d_ff=64, n_layers=2, n_heads=2)
    assert model.output_signature(int_sig(3, 5)).shape == (3, 5, 16)


@pytest.mark.parametrize("input_vocab, output_vocab", [(10, None), (10, 10), (10, 20)])
def test_transformer_forward_shape(input_vocab, output_vocab):
    model = models.Transformer(
        input_vocab,
        output_vocab,
        d_model=32,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=2,
    )
    y, targets = model.output_signature((int_sig(3, 5), int_sig(3, 4)))
    assert y.shape == (3, 4, output_vocab or input_vocab)
    assert targets.shape == (3, 4)


def test_transformer_encoder_forward_shape_and_weights():
    model = models.TransformerEncoder(
        vocab_size=20, n_classes=3, d_model=16, d_ff=32, n_layers=2, n_heads=2, max_len=16
    )
    assert (model.n_in, model.n_out) == (1, 1)
    w_sig, _ = model.weights_and_state_signature(int_sig(2, 6))
    assert len(flat(w_sig)[0]) == 2 + 16 * 2 + 2 + 2
    assert model.output_signature(int_sig(2, 6)).shape == (2, 3)


# -- TransformerEncoder values ---------------------------------------------------------

ENCODER = dict(vocab_size=20, n_classes=3, d_model=16, d_ff=32, n_layers=2, n_heads=4,
               max_len=16)


def _layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def _heads(y, n_heads):
    """(B, L, D) -> (B, H, L, D / H): head h holds features h * D/H to (h + 1) * D/H."""
    return y.reshape(y.shape[0], y.shape[1], n_heads, -1).transpose(0, 2, 1, 3)


def _encoder_by_hand(weights, x, n_heads):
    """TransformerEncoder in float64 NumPy, from its flat weights; returns (positions, logits).

    ``positions``: the last block's output ``(B, L, D)``; token 0 is padding, masked
    as a key. The classifier is Dense(mean over all L positions of LayerNorm(...)).
    """
    w = [np.asarray(a, np.float64) for a in weights]
    embedding, pos = w[0], w[1]
    h = embedding[x] + pos[: x.shape[1]]
    keys_ok = (x != 0)[:, None, None, :]  # (B, 1, 1, L): which keys a query may see
    i = 2
    while i < len(w) - 4:
        ln1, ln2 = w[i : i + 2], w[i + 10 : i + 12]
        (wq, bq), (wk, bk), (wv, bv), (wo, bo) = (w[j : j + 2] for j in range(i + 2, i + 10, 2))
        (w1, b1), (w2, b2) = w[i + 12 : i + 14], w[i + 14 : i + 16]
        n = _layer_norm(h, *ln1)
        q, k, v = (_heads(n @ wm + bm, n_heads) for wm, bm in ((wq, bq), (wk, bk), (wv, bv)))
        dots = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
        dots = np.where(keys_ok, dots, -1e9)
        probs = np.exp(dots - dots.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attended = (probs @ v).transpose(0, 2, 1, 3).reshape(h.shape)
        h = h + attended @ wo + bo
        h = h + np.maximum(_layer_norm(h, *ln2) @ w1 + b1, 0.0) @ w2 + b2
        i += 16
    logits = _layer_norm(h, w[-4], w[-3]).mean(1) @ w[-2] + w[-1]
    return h, logits


@pytest.fixture(scope="module")
def encoder():
    model = models.TransformerEncoder(**ENCODER, mode="eval")
    model.init(int_sig(2, 6), rng=trax.fastmath.random.get_prng(3))
    return model


def test_transformer_encoder_equals_its_layers_by_hand(encoder):
    x = np.array([[3, 4, 5, 6, 7, 8], [9, 2, 11, 0, 0, 0]], np.int32)  # row 1 is padded
    weights = flat(encoder.weights)[0]
    assert len(weights) == 2 + 16 * ENCODER["n_layers"] + 2 + 2
    _, want = _encoder_by_hand(weights, x, ENCODER["n_heads"])
    np.testing.assert_allclose(encoder(x), want, rtol=1e-4, atol=1e-5)
    # The model's own composition of layers, run by pure_fn under jit, agrees.
    jitted = jax.jit(lambda x: encoder.pure_fn(x, encoder.weights, encoder.state, None)[0])
    np.testing.assert_allclose(jitted(x), want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_transformer_encoder_padding_is_masked(encoder):
    # Appending padding (token 0) leaves every real position's encoding unchanged:
    # attention never reads a padded key. The class logits average over all positions,
    # padding included (as in Trax 1.4.1, whose fixture this model matches), so they
    # are those of the longer sequence, computed by hand.
    x = np.array([[3, 4, 5], [9, 2, 11]], np.int32)
    padded = np.concatenate([x, np.zeros((2, 4), np.int32)], axis=1)
    body = tl.Serial(encoder.sublayers[:-3])  # up to the last block (drops the mask)
    weights, state = encoder.weights[:-3], encoder.state[:-3]
    short = body.pure_fn(x, weights, state, None)[0]
    long_ = body.pure_fn(padded, weights, state, None)[0]
    assert long_.shape == (2, 7, ENCODER["d_model"])
    np.testing.assert_allclose(long_[:, :3], short, rtol=1e-5, atol=1e-5)
    hand_positions, hand_logits = _encoder_by_hand(flat(encoder.weights)[0], padded,
                                                   ENCODER["n_heads"])
    np.testing.assert_allclose(long_, hand_positions, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(encoder(padded), hand_logits, rtol=1e-4, atol=1e-5)
    # The padding of each row is its own: a padded row's logits do not depend on the
    # other rows of the batch.
    np.testing.assert_allclose(encoder(padded[:1]), encoder(padded)[:1], rtol=1e-5, atol=1e-6)


def test_transformer_decoder():
    vec = models.TransformerDecoder(d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=16)
    assert str(vec).startswith("Serial[\n  Dense_16\n")
    assert vec.output_signature(shapes.ShapeDtype((2, 3, 5))).shape == (2, 3, 16)
    tok = models.TransformerDecoder(
        vocab_size=20, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=16
    )
    assert str(tok).startswith("Serial[\n  Embedding_20_16\n")
    assert tok.output_signature(int_sig(2, 3)).shape == (2, 3, 16)


# -- values --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_eval():
    """A small eval-mode TransformerLM, its weights and state, and a jitted apply."""
    model = models.TransformerLM(**SMALL_LM, mode="eval")
    w, s = model.init(int_sig(2, 6))
    return model, w, s, jax.jit(lambda x: model.pure_fn(x, w, s, None)[0])


def test_lm_outputs_are_log_probabilities(lm_eval):
    y = lm_eval[3](tokens(0, 2, 6))
    np.testing.assert_allclose(np.exp(np.asarray(y)).sum(-1), 1.0, atol=1e-5)


def test_lm_is_causal_and_shifted(lm_eval):
    x = tokens(0, 2, 6)
    y = np.asarray(lm_eval[3](x))
    changed = x.copy()
    changed[:, 3] = (x[:, 3] + 1) % 20
    y2 = np.asarray(lm_eval[3](changed))
    # ShiftRight: output t depends on tokens < t only.
    np.testing.assert_allclose(y2[:, :4], y[:, :4], atol=1e-6)
    assert not np.allclose(y2[:, 4:], y[:, 4:])


def _predict_copy(make, weights, sig_predict):
    """A predict-mode model with the given (eval-mode) weights, and its fresh state."""
    pr = make("predict")
    w_sig, s_sig = pr.weights_and_state_signature(sig_predict)
    pr_weights, _ = tl.unflatten_weights_and_state(
        flat(weights)[0], [], (w_sig, s_sig), weights_only=True
    )
    _, pr_state = pr.init(sig_predict)
    return pr, pr_weights, pr_state


def _eval_and_predict(make, sig_eval, sig_predict):
    """Eval and predict models sharing one set of weights."""
    ev = make("eval")
    weights, eval_state = ev.init(sig_eval)
    return (ev, weights, eval_state) + _predict_copy(make, weights, sig_predict)


def test_lm_predict_token_by_token_equals_eval(lm_eval):
    _, w, _, apply_eval = lm_eval
    x = tokens(1, 2, 6)
    pr, pw, ps = _predict_copy(
        lambda mode: models.TransformerLM(**SMALL_LM, mode=mode), w, int_sig(2, 1)
    )
    y_eval = apply_eval(x)
    traces = []

    def step(tok, state):
        traces.append(1)
        return pr.pure_fn(tok, pw, state, None)

    step = jax.jit(step)
    # Predict mode has no ShiftRight: feed the start token 0, then x[:, :-1].
    fed = np.concatenate([np.zeros((2, 1), np.int32), x[:, :-1]], 1)
    outs = []
    for t in range(6):
        y, ps = step(fed[:, t : t + 1], ps)
        outs.append(y)
    assert len(traces) == 1  # one compilation for the whole decode
    np.testing.assert_allclose(np.concatenate(outs, 1), y_eval, atol=1e-5)


@pytest.mark.slow
def test_transformer_decoder_predict_equals_eval():
    src = tokens(2, 2, 5)
    src[0, 3:] = 0  # padding in the source
    tgt = tokens(3, 2, 6)
    config = dict(SMALL_ENCDEC, n_decoder_layers=1)
    ev, w, s, pr, pw, ps = _eval_and_predict(
        lambda mode: models.Transformer(**config, mode=mode),
        (shapes.signature(src), shapes.signature(tgt)),
        (shapes.signature(src), int_sig(2, 1)),
    )
    y_eval, targets = jax.jit(lambda xs: ev.pure_fn(xs, w, s, None)[0])((src, tgt))
    step = jax.jit(lambda inputs, state: pr.pure_fn(inputs, pw, state, None))
    fed = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], 1)
    outs = []
    for t in range(6):
        (y, _), ps = step((src, fed[:, t : t + 1]), ps)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), y_eval, atol=1e-5)
    np.testing.assert_array_equal(targets, tgt)


def test_transformer_decoder_model_predict_equals_eval():
    kw = dict(vocab_size=20, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=16)
    x = tokens(4, 2, 6)
    ev, w, s, pr, pw, ps = _eval_and_predict(
        lambda mode: models.TransformerDecoder(**kw, mode=mode), int_sig(2, 6), int_sig(2, 1)
    )
    y_eval = jax.jit(lambda x: ev.pure_fn(x, w, s, None)[0])(x)
    step = jax.jit(lambda tok, state: pr.pure_fn(tok, pw, state, None))
    outs = []
    for t in range(6):
        y, ps = step(x[:, t : t + 1], ps)
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs, 1), y_eval, atol=1e-5)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_predict_past_the_cache_raises(lm_eval):
    pr, pw, ps = _predict_copy(
        lambda mode: models.TransformerLM(**SMALL_LM, mode=mode, max_inference_length=3),
        lm_eval[1],
        int_sig(2, 1),
    )
    _, ps = pr.pure_fn(np.zeros((2, 3), np.int32), pw, ps, None)  # a 3-token prompt fills it
    with pytest.raises(tl.LayerError, match="key/value cache of length 3"):
        pr.pure_fn(np.zeros((2, 1), np.int32), pw, ps, None)


def test_eval_is_deterministic_and_train_applies_dropout():
    config = dict(SMALL_LM, n_layers=1, dropout=0.3)
    x = tokens(5, 2, 6)
    ev = models.TransformerLM(**config, mode="eval")
    w, s = ev.init(shapes.signature(x))
    run_eval = jax.jit(lambda key: ev.pure_fn(x, w, s, key)[0])
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(run_eval(k1), run_eval(k2))
    tr = models.TransformerLM(**config, mode="train")
    tr.init(shapes.signature(x))
    run_train = jax.jit(lambda key: tr.pure_fn(x, w, s, key)[0])
    y1 = run_train(k1)
    np.testing.assert_array_equal(run_train(k1), y1)  # same seed, same result
    assert not np.allclose(run_train(k2), y1)
    assert not np.allclose(run_eval(k1), y1)


def test_ff_activation_is_a_constructor():
    text = str(models.TransformerLM(**SMALL_LM, ff_activation=tl.Gelu))
    assert "Gelu" in text and "Relu" not in text
    with pytest.raises(TypeError, match="layer constructor called with no arguments"):
        models.TransformerLM(**SMALL_LM, ff_activation=tl.Relu())


# -- argument errors -----------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: models.TransformerLM(10, d_model=10, n_heads=4),
        lambda: models.Transformer(10, d_model=10, n_heads=4),
        lambda: models.TransformerEncoder(10, d_model=10, n_heads=4),
        lambda: models.TransformerDecoder(10, d_model=10, n_heads=4),
    ],
)
def test_d_model_must_be_a_multiple_of_n_heads(make):
    with pytest.raises(ValueError, match=r"d_model \(10\) is not a multiple of n_heads \(4\)"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: models.TransformerLM(10, mode="decode"),
        lambda: models.Transformer(10, mode="Eval"),
        lambda: models.TransformerEncoder(10, mode="x"),
    ],
)
def test_bad_mode(make):
    with pytest.raises(ValueError, match="mode must be 'train', 'eval' or 'predict'"):
        make()


def test_bad_sizes():
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        models.TransformerLM(0)
    with pytest.raises(ValueError, match="output_vocab_size must be a positive int"):
        models.Transformer(10, output_vocab_size=-1)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        models.TransformerLM(10, d_model=8, n_heads=2, dropout=1.0)
