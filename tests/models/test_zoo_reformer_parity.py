"""Parity with real Trax 1.4.1 for the Reformer models (tests/fixtures/trax/trax-1.4.1-zoo).

``reformerlm_self_attention`` (ReformerLM with SelfAttention) and ``reformer_encdec``
(Reformer): the checkpoint loads one to one into the model built from ``meta.json``
(weights and state, the encoder-decoder's shared embedding stored once), and eval-mode
outputs reproduce ``output<i>.npy`` to 1e-5 relative to their scale (today ~4e-7).
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

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "trax" / "trax-1.4.1-zoo"
FOLDERS = ["reformerlm_self_attention", "reformer_encdec"]
RTOL_OF_SCALE = 1e-5


def meta_of(name):
    return json.loads((ZOO / name / "meta.json").read_text())


def build(name, mode):
    meta = meta_of(name)
    kwargs = {k: getattr(tl, v[3:]) if isinstance(v, str) and v.startswith("tl.") else v
              for k, v in meta["kwargs"].items()}
    return getattr(models, meta["model"])(**kwargs, mode=mode)


def numbered(name, stem):
    out, i = [], 0
    while (ZOO / name / f"{stem}{i}.npy").exists():
        out.append(np.load(ZOO / name / f"{stem}{i}.npy", allow_pickle=False))
        i += 1
    return out


def signature_of(inputs):
    sigs = tuple(shapes.signature(x) for x in inputs)
    return sigs[0] if len(sigs) == 1 else sigs


@pytest.mark.parametrize("name", FOLDERS)
def test_checkpoint_maps_one_to_one(name):
    checkpoint = read_trax_checkpoint(ZOO / name / "model.pkl.gz")
    model = build(name, "eval")
    w_sig, s_sig = model.weights_and_state_signature(signature_of(numbered(name, "input")))
    flat_w, flat_s = tl.flatten_weights_and_state(w_sig, s_sig)
    assert [(tuple(w.shape), np.dtype(w.dtype)) for w in checkpoint.flat_weights] == \
        [(tuple(w.shape), np.dtype(w.dtype)) for w in flat_w]
    assert [tuple(np.shape(s)) for s in checkpoint.flat_state] == [tuple(s.shape) for s in flat_s]


@pytest.mark.parametrize("name", FOLDERS)
def test_eval_outputs_match_trax(name):
    inputs, outputs = numbered(name, "input"), numbered(name, "output")
    model = build(name, "eval")
    model.init_from_file(str(ZOO / name / "model.pkl.gz"), weights_only=False,
                         input_signature=signature_of(inputs))
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
