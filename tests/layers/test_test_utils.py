"""retrax.layers.test_utils: Trax's eval/predict helpers for users' own tests."""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models
from retrax.layers import test_utils

LM = functools.partial(models.TransformerLM, vocab_size=10, d_model=16, d_ff=32, n_layers=1,
                       n_heads=2, max_len=16)


def _attention(mode, d_ff=16):
    return tl.Serial(tl.Embedding(10, 8), tl.CausalAttention(8, n_heads=2, mode=mode),
                     tl.Dense(d_ff))


@pytest.mark.slow
def test_causal_layers_and_language_models_pass():
    tokens = np.random.default_rng(0).integers(1, 10, size=(2, 6)).astype(np.int32)
    # Layers without a ShiftRight: predict fed piece by piece equals eval.
    test_utils.test_eval_equals_predict(tokens, _attention)
    test_utils.test_eval_equals_predict(
        tokens, lambda mode: tl.Serial(tl.Embedding(10, 8), tl.GRU(8, mode=mode)))
    # Language models (they shift their input right): fed their own tokens.
    test_utils.test_eval_equals_predict_discrete(LM, vocab_size=10, length=4)
    test_utils.test_eval_is_deterministic(tokens, LM)


@pytest.mark.slow
def test_configurations_each_pass():
    tokens = np.random.default_rng(1).integers(1, 10, size=(2, 5)).astype(np.int32)
    test_utils.test_eval_equals_predict_configs(tokens, _attention, [{"d_ff": 4}, {"d_ff": 8}])


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_a_model_whose_predict_mode_is_wrong_fails():
    def cumulative(mode):
        del mode  # the same in every mode: a running sum over positions cannot be stepped
        return tl.Serial(tl.Embedding(10, 4), tl.Fn("Cumsum", lambda x: jnp.cumsum(x, axis=1)))

    tokens = np.arange(10, dtype=np.int32).reshape(2, 5) % 10
    with pytest.raises(AssertionError, match="Error on positions 3:4 of 5"):
        test_utils.test_eval_equals_predict(tokens, cumulative)
    with pytest.raises(ValueError, match="needs at least init_tokens \\+ 2 = 5"):
        test_utils.test_eval_equals_predict(tokens[:, :4], LM)


def test_ensure_flag_needs_absl_or_says_so(monkeypatch):
    import sys

    from retrax import test_utils as top

    monkeypatch.setattr(sys, "argv", ["prog"])

    try:
        import absl  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs absl-py"):
            top.ensure_flag("anything")
    else:
        from absl import flags

        if "retrax_test_flag" not in flags.FLAGS:
            flags.DEFINE_boolean("retrax_test_flag", True, "a flag for this test")
        top.ensure_flag("retrax_test_flag")
