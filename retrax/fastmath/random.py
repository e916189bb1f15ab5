"""Explicit-key random numbers (Trax's ``fastmath.random``).

Keys are raw ``uint32[2]`` threefry keys, so a key made from a seed is a plain
NumPy array: it can be built anywhere, even while JAX is tracing, without
leaking tracers.

>>> from retrax.fastmath import random
>>> random.get_prng(3)
array([0, 3], dtype=uint32)
"""

from __future__ import annotations

import jax
import numpy as np

__all__ = ["get_prng", "split", "fold_in", "uniform", "normal", "bernoulli", "randint"]


def get_prng(seed: int) -> np.ndarray:
    """Returns the PRNG key for an integer seed (same values as ``jax.random.PRNGKey``).

    As in JAX, without ``jax_enable_x64`` only the low 32 bits of the seed are
    used (the high word of the key is 0); negative seeds wrap around.
    """
    seed = int(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"get_prng: seed must be in [-2**63, 2**64); got {seed}.")
    if jax.config.jax_enable_x64:
        seed %= 2**64
        return np.array([seed >> 32, seed & 0xFFFFFFFF], dtype=np.uint32)
    return np.array([0, seed % 2**32], dtype=np.uint32)


split = jax.random.split
fold_in = jax.random.fold_in
uniform = jax.random.uniform
normal = jax.random.normal
bernoulli = jax.random.bernoulli
randint = jax.random.randint
