"""Model configs: the record a model keeps (config_of), the explicit registry, from_config."""

from __future__ import annotations

import inspect

import pytest

from retrax import layers as tl
from retrax import models

SMALL = {"vocab_size": 16, "d_model": 8, "d_ff": 16, "n_layers": 1, "n_heads": 2}
TRANSFORMER = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16}
# Small arguments for every registered model; a model added to the registry must be added here.
ARGS = {
    "TransformerLM": {**TRANSFORMER, "vocab_size": 16},
    "TransformerEncoder": {**TRANSFORMER, "vocab_size": 16},
    "TransformerDecoder": TRANSFORMER,
    "Transformer": {**TRANSFORMER, "input_vocab_size": 16},
    "RNNLM": {"vocab_size": 16, "d_model": 8, "n_layers": 2},  # Trax allows only 2.
    "GRULM": {"vocab_size": 16, "d_model": 8, "n_layers": 1},
    "LSTMSeq2SeqAttn": {"input_vocab_size": 16, "target_vocab_size": 12, "d_model": 8,
                        "n_encoder_layers": 1, "n_decoder_layers": 1},
    "MLP": {"layer_widths": [8, 4]},
    "Resnet50": {"d_hidden": 8, "n_output_classes": 3},
    "WideResnet": {"n_blocks": 1, "n_output_classes": 3},
    "AtariCnn": {"hidden_sizes": [4, 4], "output_size": 8},
    "AtariCnnBody": {"hidden_sizes": [4, 4, 4], "output_size": 8},
    "FrameStackMLP": {"hidden_sizes": [8], "output_size": 4},
    "ReformerLM": {"vocab_size": 16, "d_model": 8, "d_ff": 16, "d_attention_key": 4,
                   "d_attention_value": 4, "n_layers": 1, "n_heads": 2, "max_len": 32},
    "Reformer": {"input_vocab_size": 16, "d_model": 8, "d_ff": 16, "n_encoder_layers": 1,
                 "n_decoder_layers": 1, "n_heads": 2, "max_len": 32},
}


def test_every_model_records_its_full_config_and_from_config_rebuilds_it():
    assert sorted(ARGS) == models.names()
    for name in models.names():
        model = models.REGISTRY[name](**ARGS[name], mode="eval")
        config = models.config_of(model)
        assert config["name"] == name and "mode" not in config["kwargs"]
        # Every argument is recorded, defaults too (remat only when True: it changes how
        # the gradient is computed, not the model, and older records lack it).
        params = set(inspect.signature(models.REGISTRY[name]).parameters) - {"mode", "remat"}
        assert set(config["kwargs"]) == params, name
        for key, value in ARGS[name].items():
            recorded = config["kwargs"][key]
            assert (list(recorded) if isinstance(recorded, tuple) else recorded) == value, name
        again = models.from_config(config, mode="predict")
        assert models.config_of(again) == config
        assert str(again) == str(models.REGISTRY[name](**ARGS[name], mode="predict"))


def test_remat_is_recorded_only_when_on():
    assert "remat" not in models.config_of(models.TransformerLM(**SMALL))["kwargs"]
    config = models.config_of(models.TransformerLM(**SMALL, remat=True))
    assert config["kwargs"]["remat"] is True
    assert models.config_of(models.from_config(config)) == config


def test_config_of_is_a_copy_and_none_for_a_hand_built_layer():
    lm = models.TransformerLM(**SMALL)
    models.config_of(lm)["kwargs"]["d_model"] = 1000
    assert models.config_of(lm)["kwargs"]["d_model"] == 8
    assert models.config_of(tl.Serial(tl.Dense(3))) is None


def test_set_config_records_validates_and_forgets():
    layer = tl.Serial(tl.Dense(3))
    assert models.set_config(layer, {"name": "Mine", "kwargs": {"width": 3}}) is layer
    assert models.config_of(layer) == {"name": "Mine", "kwargs": {"width": 3}}
    with pytest.raises(ValueError, match="a model config is"):
        models.set_config(layer, {"kwargs": {}})
    models.set_config(layer, None)
    assert models.config_of(layer) is None


def test_the_registry_is_an_explicit_read_only_mapping():
    assert models.names() == sorted([
        "Transformer", "TransformerDecoder", "TransformerEncoder", "TransformerLM", "RNNLM",
        "GRULM", "LSTMSeq2SeqAttn", "MLP", "Resnet50", "WideResnet", "AtariCnn", "AtariCnnBody",
        "FrameStackMLP", "Reformer", "ReformerLM"])
    assert models.REGISTRY["TransformerLM"] is models.TransformerLM
    with pytest.raises(TypeError):
        models.REGISTRY["Mine"] = models.TransformerLM  # type: ignore[index]


@pytest.mark.parametrize("config, pattern", [
    ({"name": "NoSuch", "kwargs": {}}, r"unknown model 'NoSuch'; available: \['AtariCnn', 'AtariCnnBody'"),
    ({"name": "TransformerLM", "kwargs": {**SMALL, "ff_activation": "NoSuchLayer"}},
     "ff_activation='NoSuchLayer' is not a layer in retrax.layers"),
    ({"kwargs": {}}, "A model config is"),
    ("TransformerLM", "A model config is"),
])
def test_from_config_refuses_what_it_cannot_build(config, pattern):
    with pytest.raises(models.ConfigError, match=pattern):
        models.from_config(config)


def test_from_config_reads_names_lists_and_ignores_a_recorded_mode():
    config = {"name": "TransformerLM", "kwargs": {**SMALL, "ff_activation": "Gelu",
                                                  "dropout_shared_axes": [1], "mode": "train"}}
    lm = models.from_config(config, mode="eval", d_ff=32)
    recorded = models.config_of(lm)["kwargs"]
    assert recorded["ff_activation"] == "Gelu" and recorded["d_ff"] == 32
    assert recorded["dropout_shared_axes"] == [1]
    assert "Gelu" in str(lm)
