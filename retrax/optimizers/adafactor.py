"""Adafactor with Trax's arguments, assembled from optax building blocks."""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import optax

from retrax.optimizers.base import (
    Optimizer,
    check_nonnegative,
    check_number,
    check_positive,
    check_unit,
)


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, 2018) with Trax's arguments and defaults.

    The chain is ``optax.scale_by_factored_rms`` (second-moment decay
    ``1 - t**-decay_rate`` at update ``t = 1, 2, ...``, ``epsilon1`` added to
    ``g**2``), then ``optax.clip_by_block_rms(clipping_threshold)`` if
    ``do_clipping``, the learning rate times ``max(rms(w), epsilon2)`` if
    ``multiply_by_parameter_scale`` (``optax.scale_by_param_block_rms``),
    ``optax.ema(beta1)`` momentum if ``do_momentum``, and finally Trax's weight
    decay ``w' = (1 - weight_decay_rate) * w - update`` (not lr-scaled).

    Differences from Trax, all deliberate or inherited from optax:

    * Trax's decay used ``t = step + 1`` with 1-based steps (one too many);
      here ``t`` is the update counter in the slots, so the first update uses
      decay 0 (``v = g**2``), as in the paper. ``step`` is ignored.
    * With ``weight_decay_n_steps = n > 0`` the decay rate falls linearly from
      ``weight_decay_rate`` at the first update to 0 after ``n`` updates.
    * Every weight with ``ndim >= 2`` is factored, like Trax, but over its two
      largest axes (Trax: the last two; identical for 2-D weights). The slots
      keep optax's layout (``v_row, v_col, v`` with ``(1,)`` placeholders),
      not Trax's, and use the weights' dtype.

    Args:
      learning_rate: relative step size (``>= 0``).
      factored: use the factored second-moment estimate for >= 2-D weights.
      multiply_by_parameter_scale: scale steps by the weights' RMS.
      do_clipping: clip the update's RMS to ``clipping_threshold``.
      do_momentum: keep a momentum slot with coefficient ``beta1``.
      momentum_in_bfloat16: store the momentum slot in bfloat16.
      beta1: momentum coefficient, ``[0, 1)``.
      decay_rate: exponent of the second-moment decay schedule, ``> 0``.
      clipping_threshold: update-RMS threshold, ``> 0``.
      weight_decay_rate: fraction of each weight removed per step, ``[0, 1)``.
      weight_decay_n_steps: if ``> 0``, anneal the weight decay to 0 over this
        many updates (an int, fixed at construction).
      epsilon1: added to squared gradients, ``>= 0``.
      epsilon2: lower bound of the parameter scale, ``>= 0``.
      clip_grad_norm: (keyword-only, retrax addition) global-norm clipping.

    >>> import jax.numpy as jnp
    >>> opt = Adafactor(learning_rate=0.1, multiply_by_parameter_scale=False,
    ...                 weight_decay_rate=0.0)
    >>> w = jnp.ones((2, 3))
    >>> slots, opt_params = opt.tree_init(w)
    >>> new_w, slots, _ = opt.tree_update(1, jnp.full((2, 3), 4.0), w,
    ...                                   slots, opt_params)
    >>> round(float(new_w[0, 0]), 5)  # first step: w - lr * g / |g|
    0.9
    """

    def __init__(self, learning_rate: float = 0.05, factored: bool = True,
                 multiply_by_parameter_scale: bool = True,
                 do_clipping: bool = True, do_momentum: bool = False,
                 momentum_in_bfloat16: bool = False, beta1: float = 0.0,
                 decay_rate: float = 0.8, clipping_threshold: float = 1.0,
                 weight_decay_rate: float = 1e-5,
                 weight_decay_n_steps: int = 0, epsilon1: float = 1e-16,
                 epsilon2: float = 1e-3, *,
                 clip_grad_norm: float | None = None) -> None:
        name = 'Adafactor'
        check_unit(name, 'beta1', beta1)
        check_positive(name, 'decay_rate', decay_rate)
        check_positive(name, 'clipping_threshold', clipping_threshold)
        check_unit(name, 'weight_decay_rate', weight_decay_rate)
        check_number(name, 'weight_decay_n_steps', weight_decay_n_steps,
                     lambda v: v >= 0 and v == math.floor(v) and v < math.inf,
                     'an integer >= 0')
        check_nonnegative(name, 'epsilon1', epsilon1)
        check_nonnegative(name, 'epsilon2', epsilon2)
        self._factored = bool(factored)
        self._multiply_by_parameter_scale = bool(multiply_by_parameter_scale)
        self._do_clipping = bool(do_clipping)
        self._do_momentum = bool(do_momentum)
        self._momentum_in_bfloat16 = bool(momentum_in_bfloat16)
        self._weight_decay_n_steps = int(weight_decay_n_steps)
        super().__init__(learning_rate=learning_rate,
                         clip_grad_norm=clip_grad_norm, beta1=beta1,
                         decay_rate=decay_rate,
                         clipping_threshold=clipping_threshold,
                         weight_decay_rate=weight_decay_rate,
                         epsilon1=epsilon1, epsilon2=epsilon2)

    def make_transform(self, learning_rate: Any, beta1: Any, decay_rate: Any,
                       clipping_threshold: Any, weight_decay_rate: Any,
                       epsilon1: Any,
                       epsilon2: Any) -> optax.GradientTransformation:
        """The Adafactor chain for the given hyperparameter values.

        >>> tx = Adafactor().make_transform(0.05, 0.0, 0.8, 1.0, 0.0, 1e-16,
        ...                                 1e-3)
        >>> isinstance(tx, optax.GradientTransformation)
        True
        """
        parts = [optax.scale_by_factored_rms(
            factored=self._factored, decay_rate=decay_rate,
            min_dim_size_to_factor=1, epsilon=epsilon1)]
        if self._do_clipping:
            parts.append(optax.clip_by_block_rms(clipping_threshold))
        parts.append(optax.scale_by_learning_rate(learning_rate,
                                                  flip_sign=False))
        if self._multiply_by_parameter_scale:
            parts.append(optax.scale_by_param_block_rms(epsilon2))
        if self._do_momentum:
            dtype = jnp.bfloat16 if self._momentum_in_bfloat16 else None
            parts.append(optax.ema(beta1, debias=False,
                                   accumulator_dtype=dtype))
        parts.append(optax.scale(-1.0))
        n = self._weight_decay_n_steps
        if n > 0:
            fraction = optax.linear_schedule(1.0, 0.0, n)
            parts.append(optax.add_decayed_weights(
                lambda count: -weight_decay_rate * fraction(count)))
        else:
            parts.append(optax.add_decayed_weights(-weight_decay_rate))
        return optax.chain(*parts)
