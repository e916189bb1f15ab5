"""Trax's ``trax.layers.research.position_encodings`` module path.

The layers live in their own modules (``retrax.layers.axial_positional``,
``fixed_base_positional``, ``sincos_positional``, ``time_bin_positional``,
``infinite_positional``) and are ``tl.X`` too; this module holds them under
the path Trax programs import. Not here: Trax's ``threefry_2x32_prf`` and
``threefry_2x32_prange`` helpers.

>>> from retrax import layers as tl
>>> from retrax.layers.research import position_encodings
>>> position_encodings.FixedBasePositionalEncoding is tl.FixedBasePositionalEncoding
True
"""

from retrax.layers.axial_positional import AxialPositionalEncoding
from retrax.layers.fixed_base_positional import FixedBasePositionalEncoding
from retrax.layers.infinite_positional import InfinitePositionalEncoding
from retrax.layers.sincos_positional import SinCosPositionalEncoding
from retrax.layers.time_bin_positional import TimeBinPositionalEncoding

__all__ = ["AxialPositionalEncoding", "FixedBasePositionalEncoding", "InfinitePositionalEncoding",
           "SinCosPositionalEncoding", "TimeBinPositionalEncoding"]
