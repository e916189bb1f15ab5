"""Parity with real Trax 1.4.1 for the recurrent models (tests/fixtures/trax/trax-1.4.1-zoo).

For ``rnnlm_lstm``, ``grulm`` and ``lstm_seq2seq_attn`` (checkpoints and outputs
written by Trax 1.4.1, see tests/fixtures/trax/SOURCE_README.md):

- the checkpoint loads one to one into the model built from ``meta.json``
  (weight for weight, shape and dtype; the state too), by the user path
  ``init_from_file`` and by the reader ``read_trax_checkpoint``;
- eval-mode outputs reproduce ``output<i>.npy`` to 1e-5 relative to their
  scale. Both sides end in the same layer (``Dense`` for the language models,
  ``LogSoftmax`` for ``LSTMSeq2SeqAttn``), so outputs are compared as they are;
- ``autoregressive_sample`` (temperature 0, ``eos_id`` None) in predict mode
  reproduces ``meta.json["greedy"]`` exactly.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from zoo_fixtures import (
    ZOO,
    assert_eval_outputs_match,
    assert_maps_one_to_one,
    build,
    kwargs_of,
    meta_of,
)

from retrax import layers as tl
from retrax import shapes
from retrax.compat.trax_pickle import read_trax_checkpoint
from retrax.supervised import decoding

FOLDERS = ["rnnlm_lstm", "grulm", "lstm_seq2seq_attn"]
RTOL_OF_SCALE = 1e-5


def test_meta_names_the_models():
    assert [meta_of(n)["model"] for n in FOLDERS] == ["RNNLM", "GRULM", "LSTMSeq2SeqAttn"]
    assert kwargs_of({"kwargs": {"rnn_cell": "tl.GRUCell", "shape": [1, 2]}}) == {
        "rnn_cell": tl.GRUCell, "shape": (1, 2)}


@pytest.mark.parametrize("name", FOLDERS)
def test_checkpoint_maps_one_to_one(name):
    assert_maps_one_to_one(name)


@pytest.mark.parametrize("name", FOLDERS)
def test_eval_outputs_match_trax(name):
    model = assert_eval_outputs_match(name, RTOL_OF_SCALE)
    checkpoint = read_trax_checkpoint(ZOO / name / "model.pkl.gz")
    for loaded, stored in zip(jax.tree_util.tree_leaves(model.weights),
                              checkpoint.flat_weights):
        np.testing.assert_array_equal(loaded, stored)


@pytest.mark.parametrize("name", [n for n in FOLDERS if "greedy" in meta_of(n)])
def test_greedy_decoding_matches_trax(name):
    greedy = meta_of(name)["greedy"]
    prefix = np.asarray(greedy["prefix"], np.int32)
    model = build(name, "predict")
    model.init_from_file(str(ZOO / name / "model.pkl.gz"), weights_only=True,
                         input_signature=shapes.ShapeDtype((prefix.shape[0], 1), np.int32))
    got = decoding.autoregressive_sample(model, prefix, batch_size=prefix.shape[0],
                                         temperature=0.0, max_length=greedy["max_length"],
                                         eos_id=greedy["eos_id"])
    np.testing.assert_array_equal(got, np.asarray(greedy["output"]))
