"""Argument checks and run-time helpers shared by the attention modules.

``attention``, ``causal_attention``, ``attention_math`` and ``positional``
check their constructor arguments with these functions (the messages name the
layer), read a concrete index with ``static_int`` and draw train-mode
randomness with ``dropout_rng``. Mode names are checked by
``retrax.layers.core.check_mode``.

>>> from retrax.layers import attention_checks
>>> attention_checks.check_heads('MyAttention', 8, 2)
(8, 2)
>>> attention_checks.check_positive_int('MyAttention', 'n_heads', 0)
Traceback (most recent call last):
  ...
ValueError: MyAttention: n_heads must be a positive int; got 0.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from retrax.layers.base import Layer

__all__ = ["check_positive_int", "check_dropout", "check_heads", "static_int", "dropout_rng"]


def check_positive_int(owner: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a positive int; got {value!r}.")
    return int(value)


def check_dropout(owner: str, rate: Any) -> float:
    try:
        rate_f = float(rate)
    except (TypeError, ValueError):
        raise TypeError(f"{owner}: dropout must be a number in [0, 1); got {rate!r}.") from None
    if not 0.0 <= rate_f < 1.0:
        raise ValueError(
            f"{owner}: dropout rate must be in [0, 1) (it is the probability of dropping an "
            f"attention weight); got {rate!r}."
        )
    return rate_f


def check_heads(owner: str, d_feature: Any, n_heads: Any) -> tuple[int, int]:
    d_feature = check_positive_int(owner, "d_feature", d_feature)
    n_heads = check_positive_int(owner, "n_heads", n_heads)
    if d_feature % n_heads:
        raise ValueError(
            f"{owner}: d_feature ({d_feature}) is not a multiple of n_heads ({n_heads}); each "
            f"head gets d_feature // n_heads features, so pick n_heads dividing d_feature."
        )
    return d_feature, n_heads


def static_int(x: Any) -> int | None:
    """``int(x)`` when ``x`` is concrete; ``None`` while JAX is tracing it."""
    try:
        return int(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
        return None


def dropout_rng(layer: Layer) -> Any:
    # Like tl.Dropout: an explicit rng is required for train-mode randomness.
    if not layer.has_rng:
        raise ValueError(
            f"{layer.name}: dropout and random offsets in 'train' mode need an rng; pass "
            f"rng=... to pure_fn (or build the layer with mode='eval' for deterministic "
            f"outputs)."
        )
    return layer.rng
