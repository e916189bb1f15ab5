"""Shared by the parity tests of Trax's model families (tests/fixtures/trax/trax-1.4.1-zoo).

Each folder holds ``meta.json`` (the model and its kwargs: a value "tl.Name"
names a layer class, a list is a tuple), ``model.pkl.gz`` written by Trax
1.4.1 and ``input<i>.npy`` / ``output<i>.npy`` (see SOURCE_README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from retrax import layers as tl
from retrax import models, shapes
from retrax.compat.trax_pickle import read_trax_checkpoint

ZOO = Path(__file__).resolve().parents[1] / "fixtures" / "trax" / "trax-1.4.1-zoo"


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


def assert_maps_one_to_one(name: str) -> None:
    """The checkpoint's flat weights and state have the model's shapes (and dtypes), in order."""
    checkpoint = read_trax_checkpoint(ZOO / name / "model.pkl.gz")
    model = build(name, "eval")
    w_sig, s_sig = model.weights_and_state_signature(signature_of(numbered(name, "input")))
    flat_w, flat_s = tl.flatten_weights_and_state(w_sig, s_sig)
    assert [(tuple(w.shape), np.dtype(w.dtype)) for w in checkpoint.flat_weights] == \
        [(tuple(w.shape), np.dtype(w.dtype)) for w in flat_w]
    assert [tuple(np.shape(s)) for s in checkpoint.flat_state] == \
        [tuple(s.shape) for s in flat_s]


def assert_eval_outputs_match(name: str, rtol_of_scale: float) -> tl.Layer:
    """Loads the checkpoint by the user path and compares the jitted eval outputs with
    Trax's, within ``rtol_of_scale`` of each output's largest value (integer outputs,
    passed-through targets, exactly). Returns the loaded model."""
    inputs, outputs = numbered(name, "input"), numbered(name, "output")
    assert inputs and outputs
    model = build(name, "eval")
    model.init_from_file(str(ZOO / name / "model.pkl.gz"), weights_only=False,
                         input_signature=signature_of(inputs))
    got = jax.jit(model.pure_fn)(tuple(inputs) if len(inputs) > 1 else inputs[0],
                                 model.weights, model.state, None)[0]
    got = list(got) if isinstance(got, tuple) else [got]
    assert len(got) == len(outputs)
    for y, expected in zip(got, outputs):
        assert y.shape == expected.shape and np.dtype(y.dtype) == expected.dtype
        if np.issubdtype(expected.dtype, np.integer):
            np.testing.assert_array_equal(y, expected)
            continue
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(np.asarray(y, np.float64), expected, rtol=0,
                                   atol=rtol_of_scale * scale)
    return model
