"""autoregressive_sample(..., eval_mode=True): an eval-mode model, the prefix recomputed."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.supervised import decoding

LM = {"vocab_size": 12, "d_model": 16, "d_ff": 32, "n_layers": 1, "n_heads": 2, "max_len": 32}


def _pair(factory, sig, tmp_path, **kwargs):
    """An eval-mode and a predict-mode model with the same random weights (saved and
    loaded as users do: the two modes' weight trees differ, their flat order does not)."""
    ev = factory(**kwargs, mode="eval")
    ev.init(sig)
    ev.save_to_file(str(tmp_path / "model.pkl.gz"), weights_only=True)
    pr = factory(**kwargs, mode="predict")
    pr.init_from_file(str(tmp_path / "model.pkl.gz"), weights_only=True, input_signature=(
        shapes.ShapeDtype((1, 1), np.int32) if not isinstance(sig, tuple)
        else (sig[0], shapes.ShapeDtype((1, 1), np.int32))))
    return ev, pr


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_a_language_model_samples_the_same_tokens_both_ways(tmp_path):
    ev, pr = _pair(models.TransformerLM, shapes.ShapeDtype((1, 8), np.int32), tmp_path, **LM)
    prompt = np.array([[3, 5, 7, 2], [4, 4, 9, 1]], np.int32)
    want = decoding.autoregressive_sample(pr, prompt, batch_size=2, temperature=0.0,
                                          max_length=6, eos_id=None)
    got = decoding.autoregressive_sample(ev, prompt, batch_size=2, temperature=0.0,
                                         max_length=6, eos_id=None, eval_mode=True)
    np.testing.assert_array_equal(got, want)
    # Sampling with a seed, and scores, agree too.
    want, want_lp = decoding.autoregressive_sample(pr, prompt, batch_size=2, max_length=5,
                                                   eos_id=None, seed=3, return_log_probs=True)
    got, got_lp = decoding.autoregressive_sample(ev, prompt, batch_size=2, max_length=5,
                                                 eos_id=None, seed=3, return_log_probs=True,
                                                 eval_mode=True, eval_min_length=16)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_lp, want_lp, atol=1e-4)


@pytest.mark.slow
def test_ragged_prompts_and_no_prompt(tmp_path):
    ev, pr = _pair(models.TransformerLM, shapes.ShapeDtype((1, 8), np.int32), tmp_path, **LM)
    prompt = np.array([[3, 5, 7], [4, 0, 0]], np.int32)
    kw = dict(batch_size=2, temperature=0.0, max_length=4, eos_id=None, prompt_lengths=[3, 1])
    np.testing.assert_array_equal(decoding.autoregressive_sample(ev, prompt, eval_mode=True, **kw),
                                  decoding.autoregressive_sample(pr, prompt, **kw))
    np.testing.assert_array_equal(
        decoding.autoregressive_sample(ev, None, temperature=0.0, max_length=3, eval_mode=True),
        decoding.autoregressive_sample(pr, None, temperature=0.0, max_length=3))


@pytest.mark.slow
def test_an_encoder_decoder_and_a_recurrent_lm(tmp_path):
    kw = {"input_vocab_size": 10, "d_model": 16, "d_ff": 32, "n_encoder_layers": 1,
          "n_decoder_layers": 1, "n_heads": 2, "max_len": 32}
    sig = (shapes.ShapeDtype((1, 5), np.int32), shapes.ShapeDtype((1, 6), np.int32))
    ev, pr = _pair(models.Transformer, sig, tmp_path, **kw)
    src = np.array([[2, 3, 4, 5, 6]], np.int32)
    np.testing.assert_array_equal(
        decoding.autoregressive_sample(ev, src, temperature=0.0, max_length=5, eos_id=None,
                                       eval_mode=True),
        decoding.autoregressive_sample(pr, src, temperature=0.0, max_length=5, eos_id=None))
    ev, pr = _pair(models.GRULM, shapes.ShapeDtype((1, 8), np.int32), tmp_path, vocab_size=9,
                   d_model=8)
    prompt = np.array([[1, 2, 3]], np.int32)
    np.testing.assert_array_equal(
        decoding.autoregressive_sample(ev, prompt, temperature=0.0, max_length=6, eos_id=None,
                                       eval_mode=True),
        decoding.autoregressive_sample(pr, prompt, temperature=0.0, max_length=6, eos_id=None))


def test_eval_mode_needs_an_eval_model():
    pr = models.TransformerLM(**LM, mode="predict")
    pr.init(shapes.ShapeDtype((1, 1), np.int32))
    with pytest.raises(ValueError, match="eval_mode=True needs a model built with mode='eval'"):
        decoding.autoregressive_sample(pr, np.array([[1, 2]]), eval_mode=True)
    ev = models.TransformerLM(**LM, mode="eval")
    ev.init(shapes.ShapeDtype((1, 4), np.int32))
    with pytest.raises(ValueError, match="decoding needs mode='predict'"):
        decoding.autoregressive_sample(ev, np.array([[1, 2]]))
    with pytest.raises(ValueError, match="max_len is 32"):
        decoding.autoregressive_sample(ev, np.array([[1, 2]]), max_length=40, eval_mode=True)
    assert tl.Dense(2).mode is None  # (layers without modes are fine in either)
