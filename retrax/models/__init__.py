"""Models built from ``retrax.layers``, as Trax's ``trax.models``."""

from retrax.models import transformer
from retrax.models.config import from_config
from retrax.models.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLM,
)

__all__ = [
    "from_config",
    "transformer",
    "Transformer",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerLM",
]
