"""Learning-rate schedules (``trax.lr``).

A schedule is a callable ``step -> learning_rate``. Called with a Python or
NumPy number it returns a Python ``float`` computed in float64 (like Trax);
called with a JAX array, traced values inside ``jax.jit`` included, it returns
a JAX array and never branches in Python. Training steps count from 1.

>>> schedule = warmup_and_rsqrt_decay(400, 0.001)
>>> round(schedule(400), 8), round(schedule(1600), 8)
(0.00099751, 0.00050062)
>>> import jax, jax.numpy as jnp
>>> float(jax.jit(schedule)(jnp.array(1600)))  # doctest: +ELLIPSIS
0.000500...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    'constant',
    'cosine',
    'cosine_sawtooth',
    'multifactor',
    'warmup',
    'warmup_and_rsqrt_decay',
]

_FACTORS = ('constant', 'two_constants', 'linear_warmup', 'rsqrt_decay',
            'rsqrt_normalized_decay', 'decay_every', 'cosine_decay')


class _Schedule:
    """A ``step -> value`` callable computed with NumPy or ``jax.numpy``."""

    def __init__(self, fn: Callable[[Any, Any], Any], description: str):
        self._fn = fn
        self._description = description

    def __call__(self, step: Any) -> Any:
        if isinstance(step, jax.Array):
            return jnp.asarray(self._fn(step, jnp))
        return float(self._fn(np.float64(step), np))

    def __repr__(self) -> str:
        return self._description


def _check(schedule: str, name: str, value: Any, ok: Callable[[float], bool],
           expected: str) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or math.isnan(number) or not ok(number):
        raise ValueError(f'{schedule}: {name} must be {expected}, got {value!r}.')


def _nonnegative(schedule: str, name: str, value: Any) -> None:
    _check(schedule, name, value, lambda v: 0 <= v < math.inf,
           'a finite number >= 0')


def _steps(schedule: str, name: str, value: Any, minimum: int = 0) -> None:
    _check(schedule, name, value,
           lambda v: v >= minimum and v == math.floor(v) and v < math.inf,
           f'an integer >= {minimum}')


def _body_and_tail(step, xp, body_value, body_start, tail_start=None,
                   tail_fn=None):
    """Trax's ``_BodyAndTail``: linear from 0, then a body and maybe a tail."""
    value = xp.where(step < body_start, body_value * step / body_start,
                     body_value)
    if tail_start is not None:
        tail = tail_fn(xp.maximum(step, tail_start), xp)
        value = xp.where(step >= tail_start, tail, value)
    return value


def constant(value: float) -> Callable[[Any], Any]:
    """Returns the schedule that is ``value`` at every step.

    Trax returned 0 at step 0 (a linear ramp over step 0); its loops start at
    step 1, so this only differs where the value is never used.

    >>> schedule = constant(0.01)
    >>> schedule(0), schedule(1), schedule(10**6)
    (0.01, 0.01, 0.01)
    """
    _nonnegative('constant', 'value', value)
    return _Schedule(lambda step, xp: xp.zeros_like(step * 1.0) + value,
                     f'constant(value={value!r})')


def warmup(n_warmup_steps: int, max_value: float) -> Callable[[Any], Any]:
    """Linear warmup from 0 at step 0 to ``max_value``, then constant.

    The value is ``max_value * step / (n_warmup_steps + 1)`` for
    ``step <= n_warmup_steps`` and ``max_value`` afterwards (Trax's
    ``_BodyAndTail(max_value, body_start=n_warmup_steps + 1)``).

    >>> schedule = warmup(4, 1.0)
    >>> [schedule(s) for s in range(7)]
    [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """
    _steps('warmup', 'n_warmup_steps', n_warmup_steps)
    _nonnegative('warmup', 'max_value', max_value)
    body_start = n_warmup_steps + 1
    return _Schedule(
        lambda step, xp: _body_and_tail(step, xp, max_value, body_start),
        f'warmup(n_warmup_steps={n_warmup_steps!r}, max_value={max_value!r})')


