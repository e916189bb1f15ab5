"""Model configurations as data: the registry of model functions, rebuilt from JSON.

A model's config is ``{'name': <model function>, 'kwargs': {...}}``, the record
every model function leaves on the layer it returns (see
:mod:`retrax.models.record` and :func:`retrax.models.config_of`).
:func:`from_config` is the one way retrax builds a model from such a record:
the ``retrax`` command, the examples and checkpoint readers all go through it.

The models it knows are the explicit mapping ``REGISTRY`` below (read-only);
:func:`names` lists them.

>>> from retrax import models
>>> models.names()
['AtariCnn', 'AtariCnnBody', 'FrameStackMLP', 'GRULM', 'LSTMSeq2SeqAttn', 'MLP', 'RNNLM',
 'Reformer', 'ReformerLM', 'Resnet50', 'Transformer', 'TransformerDecoder',
 'TransformerEncoder', 'TransformerLM', 'WideResnet']
>>> lm = models.from_config({'name': 'TransformerLM', 'kwargs': {'vocab_size': 32,
...     'd_model': 16, 'd_ff': 32, 'n_layers': 1, 'n_heads': 2, 'ff_activation': 'Gelu'}})
>>> models.config_of(lm)['kwargs']['ff_activation'], models.config_of(lm)['kwargs']['max_len']
('Gelu', 2048)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping
from typing import Any

from retrax import layers as tl
from retrax.models import atari_cnn, mlp, reformer, resnet, rnn, transformer

__all__ = ["ConfigError", "REGISTRY", "names", "from_config"]

# Every model from_config can build, by the name its config records.
REGISTRY: Mapping[str, Callable[..., Any]] = types.MappingProxyType({
    "AtariCnn": atari_cnn.AtariCnn,
    "AtariCnnBody": atari_cnn.AtariCnnBody,
    "FrameStackMLP": atari_cnn.FrameStackMLP,
    "MLP": mlp.MLP,
    "Resnet50": resnet.Resnet50,
    "WideResnet": resnet.WideResnet,
    "Transformer": transformer.Transformer,
    "TransformerDecoder": transformer.TransformerDecoder,
    "TransformerEncoder": transformer.TransformerEncoder,
    "TransformerLM": transformer.TransformerLM,
    "RNNLM": rnn.RNNLM,
    "GRULM": rnn.GRULM,
    "LSTMSeq2SeqAttn": rnn.LSTMSeq2SeqAttn,
    "Reformer": reformer.Reformer,
    "ReformerLM": reformer.ReformerLM,
})


# Arguments whose string values name layer constructors in retrax.layers.
_LAYER_ARGUMENTS = ("activation", "activation_fn", "non_linearity", "norm")


class ConfigError(ValueError):
    """A model config :func:`from_config` cannot build: malformed, or naming an unknown
    model or layer. (Arguments the model function itself refuses raise its own error.)"""


def names() -> list[str]:
    """The names of the models :func:`from_config` can build, sorted."""
    return sorted(REGISTRY)


def _layer_named(key: str, name: str) -> Any:
    """The layer constructor ``retrax.layers.<name>`` for the argument ``key``."""
    layer = getattr(tl, name, None)
    if not callable(layer):
        raise ConfigError(f"{key}={name!r} is not a layer in retrax.layers.")
    return layer


def from_config(config: dict[str, Any], mode: str = "train", **overrides: Any) -> Any:
    """Builds the model described by ``{'name': ..., 'kwargs': {...}}`` in ``mode``.

    ``overrides`` replace recorded arguments. String values of arguments named
    ``*activation``, ``*activation_fn``, ``*non_linearity`` or ``*norm`` are
    layer names in :mod:`retrax.layers`; lists given for
    ``dropout_shared_axes`` become tuples; a ``mode`` among the kwargs is
    ignored (the ``mode`` argument decides). The model records the config it
    was built from, with every default filled in.

    Raises:
      ConfigError: the config is malformed or names an unknown model or layer.
      TypeError, ValueError: the model function refuses the arguments.
    """
    if not (isinstance(config, dict) and isinstance(config.get("name"), str)
            and isinstance(config.get("kwargs", {}), dict)):
        raise ConfigError(f"A model config is {{'name': <model>, 'kwargs': {{...}}}}; got "
                          f"{config!r}.")
    name = config["name"]
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {names()}.")
    kwargs = {**config.get("kwargs", {}), **overrides}
    kwargs.pop("mode", None)
    for key, value in list(kwargs.items()):
        if key.endswith(_LAYER_ARGUMENTS) and isinstance(value, str):
            kwargs[key] = _layer_named(key, value)
    if isinstance(kwargs.get("dropout_shared_axes"), list):
        kwargs["dropout_shared_axes"] = tuple(kwargs["dropout_shared_axes"])
    return REGISTRY[name](**kwargs, mode=mode)
