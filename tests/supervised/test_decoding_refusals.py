"""Decoding refuses what it cannot do; sampling without an rng draws fresh randomness;
eager out-of-range token ids raise instead of being clamped.

Every refusal here happens before anything is compiled or allocated, so the
file is fast.
"""

from __future__ import annotations

import tracemalloc

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax.fastmath import random
from retrax.supervised import decoding

VOCAB, MAX_LEN = 16, 64
PROMPT = np.array([[2, 3]], np.int32)


def sig(*shape):
    return trax.shapes.ShapeDtype(shape, np.int32)


@pytest.fixture(scope="module")
def lm():
    model = trax.models.TransformerLM(vocab_size=VOCAB, d_model=16, d_ff=32, n_layers=1,
                                      n_heads=2, max_len=MAX_LEN, mode="predict")
    model.init(sig(1, 1))
    return model


def _sample(model, **kw):
    return decoding.autoregressive_sample(model, PROMPT, **{"max_length": 3, **kw})


def _stream(model, **kw):
    return next(decoding.autoregressive_sample_stream(model, PROMPT, **{"max_length": 3, **kw}))


def _beams(model, **kw):
    return decoding.beam_search(model, PROMPT, **{"max_length": 3, **kw})


# -- temperature -----------------------------------------------------------------


@pytest.mark.parametrize("decode", [_sample, _stream], ids=["sample", "stream"])
@pytest.mark.parametrize("temperature", [float("nan"), np.float32("nan"), -1.0, -1e-9,
                                         float("inf")])
def test_temperature_nan_negative_or_inf_is_refused(lm, decode, temperature):
    # Before: NaN returned token id 16 (== vocab_size) for every position.
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0; got "):
        decode(lm, temperature=temperature)


@pytest.mark.parametrize("temperature", ["1.0", None, [1.0]])
def test_temperature_that_is_not_a_number_is_refused(lm, temperature):
    with pytest.raises(TypeError, match=r"autoregressive_sample: temperature must be a number"):
        _sample(lm, temperature=temperature)


# -- start_id ---------------------------------------------------------------------


@pytest.mark.parametrize("decode", [_sample, _stream, _beams], ids=["sample", "stream", "beam"])
@pytest.mark.parametrize("start_id", [VOCAB, -1, 10**9])
def test_start_id_outside_the_vocabulary_is_refused(lm, decode, start_id):
    # Before: the embedding clamped it and decoding went on with the wrong start symbol.
    with pytest.raises(ValueError, match=rf"start_id={start_id} is outside the model's "
                                         rf"vocabulary \[0, {VOCAB}\) \(vocab_size={VOCAB}\)"):
        decode(lm, start_id=start_id)


def test_start_id_must_be_an_int(lm):
    with pytest.raises(TypeError, match=r"start_id must be an int token id; got float 0.5"):
        _sample(lm, start_id=0.5)


def test_encoder_decoder_checks_prompt_and_start_id_against_their_own_vocabularies():
    model = trax.models.Transformer(input_vocab_size=10, output_vocab_size=12, d_model=8,
                                    d_ff=16, n_encoder_layers=1, n_decoder_layers=1,
                                    n_heads=2, max_len=32, mode="predict")
    model.init((sig(1, 3), sig(1, 1)))
    # The source is checked against the first vocabulary (10), start_id against the
    # last (12): ids valid in one and not the other tell the two apart.
    out = decoding.autoregressive_sample(model, np.array([[1, 2, 9]]), start_id=11,
                                         max_length=2, temperature=0.0)
    assert out.shape[0] == 1 and ((0 <= out) & (out < 12)).all()
    with pytest.raises(ValueError, match=r"start_id=12 is outside the model's vocabulary "
                                         r"\[0, 12\)"):
        decoding.autoregressive_sample(model, np.array([[1, 2, 3]]), start_id=12,
                                       max_length=2)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\).*from 1 to 11"):
        decoding.autoregressive_sample(model, np.array([[1, 2, 11]]), max_length=2)


# -- max_length --------------------------------------------------------------------


@pytest.mark.parametrize("decode", [_sample, _stream, _beams], ids=["sample", "stream", "beam"])
def test_max_length_beyond_max_len_is_refused_before_any_allocation(lm, decode):
    # Before: autoregressive_sample raised MemoryError allocating (1, 10**12) int32.
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=rf"needs {10**12 + 3} positions but the model's "
                                             rf"max_len is {MAX_LEN}"):
            decode(lm, max_length=10**12)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # nothing sized by max_length was allocated (NumPy reports here)


def test_stream_max_length_zero_is_refused(lm):
    # Before: max_length=0 was read as "not given" and streamed up to max_len tokens.
    with pytest.raises(ValueError, match=r"max_length must be a positive int; got 0"):
        _stream(lm, max_length=0)


