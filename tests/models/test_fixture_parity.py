"""Parity with real Trax: checkpoints and outputs in tests/fixtures/trax.

Every folder of the Transformer families (``trax-1.4.1/`` and ``trax-upstream/``)
holding a ``meta.json`` is tested, so a new folder with the same files is
picked up without code changes (see tests/fixtures/trax/README.md). The
``trax-1.4.1-zoo/`` folders belong to the RNN, conv, MLP and Reformer
families and are tested with them.

- the weights of ``model.pkl.gz`` load into the model built from ``meta.json``;
- eval-mode outputs match ``output<i>.npy`` for the inputs ``input<i>.npy``
  (``log_softmax`` of both sides: retrax's LMs end in ``LogSoftmax``, Trax
  1.4.1's output logits);
- greedy decoding in predict mode reproduces ``greedy_output.npy``.
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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trax"
FAMILIES = ("trax-1.4.1", "trax-upstream")
FOLDERS = sorted(p.parent for f in FAMILIES for p in (FIXTURES / f).glob("*/meta.json"))
IDS = [f"{p.parent.name}/{p.name}" for p in FOLDERS]
MISSING = (
    f"No fixture folders (trax-1.4.1/*/meta.json, trax-upstream/*/meta.json) under {FIXTURES}. The parity tests need the "
    f"reference checkpoints written by real Trax, copied into tests/fixtures/trax."
)
# Parametrizing over nothing would skip silently; a missing fixtures dir fails instead.
PARAMS = [pytest.param(p, id=i) for p, i in zip(FOLDERS, IDS)] or [
    pytest.param(None, id="fixtures-missing")
]

# Absolute tolerance on log-probabilities. Float32 logits of magnitude M are only
# resolved to about M * 1.2e-7, so the tolerance grows with the largest |logit| of the
# row: for the usual fixtures (|logits| < 5) this is 1e-5 to within 5e-6; the trained-
# into-garbage Loop checkpoint has logits near 1.3e4, whose float32 spacing is ~1e-3.
ATOL = 1e-5
RTOL_OF_ROW_SCALE = 1e-6


def _meta(folder: Path | None) -> dict:
    if folder is None:
        pytest.fail(MISSING)
    return json.loads((folder / "meta.json").read_text())


def _numbered(folder: Path, stem: str) -> list[np.ndarray]:
    out, i = [], 0
    while (folder / f"{stem}{i}.npy").exists():
        out.append(np.load(folder / f"{stem}{i}.npy", allow_pickle=False))
        i += 1
    return out


def _build(meta: dict, mode: str) -> tl.Layer:
    return getattr(models, meta["model"])(**meta["kwargs"], mode=mode)


def _load_weights(model: tl.Layer, folder: Path, input_signature) -> tuple:
    """Trax weights for ``model`` (weights-only load; state comes from ``model.init``)."""
    flat = read_trax_checkpoint(folder / "model.pkl.gz").flat_weights
    w_sig, s_sig = model.weights_and_state_signature(input_signature)
    expected = tl.flatten_weights_and_state(w_sig, s_sig)[0]
    assert len(flat) == len(expected), (
        f"checkpoint has {len(flat)} weight arrays, the model {len(expected)}"
    )
    fitted = []
    for i, (w, e) in enumerate(zip(flat, expected)):
        # Old checkpoints store the positional encoding as (1, max_len, d).
        if (
            tuple(w.shape) != tuple(e.shape)
            and w.size == np.prod(e.shape)
            and tuple(s for s in w.shape if s != 1) == tuple(s for s in e.shape if s != 1)
        ):
            w = w.reshape(e.shape)
        assert tuple(w.shape) == tuple(e.shape), (
            f"weight {i}: checkpoint {tuple(w.shape)} vs model {tuple(e.shape)}"
        )
        assert np.dtype(w.dtype) == np.dtype(e.dtype), f"weight {i}: dtype {w.dtype} vs {e.dtype}"
        fitted.append(w)
    weights, _ = tl.unflatten_weights_and_state(fitted, [], (w_sig, s_sig), weights_only=True)
    _, state = model.init(input_signature)
    return weights, state


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def greedy_decode(
    model: tl.Layer,
    weights,
    prefix: np.ndarray,
    max_length: int,
    start_id: int = 0,
    eos_id: int = 1,
) -> np.ndarray:
    """Trax's ``autoregressive_sample(..., temperature=0.0)`` as a plain Python loop.

    ``model`` is in predict mode. An LM first gets ``concat([start_id], prefix)``
    and then each sampled token; an encoder-decoder gets ``(prefix, tokens)``
    with ``start_id`` first. Stops after ``max_length`` tokens or once every row
    has produced ``eos_id``.
    """
    prefix = np.asarray(prefix, np.int32)
    batch = prefix.shape[0]
    start = np.full((batch, 1), start_id, np.int32)
    lm = model.n_in == 1
    sig = shapes.ShapeDtype((batch, 1), np.int32)
    _, state = model.init(sig if lm else (shapes.signature(prefix), sig))
    step = jax.jit(lambda x, s: model.pure_fn(x, weights, s, None))
    current = np.concatenate([start, prefix], 1) if lm else start
    samples = []
    for _ in range(max_length):
        out, state = step(current if lm else (prefix, current), state)
        log_probs = out if lm else out[0]
        token = np.asarray(np.argmax(log_probs[:, -1, :], axis=-1), np.int32)
        samples.append(token)
        if (np.stack(samples, 1) == eos_id).any(1).all():
            break
        current = token[:, None]
    return np.stack(samples, 1)


def test_fixtures_are_present():
    assert FOLDERS, MISSING


def test_every_folder_has_something_to_compare():
    for folder in FOLDERS:
        meta = _meta(folder)
        assert (folder / "output0.npy").exists() or "greedy" in meta, folder


@pytest.mark.parametrize("folder", PARAMS)
def test_weights_load_into_the_model(folder):
    meta = _meta(folder)
    model = _build(meta, "eval")
    sig = shapes.ShapeDtype((1, 4), np.int32)
    sig = sig if model.n_in == 1 else (sig,) * model.n_in
    flat = read_trax_checkpoint(folder / "model.pkl.gz").flat_weights
    expected = tl.flatten_weights_and_state(*model.weights_and_state_signature(sig))[0]
    assert [w.size for w in flat] == [int(np.prod(e.shape)) for e in expected]


@pytest.mark.parametrize("folder", PARAMS)
def test_eval_outputs_match_trax(folder):
    meta = _meta(folder)
    inputs, outputs = _numbered(folder, "input"), _numbered(folder, "output")
    if not inputs:
        assert "greedy" in meta  # checked by greedy decoding instead
        return
    model = _build(meta, "eval")
    x = inputs[0] if model.n_in == 1 else tuple(inputs[: model.n_in])
    weights, state = _load_weights(model, folder, shapes.signature(x))
    y = jax.jit(lambda x: model.pure_fn(x, weights, state, None)[0])(x)
    ys = list(y) if model.n_out > 1 else [y]
    assert len(ys) == len(outputs)
    for ours, theirs in zip(ys, outputs):
        ours = np.asarray(ours)
        assert ours.shape == theirs.shape
        if not np.issubdtype(theirs.dtype, np.floating):
            np.testing.assert_array_equal(ours, theirs)  # e.g. the passed-through targets
            continue
        a, b = _log_softmax(ours), _log_softmax(theirs)
        tol = ATOL + RTOL_OF_ROW_SCALE * np.abs(theirs).max(-1, keepdims=True)
        diff = np.abs(a - b)
        assert (diff <= tol).all(), (
            f"{folder.name}: max |log_softmax diff| {diff.max():.3g} exceeds tolerance"
        )
        np.testing.assert_array_equal(ours.argmax(-1), theirs.argmax(-1))


@pytest.mark.parametrize("folder", PARAMS)
def test_greedy_decoding_matches_trax(folder):
    meta = _meta(folder)
    if "greedy" not in meta:
        assert (folder / "output0.npy").exists()  # checked by eval outputs instead
        return
    greedy = meta["greedy"]
    prefix_file, output_file = folder / "greedy_prefix.npy", folder / "greedy_output.npy"
    prefix = np.load(prefix_file) if prefix_file.exists() else np.array(greedy["prefix"])
    expected = np.load(output_file) if output_file.exists() else np.array(greedy["output"])
    np.testing.assert_array_equal(prefix, greedy["prefix"])
    np.testing.assert_array_equal(expected, greedy["output"])
    model = _build(meta, "predict")
    sig = shapes.ShapeDtype((prefix.shape[0], 1), np.int32)
    weights, _ = _load_weights(
        model, folder, sig if model.n_in == 1 else (shapes.signature(prefix.astype(np.int32)), sig)
    )
    got = greedy_decode(model, weights, prefix, greedy["max_length"])
    np.testing.assert_array_equal(got, expected)


def test_upstream_transformerlm_copy_golden():
    folder = FIXTURES / "trax-upstream" / "transformerlm_copy"
    assert (folder / "model.pkl.gz").exists(), MISSING
    model = models.TransformerLM(
        vocab_size=13,
        d_model=64,
        d_ff=128,
        n_heads=2,
        n_layers=2,
        max_len=256,
        dropout=0.05,
        mode="predict",
    )
    weights, _ = _load_weights(model, folder, shapes.ShapeDtype((1, 1), np.int32))
    got = greedy_decode(model, weights, np.array([[0, 3, 7, 5, 3, 2, 4, 0]]), max_length=6)
    np.testing.assert_array_equal(got, [[3, 7, 5, 3, 2, 4]])
