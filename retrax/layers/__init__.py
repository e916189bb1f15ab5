"""Layers and combinators, imported by users as ``tl`` (``from retrax import layers as tl``)."""

from retrax.layers import initializers  # noqa: F401
from retrax.layers.acceleration import *  # noqa: F401,F403
from retrax.layers.activation_fns import *  # noqa: F401,F403
from retrax.layers.assert_shape import AssertFunction, AssertShape, assert_shape  # noqa: F401
from retrax.layers.attention import *  # noqa: F401,F403
from retrax.layers.axial_positional import *  # noqa: F401,F403
from retrax.layers.base import (  # noqa: F401
    EMPTY_STATE,
    EMPTY_WEIGHTS,
    GET_STATE_FROM_CACHE,
    GET_WEIGHTS_FROM_CACHE,
    Fn,
    Layer,
    LayerError,
    PureLayer,
    flatten_weights_and_state,
    to_list,
    unflatten_weights_and_state,
    with_mode,
)
from retrax.layers.broadcasted_dropout import apply_broadcasted_dropout  # noqa: F401
from retrax.layers.combinators import *  # noqa: F401,F403
from retrax.layers.convolution import *  # noqa: F401,F403
from retrax.layers.core import *  # noqa: F401,F403
from retrax.layers.efficient_attention import *  # noqa: F401,F403
from retrax.layers.enc_dec_attention import *  # noqa: F401,F403
from retrax.layers.fixed_base_positional import *  # noqa: F401,F403
from retrax.layers.gaussian import *  # noqa: F401,F403
from retrax.layers.infinite_positional import *  # noqa: F401,F403
from retrax.layers.initializers import *  # noqa: F401,F403
from retrax.layers.inspection import *  # noqa: F401,F403
from retrax.layers.locally_connected import *  # noqa: F401,F403
from retrax.layers.lsh_attention import *  # noqa: F401,F403
from retrax.layers.metrics import *  # noqa: F401,F403
from retrax.layers.normalization import *  # noqa: F401,F403
from retrax.layers.pooling import *  # noqa: F401,F403
from retrax.layers.pure_lsh_attention import *  # noqa: F401,F403
from retrax.layers.pure_lsh_wrapper import *  # noqa: F401,F403
from retrax.layers.random_uniform import *  # noqa: F401,F403
from retrax.layers.remat import *  # noqa: F401,F403
from retrax.layers.reversible import *  # noqa: F401,F403
from retrax.layers.rnn import *  # noqa: F401,F403
from retrax.layers.sincos_positional import *  # noqa: F401,F403
from retrax.layers.time_bin_positional import *  # noqa: F401,F403
