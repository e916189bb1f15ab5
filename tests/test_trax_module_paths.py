"""Trax 1.4.1's module paths for the recurrent, convolutional and feed-forward families.

Trax programs import from the modules too (``from trax.layers import rnn``,
``trax.models.resnet.Resnet50``), so each module must hold the public names
its Trax 1.4.1 counterpart defines. The lists are facts read from Trax
1.4.1's source (every public top-level ``def``/``class`` of the module).
"""

from __future__ import annotations

import importlib

import pytest

import retrax
from retrax import layers as tl
from retrax import models

TRAX_1_4_1_NAMES = {
    "retrax.layers.rnn": [
        "LSTMCell", "MakeZeroState", "LSTM", "GRUCell", "GRU", "ConvGRUCell",
        "GeneralGRUCell", "InnerSRUCell", "ScanSRUCell", "SRU",
    ],
    "retrax.layers.convolution": ["Conv", "CausalConv", "Conv1d", "CausalDepthwiseConv"],
    "retrax.layers.pooling": ["MaxPool", "SumPool", "AvgPool"],
    "retrax.models.rnn": ["RNNLM", "GRULM", "LSTMSeq2SeqAttn"],
    "retrax.models.resnet": [
        "ConvBlock", "IdentityBlock", "Resnet50", "WideResnetBlock", "WideResnetGroup",
        "WideResnet",
    ],
    "retrax.models.mlp": ["MLP"],
    "retrax.models.atari_cnn": ["AtariCnn", "AtariCnnBody", "FrameStackMLP"],
    # The Reformer's research modules: their layers (Trax's threefry helpers are private
    # details; EfficientAttentionBase, MixedLSHSelfAttention and LSHFF are not in retrax).
    "retrax.layers.research.position_encodings": [
        "AxialPositionalEncoding", "SinCosPositionalEncoding", "FixedBasePositionalEncoding",
        "InfinitePositionalEncoding", "TimeBinPositionalEncoding",
    ],
    "retrax.layers.research.efficient_attention": [
        "SelfAttention", "LSHSelfAttention", "PureLSHSelfAttention",
        "PureLSHSelfAttentionWrapper", "EncDecAttention",
    ],
}

# What trax/models/__init__.py 1.4.1 re-exports from those modules.
TRAX_MODELS_TOP_LEVEL = [
    "AtariCnn", "AtariCnnBody", "FrameStackMLP", "MLP", "Resnet50", "WideResnet", "RNNLM",
    "GRULM", "LSTMSeq2SeqAttn",
]


@pytest.mark.parametrize("module_name", sorted(TRAX_1_4_1_NAMES))
def test_module_holds_trax_names(module_name):
    module = importlib.import_module(module_name)
    missing = [n for n in TRAX_1_4_1_NAMES[module_name] if not callable(getattr(module, n, None))]
    assert not missing, f"{module_name} lacks Trax 1.4.1's {missing}"


@pytest.mark.parametrize("module_name", [m for m in sorted(TRAX_1_4_1_NAMES) if ".layers." in m])
def test_layer_modules_are_flat_in_tl(module_name):
    # trax/layers/__init__.py star-imports these modules (none has __all__): every name is tl.X.
    module = importlib.import_module(module_name)
    for name in TRAX_1_4_1_NAMES[module_name]:
        assert getattr(tl, name, None) is getattr(module, name), f"tl.{name}"


def test_models_top_level_and_module_attributes():
    for name in TRAX_MODELS_TOP_LEVEL:
        assert callable(getattr(models, name, None)), f"trax.models.{name}"
    # `trax.models.rnn.GRULM` and `trax.layers.rnn.LSTM` reach the modules as attributes.
    for module_name in TRAX_1_4_1_NAMES:
        parent, _, child = module_name.rpartition(".")
        assert getattr(importlib.import_module(parent), child) is importlib.import_module(
            module_name)
    assert retrax.layers is tl and retrax.models is models
