"""Trax's ``trax.layers.research.efficient_attention`` module path.

The layers and functions live in their own modules
(``retrax.layers.efficient_attention``, ``lsh_attention``,
``pure_lsh_attention``, ``enc_dec_attention``, ``chunked_attention``,
``broadcasted_dropout``); the layers are ``tl.X`` too. This module holds
them under the path Trax programs import. Not in retrax: Trax's
``EfficientAttentionBase``, ``MixedLSHSelfAttention``, ``LSHFF``,
``hash_vecs`` and the ``permute_via_*`` helpers.

>>> from retrax import layers as tl
>>> from retrax.layers.research import efficient_attention
>>> efficient_attention.LSHSelfAttention is tl.LSHSelfAttention
True
"""

from retrax.layers.broadcasted_dropout import apply_broadcasted_dropout
from retrax.layers.chunked_attention import (
    attend,
    length_normalized,
    look_adjacent,
    mask_self_attention,
)
from retrax.layers.efficient_attention import SelfAttention
from retrax.layers.enc_dec_attention import EncDecAttention
from retrax.layers.lsh_attention import LSHSelfAttention
from retrax.layers.pure_lsh_attention import PureLSHSelfAttention
from retrax.layers.pure_lsh_wrapper import PureLSHSelfAttentionWrapper

__all__ = ["length_normalized", "look_adjacent", "mask_self_attention", "attend",
           "apply_broadcasted_dropout", "SelfAttention", "LSHSelfAttention",
           "PureLSHSelfAttention", "PureLSHSelfAttentionWrapper", "EncDecAttention"]
