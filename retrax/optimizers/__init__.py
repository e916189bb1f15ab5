"""Trax-compatible optimizers built on optax (``trax.optimizers``).

Every optimizer keeps Trax's constructor arguments and the
``tree_init`` / ``tree_update`` interface used by the training loop, and
exposes its optax transformation through ``to_optax()``.

>>> import jax.numpy as jnp
>>> opt = Adam(learning_rate=0.01)
>>> slots, opt_params = opt.tree_init((jnp.ones(2), ()))
>>> sorted(opt_params)
['b1', 'b2', 'eps', 'learning_rate', 'weight_decay_rate']
"""

from retrax.optimizers.adafactor import Adafactor
from retrax.optimizers.adam import Adam, AdamW
from retrax.optimizers.base import Optimizer, clip_grads, flat_slots, l2_norm, unflat_slots
from retrax.optimizers.momentum import Momentum
from retrax.optimizers.rms_prop import RMSProp
from retrax.optimizers.sgd import SGD
from retrax.optimizers.sm3 import SM3, MomentumType

__all__ = [
    'SGD',
    'SM3',
    'MomentumType',
    'Adafactor',
    'Adam',
    'AdamW',
    'Momentum',
    'Optimizer',
    'RMSProp',
    'clip_grads',
    'flat_slots',
    'l2_norm',
    'unflat_slots',
]