def warmup_and_rsqrt_decay(n_warmup_steps: int,
                           max_value: float) -> Callable[[Any], Any]:
    """Linear warmup, then decay proportional to ``1 / sqrt(step)``.

    With ``t = n_warmup_steps + 1`` the value is ``max_value * step / t`` for
    ``step < t`` and ``max_value * sqrt(t) / sqrt(step)`` from ``t`` on.

    >>> schedule = warmup_and_rsqrt_decay(2, 0.01)
    >>> [round(schedule(s), 5) for s in (1, 2, 3, 4)]
    [0.00333, 0.00667, 0.01, 0.00866]
    """
    _steps('warmup_and_rsqrt_decay', 'n_warmup_steps', n_warmup_steps)
    _nonnegative('warmup_and_rsqrt_decay', 'max_value', max_value)
    start = n_warmup_steps + 1

    def rsqrt_tail(step, xp):
        return max_value * (math.sqrt(start) / xp.sqrt(step))

    return _Schedule(
        lambda step, xp: _body_and_tail(step, xp, max_value, start, start,
                                        rsqrt_tail),
        f'warmup_and_rsqrt_decay(n_warmup_steps={n_warmup_steps!r}, '
        f'max_value={max_value!r})')


def cosine_sawtooth(n_warmup_steps: int, max_value: float,
                    steps_per_cycle: int,
                    min_value: float = 1e-5) -> Callable[[Any], Any]:
    """Linear warmup, then repeated cosine cycles from ``max_value`` down.

    Trax's ``_BodyAndTail(max_value, tail_start=n_warmup_steps + 1,
    tail_fn=_CosineSawtoothTail(steps_per_cycle, min_value))``: from
    ``t = n_warmup_steps + 1`` on, with ``p = ((step - t) % steps_per_cycle)
    / steps_per_cycle``, the value is
    ``min_value + (max_value - min_value) * (1 + cos(pi * p)) / 2``.

    >>> schedule = cosine_sawtooth(1, 1.0, 4, min_value=0.0)
    >>> [round(schedule(s), 4) for s in range(8)]
    [0.0, 0.5, 1.0, 0.8536, 0.5, 0.1464, 1.0, 0.8536]
    """
    name = 'cosine_sawtooth'
    _steps(name, 'n_warmup_steps', n_warmup_steps)
    _nonnegative(name, 'max_value', max_value)
    _steps(name, 'steps_per_cycle', steps_per_cycle, minimum=1)
    _nonnegative(name, 'min_value', min_value)
    start = n_warmup_steps + 1

    def sawtooth_tail(step, xp):
        position = ((step - start) % steps_per_cycle) / steps_per_cycle
        return min_value + (max_value - min_value) * 0.5 * (
            1.0 + xp.cos(math.pi * position))

    return _Schedule(
        lambda step, xp: _body_and_tail(step, xp, max_value, start, start,
                                        sawtooth_tail),
        f'{name}(n_warmup_steps={n_warmup_steps!r}, max_value={max_value!r}, '
        f'steps_per_cycle={steps_per_cycle!r}, min_value={min_value!r})')


def cosine(n_steps: int, max_value: float, n_warmup_steps: int = 0,
           min_value: float = 0.0) -> Callable[[Any], Any]:
    """Linear warmup from 0, then one cosine decay to ``min_value`` (retrax).

    ``optax.warmup_cosine_decay_schedule``: the value rises linearly from 0
    to ``max_value`` over ``n_warmup_steps``, falls along a half cosine to
    ``min_value`` at ``n_steps`` (counted from step 0) and stays there. The
    arithmetic is float32 even for Python steps.

    >>> schedule = cosine(10, 1.0, n_warmup_steps=2)
    >>> [round(schedule(s), 4) for s in (0, 1, 2, 6, 10, 20)]
    [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    """
    _steps('cosine', 'n_warmup_steps', n_warmup_steps)
    _steps('cosine', 'n_steps', n_steps, minimum=n_warmup_steps + 1)
    _nonnegative('cosine', 'max_value', max_value)
    _nonnegative('cosine', 'min_value', min_value)
    fn = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=max_value, warmup_steps=n_warmup_steps,
        decay_steps=n_steps, end_value=min_value)
    return _Schedule(
        lambda step, xp: fn(step),
        f'cosine(n_steps={n_steps!r}, max_value={max_value!r}, '
        f'n_warmup_steps={n_warmup_steps!r}, min_value={min_value!r})')


