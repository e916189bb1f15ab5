"""The shipped sort model: the notebook's example and >= 99% exact sorts."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from retrax import checkpoints, models, pretrained, shapes
from retrax import layers as tl
from retrax.supervised import decoding

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
from train_sort_model import (  # noqa: E402
    exact_sort_accuracy,
    relabel,
    same_arrays,
    write_shipped,
)


def test_registry_and_path():
    assert pretrained.available() == ["sort-transformer"]
    assert os.path.getsize(pretrained.path("sort-transformer")) > 10_000


def test_notebook_example():
    model = pretrained.load("sort-transformer")
    out = decoding.autoregressive_sample(model, np.array([[0, 3, 15, 14, 9, 0]]),
                                         temperature=0.0, max_length=4)
    np.testing.assert_array_equal(out, [[3, 9, 14, 15]])


def test_sorts_at_least_99_percent_of_1000_random_inputs():
    assert exact_sort_accuracy(pretrained.load("sort-transformer"), n=1000, seed=2026) >= 0.99


def test_unknown_name():
    with pytest.raises(KeyError, match="available"):
        pretrained.load("nope")


def test_shipped_file_records_its_model_config():
    meta = checkpoints.read_any(pretrained.path("sort-transformer"))["meta"]
    entry = pretrained.MODELS["sort-transformer"]
    # The record a model keeps of itself (what Loop and save_to_file write).
    expected = models.config_of(getattr(models, entry["model"])(**entry["config"]))
    assert meta["model"] == expected
    assert meta["model"]["kwargs"]["d_model"] == 32 and meta["model"]["kwargs"]["n_layers"] == 2
    model = models.from_config(meta["model"], mode="predict")
    model.init_from_file(pretrained.path("sort-transformer"), weights_only=True)
    out = decoding.autoregressive_sample(model, np.array([[0, 3, 15, 14, 9, 0]]),
                                         temperature=0.0, max_length=4)
    np.testing.assert_array_equal(out, [[3, 9, 14, 15]])


def test_relabel_adds_the_config_and_keeps_the_weights_bit_identical(tmp_path):
    shipped = checkpoints.read_any(pretrained.path("sort-transformer"))
    bare = str(tmp_path / "bare.safetensors")  # The file as it was shipped before.
    checkpoints.save_native(bare, tuple(shipped["flat_weights"]),
                            input_signature=shipped["input_signature"])
    assert checkpoints.read_any(bare)["meta"]["model"] is None
    relabel(bare)
    again = checkpoints.read_any(bare)
    assert again["meta"]["model"] == shipped["meta"]["model"]
    assert same_arrays(again["flat_weights"], shipped["flat_weights"])
    assert not same_arrays(again["flat_weights"][:-1], shipped["flat_weights"])


def test_write_shipped_refuses_a_model_without_config(tmp_path):
    layer = tl.Serial(tl.Dense(2))
    layer.init(shapes.ShapeDtype((1, 3)))
    with pytest.raises(ValueError, match="records no config"):
        write_shipped(layer, str(tmp_path / "x.safetensors"))
    assert not (tmp_path / "x.safetensors").exists()


def test_shipped_weights_are_the_trained_ones():
    # sha256 over (dtype, shape, bytes) of every array of the file as first trained and
    # shipped: re-writing the file (to record its config) left the weights bit-identical.
    import hashlib

    digest = hashlib.sha256()
    for w in checkpoints.read_any(pretrained.path("sort-transformer"))["flat_weights"]:
        w = np.asarray(w)
        digest.update(f"{w.dtype}{w.shape}".encode())
        digest.update(w.tobytes())
    assert digest.hexdigest() == \
        "ed2e0e532040ab10772867e2dcb7f7a3831d180319c0b37f6c095372243aaded"
