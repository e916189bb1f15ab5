"""Trax's ``trax.layers.research.position_encodings`` module path.

The layers live in their own modules (``retrax.layers.axial_positional``,
``retrax.layers.fixed_base_positional``) and are ``tl.X`` too; this module
holds them under the path Trax programs import.

>>> from retrax import layers as tl
>>> from retrax.layers.research import position_encodings
>>> position_encodings.FixedBasePositionalEncoding is tl.FixedBasePositionalEncoding
True
"""

from retrax.layers.axial_positional import AxialPositionalEncoding
from retrax.layers.fixed_base_positional import FixedBasePositionalEncoding

__all__ = ["AxialPositionalEncoding", "FixedBasePositionalEncoding"]
