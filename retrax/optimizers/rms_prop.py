"""RMSProp with Trax's initialisation of the squared-gradient average."""

from __future__ import annotations

from typing import Any

import optax

from retrax.optimizers.base import Optimizer, check_nonnegative, check_unit


class RMSProp(Optimizer):
    """RMSProp as in Trax, via ``optax.rmsprop``.

    ``a' = gamma * a + (1 - gamma) * g**2``;
    ``w' = w - lr * g / (sqrt(a') + eps)``. As in Trax the average ``a``
    starts at ones (``initial_scale=1.0``) and ``eps`` is added outside the
    square root (``eps_in_sqrt=False``). No weight decay.

    Args:
      learning_rate: step size (``>= 0``).
      gamma: decay of the squared-gradient average, in ``[0, 1)``.
      eps: added to the root of the average, ``>= 0``.
      clip_grad_norm: optional global-norm gradient clipping threshold.

    >>> import jax.numpy as jnp
    >>> opt = RMSProp(learning_rate=0.1, gamma=0.5, eps=0.0)
    >>> slots, opt_params = opt.tree_init(jnp.array([0.0]))
    >>> w, slots, _ = opt.tree_update(1, jnp.array([1.0]), jnp.array([0.0]),
    ...                               slots, opt_params)
    >>> round(float(w[0]), 6)  # a' = 0.5 * 1 + 0.5 * 1 = 1
    -0.1
    """

    def __init__(self, learning_rate: float = 0.001, gamma: float = 0.9,
                 eps: float = 1e-8, clip_grad_norm: float | None = None) -> None:
        check_unit('RMSProp', 'gamma', gamma)
        check_nonnegative('RMSProp', 'eps', eps)
        super().__init__(learning_rate=learning_rate,
                         clip_grad_norm=clip_grad_norm, gamma=gamma, eps=eps)

    def make_transform(self, learning_rate: Any, gamma: Any,
                       eps: Any) -> optax.GradientTransformation:
        """``optax.rmsprop`` with Trax's initial scale and epsilon placement.

        >>> tx = RMSProp().make_transform(0.1, 0.9, 1e-8)
        >>> isinstance(tx, optax.GradientTransformation)
        True
        """
        return optax.rmsprop(learning_rate, decay=gamma, eps=eps,
                             initial_scale=1.0, eps_in_sqrt=False)
