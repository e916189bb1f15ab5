"""SM3: memory-efficient adaptive optimization (Anil et al. 2019, arXiv:1901.11150).

Written on Trax's per-weight protocol (``init``/``update``), with Trax 1.4.1's
hyperparameters and slot layout: per weight array ``(momentum, v1s, v2s)``
where ``v1s`` holds one accumulator vector per axis of the weight (a matrix of
shape ``(m, n)`` keeps ``m + n`` numbers instead of ``m * n``), ``v2s`` the
same for grafting (empty unless ``second_moment_averaging != 1``) and
``momentum`` is ``[]`` when ``momentum == 0``.
"""

from __future__ import annotations

import enum
from typing import Any

import jax.numpy as jnp

from retrax.optimizers.base import Optimizer, check_nonnegative, check_number, check_unit

__all__ = ["SM3", "MomentumType"]

_TINY = 1e-16  # Keeps 1 / sqrt(acc) finite; zero accumulators give no update.


class MomentumType(enum.IntEnum):
    """How SM3 applies momentum to the preconditioned gradient (Trax's values)."""

    EMA = 1
    HEAVY_BALL = 2
    NESTEROV = 3


def _axis_view(vector: Any, rank: int, axis: int) -> Any:
    """``vector`` (the accumulator of ``axis``) shaped to broadcast over a rank-``rank`` array."""
    return jnp.reshape(vector, [1] * axis + [-1] + [1] * (rank - axis - 1))


def _cover(accumulators: list[Any], shape: tuple[int, ...]) -> Any:
    """The full-shape accumulator SM3 bounds each entry by: the minimum over the axes."""
    if len(shape) <= 1:
        return accumulators[0]
    views = [_axis_view(a, len(shape), i) for i, a in enumerate(accumulators)]
    out = views[0]
    for view in views[1:]:
        out = jnp.minimum(out, view)
    return out


def _per_axis_max(acc: Any) -> list[Any]:
    """One vector per axis: the maximum of ``acc`` over every other axis."""
    if acc.ndim <= 1:
        return [acc]
    return [jnp.max(acc, axis=tuple(j for j in range(acc.ndim) if j != i))
            for i in range(acc.ndim)]


def _precondition(g: Any, acc: Any) -> Any:
    return jnp.where(acc > 0.0, g / (jnp.sqrt(acc) + _TINY), jnp.zeros_like(g))


class SM3(Optimizer):
    """SM3 with Trax 1.4.1's signature and update rule.

    Args:
      learning_rate: step size (``>= 0``).
      momentum: momentum coefficient in ``[0, 1)``; 0 turns momentum off.
      second_moment_averaging: ``beta2``; 1.0 accumulates squared gradients
        from the start (AdaGrad-like), below 1 averages them and grafts the
        step size of the accumulating version onto the direction.
      weight_decay: added to the preconditioned gradient as ``weight_decay * w``.
      momentum_type: ``MomentumType.EMA`` (default), ``HEAVY_BALL`` or ``NESTEROV``.

    >>> import jax.numpy as jnp
    >>> opt = SM3(learning_rate=0.1, momentum=0.0)
    >>> slots, params = opt.tree_init(jnp.zeros((2, 3)))
    >>> [[a.shape for a in v1s] for _, v1s, _ in slots]   # 2 + 3 numbers, not 6
    [[(2,), (3,)]]
    >>> w, slots, _ = opt.tree_update(1, jnp.ones((2, 3)), jnp.zeros((2, 3)), slots, params)
    >>> [[round(float(x), 6) for x in row] for row in w]   # AdaGrad's first step: -lr * g / abs(g)
    [[-0.1, -0.1, -0.1], [-0.1, -0.1, -0.1]]
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.9,
                 second_moment_averaging: float = 1.0, weight_decay: float = 0.0,
                 momentum_type: MomentumType = MomentumType.EMA) -> None:
        check_unit("SM3", "momentum", momentum)
        check_number("SM3", "second_moment_averaging", second_moment_averaging,
                     lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
        check_nonnegative("SM3", "weight_decay", weight_decay)
        try:
            momentum_type = MomentumType(momentum_type)
        except ValueError:
            raise ValueError(f"SM3: momentum_type must be one of {list(MomentumType)}; got "
                             f"{momentum_type!r}.") from None
        self._has_momentum = momentum > 0.0
        self._graft = second_moment_averaging != 1.0
        self._momentum_type = momentum_type
        super().__init__(learning_rate=learning_rate, momentum=momentum,
                         second_moment_averaging=second_moment_averaging,
                         weight_decay=weight_decay)

    def init(self, weights: Any) -> tuple[Any, list, list]:
        shape = weights.shape if weights.ndim else (1,)
        momentum = jnp.zeros_like(weights) if self._has_momentum else []
        v1s = [jnp.zeros(d, weights.dtype) for d in shape]
        v2s = [jnp.zeros(d, weights.dtype) for d in shape] if self._graft else []
        return momentum, v1s, v2s

    def update(self, step: Any, grads: Any, weights: Any, slots: Any,
               opt_params: dict[str, Any]) -> tuple[Any, tuple[Any, list, list]]:
        del step
        momentum, v1s, v2s = slots
        g = grads if grads.ndim else grads.reshape(1)
        beta2 = opt_params["second_moment_averaging"]
        # beta2 == 1 adds squared gradients; beta2 < 1 averages them.
        new_part = jnp.where(beta2 == 1.0, 1.0, 1.0 - beta2)
        acc = beta2 * _cover(v1s, g.shape) + new_part * g * g
        direction = _precondition(g, acc)
        new_v2s = v2s
        if self._graft:
            graft_acc = _cover(v2s, g.shape) + g * g
            graft_step = _precondition(g, graft_acc)
            direction = direction * (jnp.linalg.norm(graft_step)
                                     / (jnp.linalg.norm(direction) + _TINY))
            new_v2s = _per_axis_max(graft_acc)
        direction = direction.reshape(weights.shape) + weights * opt_params["weight_decay"]
        if self._has_momentum:
            beta1 = opt_params["momentum"]
            if self._momentum_type == MomentumType.EMA:
                momentum = (1.0 - beta1) * direction + beta1 * momentum
                step_dir = momentum
            else:
                momentum = direction + beta1 * momentum
                step_dir = (momentum if self._momentum_type == MomentumType.HEAVY_BALL
                            else direction + beta1 * momentum)
        else:
            step_dir = direction
        new_weights = weights - (opt_params["learning_rate"] * step_dir).astype(weights.dtype)
        return new_weights, (momentum, _per_axis_max(acc), new_v2s)
