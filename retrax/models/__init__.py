"""Models built from ``retrax.layers``, as Trax's ``trax.models``."""

from retrax.models import transformer
from retrax.models.transformer import (
    Transformer,
    TransformerDecoder,
    TransformerEncoder,
    TransformerLM,
)

__all__ = [
    "transformer",
    "Transformer",
    "TransformerDecoder",
    "TransformerEncoder",
    "TransformerLM",
]
