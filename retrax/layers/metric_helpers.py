"""What the loss and metric layers share: static shape checks and weighted reductions.

The checks read static shapes, so they run at trace time and work under
``jit``; each names the layer (``owner``) and the shapes it expected. The
weighted reductions implement the conventions of ``retrax.layers.metrics``:
weights broadcast to the values before summing, positions of weight 0 ignored
even where a value is not finite, and 0.0 (not NaN) when the weights sum to 0.
``WeightedMeanOf`` and ``WeightedSumOf`` are those reductions as the 2 -> 1
sublayers of the ``Serial``-based layers (printed as in Trax).

>>> import numpy as np
>>> from retrax.layers import metric_helpers
>>> float(metric_helpers.weighted_mean(np.array([1.0, np.nan, 3.0]), np.array([1.0, 0.0, 1.0])))
2.0
>>> float(metric_helpers.weighted_mean(np.ones(2), np.zeros(2)))
0.0
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.layers.base import Fn, Layer

__all__ = [
    "shape_of",
    "check_categorical",
    "check_same_shape",
    "check_weights",
    "as_float",
    "safe_div",
    "weighted_mean",
    "weighted_sum",
    "WeightedMeanOf",
    "WeightedSumOf",
]

_CATEGORICAL_HINT = (
    "Pass model_output as (batch, [length,] n_categories) scores and targets as "
    "integer category ids of shape (batch, [length])."
)


# --------------------------------------------------------------------------
# Checks (static shapes: they run at trace time and work under jit)
# --------------------------------------------------------------------------


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in jnp.shape(x))


def check_categorical(owner: str, model_output: Any, targets: Any) -> None:
    mo, t = shape_of(model_output), shape_of(targets)
    if not mo:
        raise ValueError(
            f"{owner}: model_output is a scalar (shape ()), targets have shape {t}; "
            f"expected model_output with a last axis of n_categories. {_CATEGORICAL_HINT}"
        )
    if mo[:-1] != t:
        raise ValueError(
            f"{owner}: model_output has shape {mo} and targets have shape {t}; expected "
            f"targets of shape {mo[:-1]} (model_output's shape without its last, "
            f"n_categories axis). {_CATEGORICAL_HINT}"
        )


def check_same_shape(owner: str, a_name: str, a: Any, b_name: str, b: Any, hint: str) -> None:
    sa, sb = shape_of(a), shape_of(b)
    if sa != sb:
        raise ValueError(
            f"{owner}: {a_name} have shape {sa} and {b_name} have shape {sb}; expected "
            f"equal shapes. {hint}"
        )


def check_weights(owner: str, weights: Any, shape: tuple[int, ...]) -> None:
    w = shape_of(weights)
    try:
        ok = tuple(np.broadcast_shapes(w, shape)) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{owner}: weights have shape {w}, which does not broadcast to the targets' "
            f"shape {shape}; expected weights of shape {shape} (one weight per target) or "
            f"a shape that broadcasts to it, such as (batch, 1) or ()."
        )


# --------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------


def as_float(x: Any) -> jax.Array:
    """``x`` as a float array of at least 32 bits (bf16/f16/ints become f32)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits >= 32:
        return x
    return x.astype(jnp.float32)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, and 0 where ``den == 0`` (no NaN in values or gradients)."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros_like(num), num / jnp.where(zero, jnp.ones_like(den), den))


def weighted_mean(values: Any, weights: Any) -> jax.Array:
    """``sum(v * w) / sum(w)`` with ``w`` broadcast to ``v``; 0 if ``sum(w) == 0``."""
    values = as_float(values)
    w = jnp.broadcast_to(jnp.asarray(weights).astype(values.dtype), values.shape)
    num = jnp.sum(jnp.where(w == 0, jnp.zeros_like(values), values * w))
    return safe_div(num, jnp.sum(w))


def weighted_sum(values: Any, weights: Any) -> jax.Array:
    values = as_float(values)
    w = jnp.broadcast_to(jnp.asarray(weights).astype(values.dtype), values.shape)
    return jnp.sum(jnp.where(w == 0, jnp.zeros_like(values), values * w))


# --------------------------------------------------------------------------
# Building blocks (the sublayers of the Serial-based layers, named as in Trax)
# --------------------------------------------------------------------------


def WeightedMeanOf(owner: str) -> Layer:
    def f(values, weights):
        check_weights(owner, weights, shape_of(values))
        return weighted_mean(values, weights)

    return Fn("_WeightedMean", f)


def WeightedSumOf(owner: str) -> Layer:
    def f(values, weights):
        check_weights(owner, weights, shape_of(values))
        return weighted_sum(values, weights)

    return Fn("WeightedSum", f)
