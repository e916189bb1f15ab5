"""Models built from ``retrax.layers``, as Trax's ``trax.models``.

``config_of(model)`` is the constructor config a model records;
``from_config(config, mode)`` builds a model from one; ``names()`` and
``REGISTRY`` (read-only) are the models ``from_config`` knows.
"""

from retrax.models import transformer
from retrax.models.config import REGISTRY, ConfigError, from_config, names
from retrax.models.record import config_of, set_config
from retrax.models.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLM,
)

__all__ = [
    "ConfigError",
    "config_of",
    "from_config",
    "names",
    "REGISTRY",
    "set_config",
    "transformer",
    "Transformer",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerLM",
]