def multifactor(factors: str = 'constant * linear_warmup * rsqrt_decay',
                constant: float = 0.1, warmup_steps: int = 400,
                decay_factor: float = 0.5, steps_per_decay: int = 20000,
                steps_per_cycle: int = 100000, second_constant: float = 0.01,
                second_constant_step: int = 10000,
                minimum: float = 0) -> Callable[[Any], Any]:
    """Product of named factors, clamped below at ``minimum`` (Trax's default).

    ``factors`` is a ``'*'``-separated string of names:

    * ``constant``: ``constant``.
    * ``two_constants``: ``constant`` before ``second_constant_step``,
      ``second_constant`` from it on.
    * ``linear_warmup``: ``min(1, step / warmup_steps)`` (1 if
      ``warmup_steps`` is 0).
    * ``rsqrt_decay``: ``1 / sqrt(max(step, warmup_steps))``.
    * ``rsqrt_normalized_decay``: ``sqrt(warmup_steps) / sqrt(max(step,
      warmup_steps))``.
    * ``decay_every``: ``decay_factor ** (step // steps_per_decay)``.
    * ``cosine_decay``: ``(1 + cos(pi * (p % 1))) / 2`` with
      ``p = max(0, (step - warmup_steps) / steps_per_cycle)``.

    In the rsqrt factors ``max(step, warmup_steps)`` is also kept ``>= 1``, so
    step 0 with ``warmup_steps=0`` gives a finite value (Trax gave inf).

    Raises:
      ValueError: for an unknown factor name or an invalid argument.

    >>> schedule = multifactor()
    >>> [round(schedule(s), 6) for s in (0, 200, 400, 1600)]
    [0.0, 0.0025, 0.005, 0.0025]
    >>> multifactor('constant * decay_every', constant=1.0,
    ...             steps_per_decay=10)(25)
    0.25
    """
    names = [n.strip() for n in factors.split('*')]
    unknown = [n for n in names if n not in _FACTORS]
    if unknown:
        raise ValueError(
            f'multifactor: unknown factor {unknown[0]!r} in factors={factors!r}; '
            f"expected names from {', '.join(_FACTORS)} separated by '*'.")
    _nonnegative('multifactor', 'constant', constant)
    _steps('multifactor', 'warmup_steps', warmup_steps)
    _nonnegative('multifactor', 'decay_factor', decay_factor)
    _steps('multifactor', 'steps_per_decay', steps_per_decay, minimum=1)
    _steps('multifactor', 'steps_per_cycle', steps_per_cycle, minimum=1)
    _nonnegative('multifactor', 'second_constant', second_constant)
    _nonnegative('multifactor', 'second_constant_step', second_constant_step)
    _nonnegative('multifactor', 'minimum', minimum)

    def fn(step, xp):
        value = xp.ones_like(step * 1.0)
        for name in names:
            if name == 'constant':
                value = value * constant
            elif name == 'two_constants':
                value = value * xp.where(step < second_constant_step, constant,
                                         second_constant)
            elif name == 'linear_warmup':
                if warmup_steps > 0:
                    value = value * xp.minimum(1.0, step / warmup_steps)
            elif name == 'rsqrt_decay':
                value = value / xp.sqrt(xp.maximum(step, max(warmup_steps, 1)))
            elif name == 'rsqrt_normalized_decay':
                value = value * (math.sqrt(warmup_steps) / xp.sqrt(
                    xp.maximum(step, max(warmup_steps, 1))))
            elif name == 'decay_every':
                value = value * decay_factor ** (step // steps_per_decay)
            else:  # cosine_decay
                progress = xp.maximum(0.0, (step - warmup_steps) / steps_per_cycle)
                value = value * 0.5 * (1.0 + xp.cos(math.pi * (progress % 1.0)))
        return xp.maximum(value, minimum)

    return _Schedule(fn, f'multifactor(factors={factors!r}, ...)')
