"""Pretrained models shipped with retrax.

``sort-transformer`` stands in for the quick-start notebook's
``gs://ml-intro/models/sort-transformer.pkl.gz`` (Google's file, which most
machines cannot reach). It is **not** Google's file: retrax trained the same
model, ``TransformerLM(d_model=32, d_ff=128, n_layers=2, vocab_size=32)``, on
the same task (``[0, a, b, c, d, 0]`` -> the four sorted, ``1 <= a..d <= 30``)
with ``scripts/train_sort_model.py`` from a fixed seed.

The file records its model config in its metadata (the record
``retrax.models.TransformerLM`` keeps, read by ``retrax.models.from_config``),
so ``retrax sample PATH`` and ``retrax show PATH`` work on the path alone.

>>> import numpy as np
>>> from retrax import pretrained
>>> from retrax.supervised import decoding
>>> model = pretrained.load('sort-transformer')
>>> decoding.autoregressive_sample(model, np.array([[0, 3, 15, 14, 9, 0]]),
...                                temperature=0.0, max_length=4)
array([[ 3,  9, 14, 15]], dtype=int32)
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["MODELS", "path", "load", "available", "NOTEBOOK_URLS"]

_HERE = os.path.dirname(os.path.abspath(__file__))

MODELS: dict[str, dict[str, Any]] = {
    "sort-transformer": {
        "file": "sort-transformer.safetensors",
        "model": "TransformerLM",
        "config": dict(d_model=32, d_ff=128, n_layers=2, vocab_size=32),
        "description": "TransformerLM that sorts four integers in [1, 30]; trained by retrax.",
    },
}

# Checkpoints the Trax notebooks load from Google Cloud Storage, and our stand-ins.
NOTEBOOK_URLS = {"gs://ml-intro/models/sort-transformer.pkl.gz": "sort-transformer"}


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(MODELS)


def path(name: str) -> str:
    """The file holding the weights of the shipped model ``name``."""
    if name not in MODELS:
        raise KeyError(f"Unknown pretrained model {name!r}; available: {available()}.")
    return os.path.join(_HERE, MODELS[name]["file"])


def load(name: str, mode: str = "predict") -> Any:
    """Builds the shipped model ``name`` in ``mode`` and loads its weights."""
    from retrax import models, shapes

    info = MODELS.get(name)
    if info is None:
        raise KeyError(f"Unknown pretrained model {name!r}; available: {available()}.")
    model = getattr(models, info["model"])(**info["config"], mode=mode)
    sig = shapes.ShapeDtype((1, 1), np.int32)
    model.init_from_file(path(name), weights_only=True, input_signature=sig)
    return model