# -- logsoftmax_sample without rng -------------------------------------------------


def test_logsoftmax_sample_without_rng_draws_fresh_randomness():
    # Before: a fixed key, so 20 draws from a uniform distribution gave one token 20 times.
    uniform = np.log(np.full((8,), 1 / 8, np.float32))
    draws = [int(tl.logsoftmax_sample(uniform, 1.0)) for _ in range(200)]
    assert set(draws) == set(range(8))
    counts = np.bincount(draws, minlength=8)
    assert counts.min() >= 10  # 25 expected per class


def test_logsoftmax_sample_repeats_after_seeding():
    uniform = np.log(np.full((2, 8), 1 / 8, np.float32))
    random.seed(123)
    first = [tl.logsoftmax_sample(uniform, 0.7).tolist() for _ in range(10)]
    random.seed(123)
    second = [tl.logsoftmax_sample(uniform, 0.7).tolist() for _ in range(10)]
    assert first == second
    assert len({tuple(row) for row in first}) > 1
    random.seed(124)
    assert [tl.logsoftmax_sample(uniform, 0.7).tolist() for _ in range(10)] != first
    # With an rng the result depends only on the key.
    key = random.get_prng(5)
    assert (tl.logsoftmax_sample(uniform, 1.0, rng=key).tolist()
            == tl.logsoftmax_sample(uniform, 1.0, rng=key).tolist())


@pytest.mark.parametrize("temperature", [float("nan"), -0.5])
def test_logsoftmax_sample_refuses_nan_or_negative_temperature(temperature):
    with pytest.raises(ValueError, match=r"logsoftmax_sample: temperature must be a number "
                                         r">= 0"):
        tl.logsoftmax_sample(np.zeros((8,), np.float32), temperature)


@pytest.mark.parametrize("temperature", ["hot", [1.0, 2.0]])
def test_logsoftmax_sample_refuses_a_temperature_that_is_not_a_number(temperature):
    with pytest.raises(TypeError, match=r"logsoftmax_sample: temperature must be a number"):
        tl.logsoftmax_sample(np.zeros((8,), np.float32), temperature)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "3"])
def test_seed_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match=r"random.seed: the seed must be a non-negative int"):
        random.seed(bad)


# -- out-of-range ids: eager check, nothing under jit --------------------------------


@pytest.mark.parametrize("bad_id", [10, -1, 99])
def test_embedding_eager_out_of_range_id_raises(bad_id):
    # Before: JAX clamped the index silently (-1 read row 0, 10 the last row).
    emb = tl.Embedding(10, 4)
    emb.init(None)
    ids = np.array([[1, bad_id, 2]], np.int32)
    with pytest.raises(ValueError, match=rf"Embedding_10_4 got token id {bad_id}, outside its "
                                         rf"vocabulary \[0, 10\) \(vocab_size=10\)") as info:
        emb(ids)
    assert isinstance(info.value, tl.LayerError)
    assert "layer Embedding_10_4 (in pure_fn)" in str(info.value)
    # In range: no error, and jit clamps (documented) without checking.
    assert emb(np.array([[0, 9]])).shape == (1, 2, 4)
    clipped = np.clip(ids, 0, 9)
    np.testing.assert_array_equal(jax.jit(emb)(ids), emb(clipped))


def test_transformer_lm_eager_out_of_range_id_raises():
    model = trax.models.TransformerLM(vocab_size=VOCAB, d_model=16, d_ff=32, n_layers=1,
                                      n_heads=2, max_len=MAX_LEN, mode="eval")
    model.init(sig(1, 4))
    assert model(np.array([[1, 2, 15, 3]])).shape == (1, 4, VOCAB)
    with pytest.raises(ValueError, match=rf"Serial\[1\] > Embedding_16_16 .*\n(.*\n)*.*"
                                         rf"got token id {VOCAB}, outside its vocabulary "
                                         rf"\[0, {VOCAB}\)"):
        model(np.array([[1, 2, VOCAB, 3]]))


def test_the_eager_check_is_not_traced_into_jitted_code():
    emb = tl.Embedding(10, 4)
    emb.init(None)
    bad = np.array([[1, 12]], np.int32)
    step = jax.jit(lambda w, x: emb.pure_fn(x, w, (), None)[0])
    # Traced: no check (on the values it would raise on 12; on a tracer it could not
    # even read them), in training or decoding; the id is clamped to the last row.
    for _ in range(3):
        y = step(emb.weights, bad)
    np.testing.assert_array_equal(y, np.asarray(emb.weights)[[[1, 9]]])
    with pytest.raises(ValueError, match="got token id 12, outside its vocabulary"):
        emb(bad)  # eager: checked
