"""SGD with (Nesterov) momentum and Trax-style weight decay."""

from __future__ import annotations

from typing import Any

import optax

from retrax.optimizers.base import Optimizer, check_unit


class Momentum(Optimizer):
    """Momentum optimizer with Trax's update rule, via ``optax.sgd``.

    ``v' = mass * v + g``; the update is ``mass * v' + g`` with Nesterov or
    ``v'`` without; ``w' = (1 - weight_decay_rate) * w - lr * update``. The
    weight decay is *not* scaled by the learning rate (as in Trax); it is
    ``optax.add_decayed_weights(-weight_decay_rate)`` placed after the
    learning-rate scaling. The velocity starts at zero.

    Args:
      learning_rate: step size (``>= 0``).
      mass: momentum coefficient in ``[0, 1)``.
      weight_decay_rate: fraction of each weight removed per step, ``[0, 1)``.
      nesterov: use Nesterov momentum.
      clip_grad_norm: (keyword-only, retrax addition) global-norm clipping.

    >>> import jax.numpy as jnp
    >>> opt = Momentum(learning_rate=0.1, mass=0.5, weight_decay_rate=0.0)
    >>> slots, opt_params = opt.tree_init(jnp.array([1.0]))
    >>> w, slots, _ = opt.tree_update(1, jnp.array([1.0]), jnp.array([1.0]),
    ...                               slots, opt_params)
    >>> round(float(w[0]), 6)  # v'=1, update=0.5*1+1=1.5
    0.85
    """

    def __init__(self, learning_rate: float = 0.01, mass: float = 0.9,
                 weight_decay_rate: float = 1e-5, nesterov: bool = True, *,
                 clip_grad_norm: float | None = None) -> None:
        check_unit('Momentum', 'mass', mass)
        check_unit('Momentum', 'weight_decay_rate', weight_decay_rate)
        self._nesterov = bool(nesterov)
        super().__init__(learning_rate=learning_rate,
                         clip_grad_norm=clip_grad_norm, mass=mass,
                         weight_decay_rate=weight_decay_rate)

    def make_transform(self, learning_rate: Any, mass: Any,
                       weight_decay_rate: Any) -> optax.GradientTransformation:
        """Momentum SGD followed by Trax-style weight decay.

        >>> tx = Momentum().make_transform(0.1, 0.9, 0.0)
        >>> isinstance(tx, optax.GradientTransformation)
        True
        """
        return optax.chain(
            optax.sgd(learning_rate, momentum=mass, nesterov=self._nesterov),
            optax.add_decayed_weights(-weight_decay_rate))
