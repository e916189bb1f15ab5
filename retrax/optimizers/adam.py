"""Adam (Trax flavour) and AdamW, built on ``optax.adam`` / ``optax.adamw``."""

from __future__ import annotations

from typing import Any

import optax

from retrax.optimizers.base import Optimizer, check_nonnegative, check_unit


def _check_adam(name: str, b1: float, b2: float, eps: float) -> None:
    check_unit(name, 'b1', b1)
    check_unit(name, 'b2', b2)
    check_nonnegative(name, 'eps', eps)


class Adam(Optimizer):
    """Adam with Trax's defaults and Trax's weight decay.

    ``m' = b1 m + (1 - b1) g``, ``v' = b2 v + (1 - b2) g**2``,
    ``w' = (1 - weight_decay_rate) * w - lr * mhat / (sqrt(vhat) + eps)``.

    The decay is applied to the weights, *not* multiplied by the learning
    rate (Trax semantics; ``optax.add_decayed_weights(-weight_decay_rate)``
    after ``optax.adam``). For the usual lr-scaled decoupled decay use
    :class:`AdamW`. Note Trax's unusual defaults: ``learning_rate=1e-4``,
    ``eps=1e-5``, ``weight_decay_rate=1e-5``.

    Bias correction is optax's standard one: at the ``t``-th update (t = 1,
    2, ...) ``mhat = m' / (1 - b1**t)``. Trax used ``1 - b1**(step + 1)`` with
    1-based steps, i.e. one step too many; that bug is deliberately not
    copied. The ``step`` argument of ``tree_update`` is ignored; ``t`` is
    the update counter stored in the slots.

    Args:
      learning_rate: step size (``>= 0``).
      weight_decay_rate: fraction of each weight removed per step, ``[0, 1)``.
      b1: first-moment decay, ``[0, 1)``.
      b2: second-moment decay, ``[0, 1)``.
      eps: added to ``sqrt(vhat)``, ``>= 0``.
      clip_grad_norm: optional global-norm gradient clipping threshold.

    >>> import jax.numpy as jnp
    >>> opt = Adam(learning_rate=0.1, weight_decay_rate=0.0, eps=0.0)
    >>> slots, opt_params = opt.tree_init(jnp.array([1.0]))
    >>> w, slots, _ = opt.tree_update(1, jnp.array([3.0]), jnp.array([1.0]),
    ...                               slots, opt_params)
    >>> round(float(w[0]), 6)  # first step moves by lr * sign(g)
    0.9
    """

    def __init__(self, learning_rate: float = 0.0001,
                 weight_decay_rate: float = 1e-5, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-5,
                 clip_grad_norm: float | None = None) -> None:
        _check_adam('Adam', b1, b2, eps)
        check_unit('Adam', 'weight_decay_rate', weight_decay_rate)
        super().__init__(learning_rate=learning_rate,
                         clip_grad_norm=clip_grad_norm,
                         weight_decay_rate=weight_decay_rate,
                         b1=b1, b2=b2, eps=eps)

    def make_transform(self, learning_rate: Any, weight_decay_rate: Any,
                       b1: Any, b2: Any,
                       eps: Any) -> optax.GradientTransformation:
        """``optax.adam`` followed by Trax-style (not lr-scaled) weight decay.

        >>> tx = Adam().make_transform(0.1, 0.0, 0.9, 0.999, 1e-5)
        >>> isinstance(tx, optax.GradientTransformation)
        True
        """
        return optax.chain(
            optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
            optax.add_decayed_weights(-weight_decay_rate))


class AdamW(Optimizer):
    """Adam with decoupled weight decay scaled by the learning rate (retrax).

    ``w' = w - lr * (mhat / (sqrt(vhat) + eps) + weight_decay_rate * w)``
    (Loshchilov & Hutter; ``optax.adamw``). Unlike :class:`Adam`, the decay
    follows the learning-rate schedule. Defaults are optax's. Not in Trax.

    Args:
      learning_rate: step size (``>= 0``).
      weight_decay_rate: decay coefficient, multiplied by the learning rate
        (``>= 0``).
      b1: first-moment decay, ``[0, 1)``.
      b2: second-moment decay, ``[0, 1)``.
      eps: added to ``sqrt(vhat)``, ``>= 0``.
      clip_grad_norm: optional global-norm gradient clipping threshold.

    >>> import jax.numpy as jnp
    >>> opt = AdamW(learning_rate=0.1, weight_decay_rate=0.5, eps=0.0)
    >>> slots, opt_params = opt.tree_init(jnp.array([1.0]))
    >>> w, slots, _ = opt.tree_update(1, jnp.array([3.0]), jnp.array([1.0]),
    ...                               slots, opt_params)
    >>> round(float(w[0]), 6)  # 1 - 0.1 * (1 + 0.5 * 1)
    0.85
    """

    def __init__(self, learning_rate: float = 0.001,
                 weight_decay_rate: float = 1e-4, b1: float = 0.9,
                 b2: float = 0.999, eps: float = 1e-8,
                 clip_grad_norm: float | None = None) -> None:
        _check_adam('AdamW', b1, b2, eps)
        check_nonnegative('AdamW', 'weight_decay_rate', weight_decay_rate)
        super().__init__(learning_rate=learning_rate,
                         clip_grad_norm=clip_grad_norm,
                         weight_decay_rate=weight_decay_rate,
                         b1=b1, b2=b2, eps=eps)

    def make_transform(self, learning_rate: Any, weight_decay_rate: Any,
                       b1: Any, b2: Any,
                       eps: Any) -> optax.GradientTransformation:
        """``optax.adamw`` with the given hyperparameters.

        >>> tx = AdamW().make_transform(0.1, 1e-4, 0.9, 0.999, 1e-8)
        >>> isinstance(tx, optax.GradientTransformation)
        True
        """
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps,
                           weight_decay=weight_decay_rate)
