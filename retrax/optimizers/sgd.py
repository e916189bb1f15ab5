"""Plain stochastic gradient descent."""

from __future__ import annotations

from typing import Any

import optax

from retrax.optimizers.base import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent: ``w' = w - lr * g`` (``optax.sgd``).

    Args:
      learning_rate: step size (``>= 0``).
      clip_grad_norm: optional global-norm gradient clipping threshold.

    >>> import jax.numpy as jnp
    >>> opt = SGD(learning_rate=0.1)
    >>> slots, opt_params = opt.tree_init(jnp.array([1.0, 2.0]))
    >>> w, slots, stats = opt.tree_update(
    ...     1, jnp.array([1.0, -1.0]), jnp.array([1.0, 2.0]), slots, opt_params)
    >>> [round(x, 6) for x in w.tolist()]
    [0.9, 2.1]
    """

    def __init__(self, learning_rate: float = 0.01,
                 clip_grad_norm: float | None = None) -> None:
        super().__init__(learning_rate=learning_rate,
                         clip_grad_norm=clip_grad_norm)

    def make_transform(self, learning_rate: Any) -> optax.GradientTransformation:
        """``optax.sgd(learning_rate)``.

        >>> isinstance(SGD().make_transform(0.1), optax.GradientTransformation)
        True
        """
        return optax.sgd(learning_rate)
