"""Native checkpoints (safetensors + JSON), Trax layouts, conversion, safety."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import retrax as trax
from retrax import checkpoints, models
from retrax import layers as tl

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "trax"
SEED = FIXTURES / "trax-1.4.1" / "transformerlm_seed"
LOOP = FIXTURES / "trax-1.4.1" / "transformerlm_seed_loop_ckpt"
COPY = FIXTURES / "trax-upstream" / "transformerlm_copy"
SEED_CONFIG = dict(d_model=32, d_ff=128, n_layers=2, vocab_size=32)


def sig(*shape, dtype=np.int32):
    return trax.shapes.ShapeDtype(shape, dtype)


def flat(tree):
    return [np.asarray(x) for x in tl.flatten_weights_and_state(tree, ())[0]]


def small_model():
    return tl.Serial(tl.Embedding(10, 4), tl.Dropout(0.2), tl.Dense(3), tl.LayerNorm())


def test_native_round_trip_weights_and_state(tmp_path):
    model = small_model()
    model.init(sig(2, 5))
    path = tmp_path / "m.safetensors"
    model.save_to_file(str(path), input_signature=sig(2, 5))
    fresh = small_model()
    weights, state = fresh.init_from_file(str(path))
    for a, b in zip(flat(weights), flat(model.weights)):
        np.testing.assert_array_equal(a, b)
    assert np.asarray(state[1]) == np.float32(0.2)
    x = np.array([[1, 2, 3, 4, 5], [5, 4, 3, 2, 1]], np.int32)
    np.testing.assert_array_equal(np.asarray(fresh(x)), np.asarray(model(x)))


def test_native_metadata_is_plain_json(tmp_path):
    model = small_model()
    model.init(sig(1, 3))
    models.set_config(model, {"name": "Custom", "kwargs": {"a": 1}})
    path = tmp_path / "m.safetensors"
    model.save_to_file(str(path), weights_only=True, input_signature=sig(1, 3))
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(json.loads(data[8:8 + n])["__metadata__"]["retrax"])
    assert meta["format"] == "retrax" and meta["retrax_version"] == trax.__version__
    assert meta["model"] == {"name": "Custom", "kwargs": {"a": 1}}
    assert meta["state"] is None
    assert [w["path"] for w in meta["weights"]] == ["0", "2/0", "2/1", "3/0", "3/1"]
    assert meta["weights"][0] == {"path": "0", "shape": [10, 4], "dtype": "float32"}
    assert meta["input_signature"] == {"shape": [1, 3], "dtype": "int32"}


def test_bfloat16_round_trip(tmp_path):
    weights = (jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3), ())
    checkpoints.save_native(tmp_path / "b.safetensors", weights)
    back = checkpoints.read_any(tmp_path / "b.safetensors")["flat_weights"][0]
    assert back.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(back, np.float32), np.arange(6).reshape(2, 3))


def test_weights_only_file_refuses_state_load(tmp_path):
    model = small_model()
    model.init(sig(1, 3))
    model.save_to_file(str(tmp_path / "w.safetensors"), weights_only=True,
                       input_signature=sig(1, 3))
    with pytest.raises(ValueError, match="holds weights only; load it with weights_only=True"):
        small_model().init_from_file(str(tmp_path / "w.safetensors"))


def test_wrong_model_configuration_is_named(tmp_path):
    model = small_model()
    model.init(sig(1, 3))
    model.save_to_file(str(tmp_path / "m.safetensors"), input_signature=sig(1, 3))
    other = tl.Serial(tl.Embedding(10, 4), tl.Dropout(0.2), tl.Dense(7), tl.LayerNorm())
    with pytest.raises(checkpoints.CheckpointError) as info:
        other.init_from_file(str(tmp_path / "m.safetensors"))
    # The layer is named by its path, and the weight by its place in that layer.
    assert str(info.value) == (
        f"{tmp_path / 'm.safetensors'} does not fit Serial: Serial[2] > Dense_7, weights[0] "
        f"has shape (4, 3) in the checkpoint but the model expects (4, 7) (weight array 1 of "
        f"5). Build the model with the configuration the checkpoint was trained with.")


def test_atomic_write_leaves_no_temporary_files_and_replaces(tmp_path):
    path = tmp_path / "a.safetensors"
    checkpoints.save_native(path, (np.ones(3, np.float32),))
    checkpoints.save_native(path, (np.zeros(3, np.float32),))
    assert os.listdir(tmp_path) == ["a.safetensors"]
    np.testing.assert_array_equal(checkpoints.read_any(path)["flat_weights"][0], np.zeros(3))


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    checkpoints.save_native(path, (np.ones(3, np.float32),))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save_native(path, (np.zeros(3, np.float32),))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["a.safetensors"]
    np.testing.assert_array_equal(checkpoints.read_any(path)["flat_weights"][0], np.ones(3))


def test_fsspec_memory_filesystem():
    model = small_model()
    model.init(sig(1, 3))
    model.save_to_file("memory://ckpt/m.safetensors", input_signature=sig(1, 3))
    fresh = small_model()
    fresh.init_from_file("memory://ckpt/m.safetensors")
    for a, b in zip(flat(fresh.weights), flat(model.weights)):
        np.testing.assert_array_equal(a, b)


def test_missing_backend_names_the_package():
    with pytest.raises(ImportError, match="pip install s3fs"):
        small_model().init_from_file("s3://bucket/model.safetensors", input_signature=sig(1, 3))


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        small_model().init_from_file(str(tmp_path / "nope.safetensors"), input_signature=sig(1, 3))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ValueError, match="neither a retrax checkpoint"):
        small_model().init_from_file(str(bad), input_signature=sig(1, 3))


@pytest.mark.parametrize("folder,n_weights", [(SEED, 38), (LOOP, 38), (COPY, 38)])
def test_init_from_file_reads_all_trax_layouts(folder, n_weights):
    config = dict(SEED_CONFIG) if folder != COPY else dict(
        vocab_size=13, d_model=64, d_ff=128, n_heads=2, n_layers=2, max_len=256)
    model = trax.models.TransformerLM(**config, mode="predict")
    weights, _ = model.init_from_file(str(folder / "model.pkl.gz"), weights_only=True,
                                      input_signature=sig(1, 1))
    got = flat(weights)
    assert len(got) == n_weights
    raw = checkpoints.read_any(str(folder / "model.pkl.gz"))["flat_weights"]
    np.testing.assert_array_equal(got[0], raw[0])
    np.testing.assert_array_equal(got[1], np.reshape(raw[1], got[1].shape))  # (1,L,d) -> (L,d)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_trax_to_native_and_back(tmp_path):
    native = tmp_path / "seed.safetensors"
    checkpoints.trax_to_native(str(SEED / "model.pkl.gz"), str(native))
    back = checkpoints.native_to_trax(str(native), str(tmp_path / "again.pkl.gz"))
    assert back.endswith("again.pkl.gz")
    original = checkpoints.read_any(str(SEED / "model.pkl.gz"))
    for path in (native, back):
        got = checkpoints.read_any(str(path))
        assert len(got["flat_weights"]) == len(original["flat_weights"])
        for a, b in zip(got["flat_weights"], original["flat_weights"]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    model = trax.models.TransformerLM(**SEED_CONFIG, mode="eval")
    model.init_from_file(back, weights_only=True, input_signature=sig(1, 12))
    x = np.load(SEED / "input0.npy")
    expected = np.load(SEED / "output0.npy")
    got = np.asarray(model(x))
    ref = expected - np.log(np.exp(expected - expected.max(-1, keepdims=True)).sum(-1,
                                                                           keepdims=True)) \
        - expected.max(-1, keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_notebook_gs_url_falls_back_to_shipped_model():
    model = trax.models.TransformerLM(**SEED_CONFIG, mode="predict")
    with pytest.warns(UserWarning, match="not reachable.*sort-transformer.*not Google's file"):
        model.init_from_file("gs://ml-intro/models/sort-transformer.pkl.gz", weights_only=True,
                             input_signature=sig(1, 1))
    from retrax.supervised import decoding

    out = decoding.autoregressive_sample(model, np.array([[0, 3, 15, 14, 9, 0]]),
                                         temperature=0.0, max_length=4)
    np.testing.assert_array_equal(out, [[3, 9, 14, 15]])


def test_checkpoint_records_model_config_and_rebuilds(tmp_path):
    model = trax.models.TransformerLM(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2,
                                      max_len=32)
    model.init(sig(1, 4))
    path = str(tmp_path / "lm.safetensors")
    model.save_to_file(path, weights_only=True, input_signature=sig(1, 4))
    meta = checkpoints.read_any(path)["meta"]
    assert meta["model"]["name"] == "TransformerLM"
    assert meta["model"]["kwargs"]["max_len"] == 32
    rebuilt = trax.models.from_config(meta["model"], mode="eval")
    rebuilt.init_from_file(path, weights_only=True)
    x = np.array([[1, 2, 3, 4]], np.int32)
    eval_model = trax.models.from_config(meta["model"], mode="eval")
    eval_model.init_from_file(path, weights_only=True)
    np.testing.assert_allclose(np.asarray(rebuilt(x)), np.asarray(eval_model(x)), atol=1e-6)


def test_a_model_saved_under_a_trax_file_name_loads_back(tmp_path):
    # Trax programs name their files model.pkl.gz; save_to_file writes the native format
    # whatever the name, and loading goes by the file's content.
    import jax

    path = str(tmp_path / "model.pkl.gz")
    model = tl.Serial(tl.Dense(3), tl.LayerNorm())
    model.init(trax.shapes.ShapeDtype((1, 2)))
    model.save_to_file(path)
    other = tl.Serial(tl.Dense(3), tl.LayerNorm())
    other.init(trax.shapes.ShapeDtype((1, 2)), rng=jax.random.PRNGKey(7))
    other.init_from_file(path)
    for a, b in zip(jax.tree_util.tree_leaves(other.weights),
                    jax.tree_util.tree_leaves(model.weights)):
        np.testing.assert_array_equal(a, b)
