"""Weight initializers: functions ``(shape, rng) -> array`` (float32).

The names, arguments and distributions are Trax's.

>>> from retrax.layers import initializers as init
>>> from retrax.fastmath import random
>>> w = init.GlorotUniformInitializer()((3, 4), random.get_prng(0))
>>> w.shape, bool(abs(w).max() <= (6 / 7) ** 0.5)
((3, 4), True)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.fastmath.random import numpy_generator

__all__ = [
    "RandomNormalInitializer",
    "RandomUniformInitializer",
    "ScaledInitializer",
    "GlorotNormalInitializer",
    "GlorotUniformInitializer",
    "LeCunNormalInitializer",
    "LeCunUniformInitializer",
    "KaimingNormalInitializer",
    "KaimingUniformInitializer",
    "OrthogonalInitializer",
    "InitializerFromFile",
]

Initializer = Callable[[tuple, Any], Any]


# With a concrete key the samples come from NumPy, seeded from the key: no XLA
# compilation per weight shape, so building a model takes milliseconds. Under
# jit/eval_shape (a traced key) they come from jax.random. The same key always
# gives the same weights; the two paths give different (equally distributed)
# values.


def _normal(rng: Any, shape: tuple[int, ...]) -> Any:
    gen = numpy_generator(rng)
    if gen is None:
        return jax.random.normal(rng, shape, jnp.float32)
    return gen.standard_normal(shape, dtype=np.float32)


def _uniform(rng: Any, shape: tuple[int, ...], low: float, high: float) -> Any:
    gen = numpy_generator(rng)
    if gen is None:
        return jax.random.uniform(rng, shape, jnp.float32, low, high)
    return gen.uniform(low, high, shape).astype(np.float32)


def _truncated_normal(rng: Any, shape: tuple[int, ...], lim: float = 2.0) -> Any:
    gen = numpy_generator(rng)
    if gen is None:
        return jax.random.truncated_normal(rng, -lim, lim, shape, jnp.float32)
    out = gen.standard_normal(shape)
    bad = np.abs(out) > lim
    while bad.any():  # resample the tails (about 4.6% per round)
        out[bad] = gen.standard_normal(int(bad.sum()))
        bad = np.abs(out) > lim
    return out.astype(np.float32)


def _check_shape(shape: Any, who: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"{who}: shape dimensions must be >= 0; got {shape}.")
    return shape


def RandomNormalInitializer(stddev: float = 1e-2) -> Initializer:  # noqa: N802
    """Normal(0, stddev**2) samples."""

    def init(shape, rng):
        shape = _check_shape(shape, "RandomNormalInitializer")
        return (_normal(rng, shape) * np.float32(stddev)).astype(np.float32)

    return init


def RandomUniformInitializer(lim: float = 1.0) -> Initializer:  # noqa: N802
    """Uniform samples in ``[-lim, lim)``."""

    def init(shape, rng):
        shape = _check_shape(shape, "RandomUniformInitializer")
        return _uniform(rng, shape, -lim, lim)

    return init


def _get_fans(shape: tuple[int, ...], out_dim: int, in_dim: int) -> tuple[float, float]:
    if len(shape) < 2:
        # Vectors and scalars: fan is the size itself (Trax's behaviour).
        size = float(np.prod(shape)) if shape else 1.0
        return size, size
    receptive = float(np.prod([d for i, d in enumerate(shape)
                               if i not in (out_dim % len(shape), in_dim % len(shape))]))
    # Trax multiplies by the receptive field only for 0-d shapes (an indentation
    # slip upstream); conv kernels there get fans of in/out channels only. We keep
    # Trax's numbers so freshly initialized models match Trax's statistics.
    del receptive
    return float(shape[in_dim]), float(shape[out_dim])


def ScaledInitializer(out_dim: int, in_dim: int, scale: float, mode: str,  # noqa: N802
                      distribution: str) -> Initializer:
    """Variance-scaling initializer (``mode`` fan_in/fan_out/fan_avg)."""
    if scale <= 0.0:
        raise ValueError(f"ScaledInitializer: scale must be > 0; got {scale}.")
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"ScaledInitializer: mode must be fan_in, fan_out or fan_avg; got {mode!r}.")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(
            "ScaledInitializer: distribution must be truncated_normal, normal or uniform; "
            f"got {distribution!r}."
        )

    def init(shape, rng):
        shape = _check_shape(shape, "ScaledInitializer")
        fan_in, fan_out = _get_fans(shape, out_dim, in_dim)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2.0}[mode]
        s = scale / max(1.0, fan)
        if distribution == "truncated_normal":
            std = np.sqrt(s) / 0.87962566103423978
            return (_truncated_normal(rng, shape) * np.float32(std)).astype(np.float32)
        if distribution == "normal":
            return (_normal(rng, shape) * np.float32(np.sqrt(s))).astype(np.float32)
        lim = np.sqrt(3.0 * s)
        return _uniform(rng, shape, -lim, lim)

    return init


def GlorotNormalInitializer(out_dim: int = -1, in_dim: int = -2, scale: float = 1.0):  # noqa: N802
    """Normal with variance ``2 * scale / (fan_in + fan_out)``."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_avg", "normal")


def GlorotUniformInitializer(out_dim: int = -1, in_dim: int = -2, scale: float = 1.0):  # noqa: N802
    """Uniform in ``±sqrt(6 * scale / (fan_in + fan_out))`` (Dense's default)."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_avg", "uniform")


def LeCunNormalInitializer(out_dim: int = -1, in_dim: int = -2, scale: float = 1.0):  # noqa: N802
    """Normal with variance ``scale / fan_in``."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_in", "normal")


def LeCunUniformInitializer(out_dim: int = -1, in_dim: int = -2, scale: float = 1.0):  # noqa: N802
    """Uniform in ``±sqrt(3 * scale / fan_in)``."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_in", "uniform")


def KaimingNormalInitializer(out_dim: int = -1, in_dim: int = -2, param: float = 0.0):  # noqa: N802
    """He normal: variance ``2 / sqrt(1 + param**2) / fan_in``."""
    return ScaledInitializer(out_dim, in_dim, 2.0 / np.sqrt(1 + param**2), "fan_in", "normal")


def KaimingUniformInitializer(out_dim: int = -1, in_dim: int = -2, param: float = 0.0):  # noqa: N802
    """He uniform: limit ``sqrt(3 * 2 / sqrt(1 + param**2) / fan_in)``."""
    return ScaledInitializer(out_dim, in_dim, 2.0 / np.sqrt(1 + param**2), "fan_in", "uniform")


def OrthogonalInitializer(stddev: float = 1.0) -> Initializer:  # noqa: N802
    """Orthogonal matrix (over the last two axes), times ``stddev``."""

    def init(shape, rng):
        shape = _check_shape(shape, "OrthogonalInitializer")
        return (jax.nn.initializers.orthogonal(scale=stddev)(rng, shape)).astype(jnp.float32)

    return init


def InitializerFromFile(path: str) -> Initializer:  # noqa: N802
    """Loads a ``.npy`` array (no pickles) and checks its shape; returns it as stored
    (as Trax: ``init`` then places it on the device, float32 unless JAX's x64 is on)."""

    def init(shape, rng):
        del rng
        value = np.load(path, allow_pickle=False)
        if tuple(value.shape) != tuple(shape):
            raise ValueError(
                f"InitializerFromFile: {path} holds shape {value.shape}; expected {tuple(shape)}."
            )
        return value

    return init
