"""retrax.rl.serialization_utils layers and SerializedModel, and test_utils.MockTransformerLM."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.layers import test_utils
from retrax.rl import serialization_utils as su
from retrax.rl import space_serializer, spaces


def _discrete(n=2, vocab=2):
    return space_serializer.create(spaces.Discrete(n), vocab_size=vocab)


def test_serialize_layer_keeps_batch_and_time():
    srl = space_serializer.create(spaces.Box(0.0, 1.0, (2,)), vocab_size=4, precision=2)
    x = np.array([[[0.5625, 1.0], [0.0, 0.25]]])  # (B=1, L=2, 2)
    np.testing.assert_array_equal(su.Serialize(srl)(x), [[[2, 1, 3, 3], [0, 0, 1, 0]]])


def test_interleave_with_one_more_observation_and_with_as_many():
    x = np.array([[[1, 2], [3, 4], [5, 6]]])
    y = np.array([[[7], [8]]])
    np.testing.assert_array_equal(su.Interleave()((x, y)), [[1, 2, 7, 3, 4, 8, 5, 6]])
    np.testing.assert_array_equal(su.Interleave()((x[:, :2], y)), [[1, 2, 7, 3, 4, 8]])
    with pytest.raises(ValueError, match="L1 == L2 or L1 == L2 \\+ 1"):
        su.Interleave()((x, y[:, :1]))


@pytest.mark.parametrize("n_obs", [2, 3])
def test_deinterleave_inverts_interleave_also_for_logits(n_obs):
    x = np.arange(n_obs * 2).reshape(1, n_obs, 2) + 100
    y = np.arange(2).reshape(1, 2, 1)
    mixed = np.asarray(su.Interleave()((x, y)))
    back_x, back_y = su.Deinterleave(2, 1)(mixed)
    np.testing.assert_array_equal(back_x, x)
    np.testing.assert_array_equal(back_y, y)
    logits = np.stack([mixed, -mixed], axis=-1)  # (B, N, V=2)
    lx, ly = su.Deinterleave(2, 1)(logits)
    np.testing.assert_array_equal(lx[..., 0], x)
    np.testing.assert_array_equal(ly[..., 1], -y)
    with pytest.raises(ValueError, match="not a whole number"):
        su.Deinterleave(2, 1)(np.zeros((1, 3 * n_obs + 1), np.int32))


def test_representation_mask_and_significance_weights():
    srl = space_serializer.create(spaces.Box(0.0, 1.0, ()), vocab_size=4, precision=3)
    mask = np.array([[1.0, 0.0], [1.0, 1.0]])
    token_mask = np.asarray(su.RepresentationMask(srl)(mask))
    assert token_mask.shape == (2, 2, 3)
    np.testing.assert_array_equal(token_mask[0], [[1, 1, 1], [0, 0, 0]])
    # A mask with extra axes counts a step when any of its entries does.
    np.testing.assert_array_equal(su.RepresentationMask(srl)(np.array([[[0, 1], [0, 0]]]))[0],
                                  [[1, 1, 1], [0, 0, 0]])
    weights = su.SignificanceWeights(srl, 0.5)(token_mask)
    np.testing.assert_allclose(weights[0], [[1.0, 0.5, 0.25], [0, 0, 0]])


def test_serialized_model_feeds_interleaved_tokens_and_returns_observation_targets():
    vocab = 3
    fed = []

    def recording_model(mode):
        del mode

        def logits(tokens):
            fed.append(tokens)
            return jnp.broadcast_to(tokens.astype(jnp.float32)[:, :, None],
                                    tokens.shape + (vocab,))
        return tl.Fn("Recording", logits)

    obs_srl = space_serializer.create(spaces.MultiDiscrete([2, 2]), vocab_size=vocab)
    model = su.SerializedModel(recording_model, obs_srl, _discrete(2, vocab), 0.9)
    obs = np.array([[[0, 1], [1, 1], [1, 0], [0, 0]]])
    act = np.array([[1, 0, 0]])
    mask = np.array([[1.0, 1.0, 1.0, 0.0]])
    batch = (obs, act, obs, mask)
    model.init(shapes.signature(batch))
    obs_logits, obs_tokens, weights = model(batch)
    np.testing.assert_array_equal(fed[-1], [[0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0]])
    assert obs_logits.shape == (1, 4, 2, vocab)
    np.testing.assert_array_equal(obs_logits[..., 0], obs)
    np.testing.assert_array_equal(obs_tokens, obs)
    np.testing.assert_array_equal(weights, [[[1, 1], [1, 1], [1, 1], [0, 0]]])


def test_serialized_model_weights_tokens_by_significance():
    obs_srl = space_serializer.create(spaces.Box(-2.0, 2.0, (2,)), vocab_size=8, precision=3)
    model = su.SerializedModel(lambda mode: tl.Embedding(8, 8), obs_srl, _discrete(2, 8), 0.5)
    obs = np.zeros((1, 3, 2), np.float32)
    batch = (obs, np.array([[0, 1]]), obs, np.ones((1, 3), np.float32))
    model.init(shapes.signature(batch))
    logits, tokens, weights = model(batch)
    assert logits.shape == (1, 3, 6, 8) and tokens.shape == (1, 3, 6)
    np.testing.assert_allclose(weights[0, 0], [1, 0.5, 0.25, 1, 0.5, 0.25])
    # The token model is the third sublayer; its weights are what decoding uses.
    assert [w.shape for w in jax.tree_util.tree_leaves(model.seq_model_weights)] == [(8, 8)]
    eval_model = tl.with_mode(model, "eval")
    assert eval_model.observation_serializer is not None and eval_model.mode in (None, "eval")
    with pytest.raises(ValueError, match="mode must be 'train' or 'eval'"):
        su.SerializedModel(lambda mode: tl.Dense(2), obs_srl, obs_srl, 0.5, mode="predict")


@pytest.mark.slow  # ~3 s of eager layer calls
def test_time_series_model_runs_and_makes_a_predict_model():
    def lm(mode, vocab_size):
        return tl.Serial(tl.Embedding(vocab_size, 4), tl.Dense(vocab_size), tl.LogSoftmax())

    model = su.TimeSeriesModel(lm, low=0.0, high=1.0, precision=2, vocab_size=16)
    x = np.full((2, 3), 0.5, np.float32)
    batch = (x, np.zeros((2, 3), np.int32), x, np.ones((2, 3), np.float32))
    model.init(shapes.signature(batch))
    logits, tokens, _ = model(batch)
    assert logits.shape == (2, 3, 2, 16)
    np.testing.assert_array_equal(tokens[0, 0], [8, 0])  # 0.5 = 8/16
    assert isinstance(model.make_predict_model(), tl.Serial)


def _mod_sum(seq):
    return int(np.sum(seq[-2:]) % 7)


def test_mock_lm_eval_shifts_right_and_predict_remembers_what_was_fed():
    tokens = np.array([[3, 5, 6], [1, 1, 0]])
    eval_lm = test_utils.MockTransformerLM(_mod_sum, mode="eval", vocab_size=7)
    expected = [[0, 3, 1], [0, 1, 2]]  # sums of the last two of [0, x0, ...] mod 7
    np.testing.assert_array_equal(np.argmax(eval_lm(tokens), -1), expected)
    predict_lm = test_utils.MockTransformerLM(_mod_sum, mode="predict", vocab_size=7)
    _, state = predict_lm.init(shapes.ShapeDtype((2, 1), np.int32))
    step = jax.jit(predict_lm.pure_fn)
    out, state = step(np.array([[0, 3], [0, 1]]), (), state, None)
    np.testing.assert_array_equal(np.argmax(out, -1), [[3], [1]])
    out, state = step(np.array([[5], [1]]), (), state, None)
    np.testing.assert_array_equal(np.argmax(out, -1), [[1], [2]])
    predict_lm.state = state
    predict_lm.assert_prediction_buffers_equal([[0, 3, 5], [0, 1, 1]])
    with pytest.raises(AssertionError):
        predict_lm.assert_prediction_buffers_equal([[0, 3, 5], [0, 1, 2]])


def test_mock_lm_refuses_tokens_outside_the_vocabulary_and_floats():
    lm = test_utils.MockTransformerLM(_mod_sum, mode="eval", vocab_size=7)
    with pytest.raises(Exception, match=r"tokens must be in \[0, 7\)"):
        np.asarray(lm(np.array([[1, 9]])))
    with pytest.raises(ValueError, match="expected int tokens"):
        lm(np.ones((1, 2), np.float32))
    small = test_utils.MockTransformerLM(_mod_sum, mode="predict", vocab_size=7, max_len=2)
    small.init(shapes.ShapeDtype((1, 1), np.int32))
    with pytest.raises(Exception, match="max_len"):
        np.asarray(small(np.array([[1, 2, 3]])))


def test_serialized_model_accepts_the_mock_as_its_token_model():
    srl = _discrete(4, 4)
    seq_model = functools.partial(test_utils.MockTransformerLM, _mod_sum, vocab_size=4)
    model = su.SerializedModel(seq_model, srl, srl, 0.7)
    assert model.make_predict_model().mode == "predict"
