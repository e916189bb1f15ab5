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

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.compat.trax_pickle import read_trax_checkpoint
from retrax.supervised import decoding

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "trax" / "trax-1.4.1-zoo"
FOLDERS = ["rnnlm_lstm", "grulm", "lstm_seq2seq_attn"]
RTOL_OF_SCALE = 1e-5


def meta_of(name: str) -> dict:
    path = ZOO / name / "meta.json"
    assert path.exists(), f"missing Trax fixture {path} (copied from the shared fixture set)"
    return json.loads(path.read_text())


def kwargs_of(meta: dict) -> dict:
    """``meta.json``'s kwargs: a value "tl.Name" names a layer class, a list is a tuple."""
    out = {}
    for key, value in meta["kwargs"].items():
        if isinstance(value, str) and value.startswith("tl."):
            value = getattr(tl, value[3:])
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def build(name: str, mode: str) -> tl.Layer:
    meta = meta_of(name)
    return getattr(models, meta["model"])(**kwargs_of(meta), mode=mode)


def numbered(name: str, stem: str) -> list[np.ndarray]:
    out, i = [], 0
    while (ZOO / name / f"{stem}{i}.npy").exists():
        out.append(np.load(ZOO / name / f"{stem}{i}.npy", allow_pickle=False))
        i += 1
    return out


def signature_of(inputs: list[np.ndarray]):
    sigs = tuple(shapes.signature(x) for x in inputs)
    return sigs[0] if len(sigs) == 1 else sigs


def test_meta_names_the_models():
    assert [meta_of(n)["model"] for n in FOLDERS] == ["RNNLM", "GRULM", "LSTMSeq2SeqAttn"]
    assert kwargs_of({"kwargs": {"rnn_cell": "tl.GRUCell", "shape": [1, 2]}}) == {
        "rnn_cell": tl.GRUCell, "shape": (1, 2)}


@pytest.mark.parametrize("name", FOLDERS)
def test_checkpoint_maps_one_to_one(name):
    checkpoint = read_trax_checkpoint(ZOO / name / "model.pkl.gz")
    model = build(name, "eval")
    w_sig, s_sig = model.weights_and_state_signature(signature_of(numbered(name, "input")))
    flat_w, flat_s = tl.flatten_weights_and_state(w_sig, s_sig)
    assert [(tuple(w.shape), np.dtype(w.dtype)) for w in checkpoint.flat_weights] == \
        [(tuple(w.shape), np.dtype(w.dtype)) for w in flat_w]
    assert [tuple(np.shape(s)) for s in checkpoint.flat_state] == \
        [tuple(s.shape) for s in flat_s]


@pytest.mark.parametrize("name", FOLDERS)
def test_eval_outputs_match_trax(name):
    inputs, outputs = numbered(name, "input"), numbered(name, "output")
    assert inputs and outputs
    model = build(name, "eval")
    model.init_from_file(str(ZOO / name / "model.pkl.gz"), weights_only=False,
                         input_signature=signature_of(inputs))
    checkpoint = read_trax_checkpoint(ZOO / name / "model.pkl.gz")
    for loaded, stored in zip(jax.tree_util.tree_leaves(model.weights),
                              checkpoint.flat_weights):
        np.testing.assert_array_equal(loaded, stored)
    got = jax.jit(model.pure_fn)(tuple(inputs) if len(inputs) > 1 else inputs[0],
                                 model.weights, model.state, None)[0]
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(outputs)
    for y, expected in zip(got, outputs):
        assert y.shape == expected.shape and np.dtype(y.dtype) == expected.dtype
        if np.issubdtype(expected.dtype, np.integer):  # the targets, passed through
            np.testing.assert_array_equal(y, expected)
            continue
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=0,
                                   atol=RTOL_OF_SCALE * scale)


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
