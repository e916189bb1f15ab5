"""The shipped sort model: the notebook's example and >= 99% exact sorts."""

from __future__ import annotations

import os
import sys

import numpy as np

from retrax import pretrained
from retrax.supervised import decoding

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
from train_sort_model import exact_sort_accuracy  # noqa: E402


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
    import pytest

    with pytest.raises(KeyError, match="available"):
        pretrained.load("nope")
