"""Models built from ``retrax.layers``, as Trax's ``trax.models``.

``config_of(model)`` is the constructor config a model records;
``from_config(config, mode)`` builds a model from one; ``names()`` and
``REGISTRY`` (read-only) are the models ``from_config`` knows.
"""

from retrax.models import atari_cnn, mlp, reformer, resnet, rnn, transformer
from retrax.models.atari_cnn import *  # noqa: F401,F403
from retrax.models.config import REGISTRY, ConfigError, from_config, names
from retrax.models.mlp import *  # noqa: F401,F403
from retrax.models.record import config_of, set_config
from retrax.models.reformer import *  # noqa: F401,F403
from retrax.models.resnet import *  # noqa: F401,F403
from retrax.models.rnn import *  # noqa: F401,F403
from retrax.models.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLM,
)

__all__ = [
    *atari_cnn.__all__,
    *mlp.__all__,
    *reformer.__all__,
    *resnet.__all__,
    *rnn.__all__,
    "atari_cnn",
    "mlp",
    "reformer",
    "resnet",
    "rnn",
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
