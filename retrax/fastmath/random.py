"""Explicit-key random numbers (Trax's ``fastmath.random``).

Keys are raw ``uint32[2]`` threefry keys, so a key made from a seed is a plain
NumPy array: it can be built anywhere, even while JAX is tracing, without
leaking tracers.

>>> from retrax.fastmath import random
>>> random.get_prng(3)
array([0, 3], dtype=uint32)

Functions that take ``rng=None`` for Trax compatibility (only
``tl.logsoftmax_sample`` today) draw a fresh key from a module-level
generator on every call, as Trax drew from NumPy's global state. ``seed(n)``
restarts that generator, so the draws after it repeat; it starts at seed 0.

>>> random.seed(5)
>>> a = random.next_key()
>>> random.seed(5)
>>> bool((random.next_key() == a).all())
True
"""

from __future__ import annotations

import threading
from typing import Any

import jax
import numpy as np

__all__ = ["get_prng", "seed", "next_key", "split", "fold_in", "uniform", "normal",
           "bernoulli", "randint", "hash_split", "hash_fold_in", "hash_bits", "hash_bernoulli", "key_data",
           "init_rng_split", "numpy_generator", "split_rng"]


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


class _GlobalKeys:
    """Fresh ``uint32[2]`` keys from a seedable NumPy generator (thread-safe)."""

    def __init__(self, seed: int) -> None:
        self._lock = threading.Lock()
        self.seed(seed)

    def seed(self, seed: int) -> None:
        with self._lock:
            self._generator = np.random.default_rng(seed)

    def next_key(self) -> np.ndarray:
        with self._lock:
            return self._generator.integers(0, 2**32, size=2, dtype=np.uint32)


_GLOBAL_KEYS = _GlobalKeys(0)


def seed(n: int) -> None:
    """Restarts the module-level generator that ``next_key`` draws from.

    After ``seed(n)`` the keys drawn (and so the samples of
    ``tl.logsoftmax_sample(x, temperature)`` without ``rng``) repeat exactly.
    The generator starts at seed 0 when retrax is imported.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(
            f"random.seed: the seed must be a non-negative int; got {n!r}. Pass e.g. "
            f"random.seed(0)."
        )
    _GLOBAL_KEYS.seed(int(n))


def next_key() -> np.ndarray:
    """A fresh PRNG key from the module-level generator (``seed`` makes it repeat).

    Each call returns a new key, so a loop that samples without passing an
    ``rng`` gets new randomness every step. Drawn while ``jax.jit`` traces, the
    key is fixed into the compiled program: pass keys as arguments there.
    """
    return _GLOBAL_KEYS.next_key()


split = jax.random.split
fold_in = jax.random.fold_in
uniform = jax.random.uniform
normal = jax.random.normal
bernoulli = jax.random.bernoulli
randint = jax.random.randint


# --------------------------------------------------------------------------
# Cheap counter-based bits for dropout masks and per-layer keys.
#
# Threefry (jax.random's default) is a strong generator, but each call site
# expands into a large XLA computation: a Transformer with a dozen dropouts and
# a key split in every combinator spends most of its *compile* time there, and
# a good share of a small model's step time. Dropout only needs well-mixed,
# reproducible bits, so the layers use a counter hash instead: element i of a
# mask is ``mix(mix(i ^ mix(k0)) + k1)`` with the 32-bit mixing function of
# Murmur3/“lowbias32”. Keys stay ordinary ``uint32[2]`` keys (or typed keys).
# --------------------------------------------------------------------------

_GOLDEN = 0x9E3779B9


def _mix32(x):
    import jax.numpy as jnp

    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def key_data(key):
    """The ``uint32`` words of a raw or typed PRNG key."""
    import jax.numpy as jnp

    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    key = jnp.asarray(key, jnp.uint32).reshape(-1)
    if key.shape[0] < 2:
        key = jnp.concatenate([jnp.zeros((2 - key.shape[0],), jnp.uint32), key])
    return key[-2:]


def hash_split(key, n: int):
    """``n`` keys ``(n, 2)`` derived from ``key`` with the counter hash."""
    import jax.numpy as jnp

    k = key_data(key)
    i = jax.lax.iota(jnp.uint32, n)
    a = _mix32(i * jnp.uint32(2) ^ _mix32(k[0] + jnp.uint32(_GOLDEN)) ^ k[1])
    b = _mix32(i * jnp.uint32(2) + jnp.uint32(1) ^ _mix32(k[1] + jnp.uint32(_GOLDEN)) ^ k[0])
    return jnp.stack([a, b], axis=1)


def hash_fold_in(key, data):
    """A key derived from ``key`` and an integer ``data`` (traced or not)."""
    import jax.numpy as jnp

    k = key_data(key)
    d = jnp.asarray(data).astype(jnp.uint32)
    return jnp.stack([_mix32(k[0] ^ _mix32(d + jnp.uint32(_GOLDEN))), _mix32(k[1] + d)])


def hash_bits(key, shape):
    """Well-mixed ``uint32`` bits of ``shape`` from ``key``."""
    import jax.numpy as jnp

    k = key_data(key)
    n = int(np.prod(shape)) if len(shape) else 1
    h = _mix32(jax.lax.iota(jnp.uint32, n) ^ _mix32(k[0] + jnp.uint32(_GOLDEN)))
    h = _mix32(h + k[1])
    return h.reshape(shape)


def hash_bernoulli(key, p, shape):
    """Booleans that are True with probability ``p`` (``p`` may be traced)."""
    import jax.numpy as jnp

    threshold = jnp.floor(jnp.clip(jnp.asarray(p, jnp.float32), 0.0, 1.0) * 4294967040.0)
    return hash_bits(key, tuple(shape)) < threshold.astype(jnp.uint32)


# --------------------------------------------------------------------------
# Keys for layers: what ``init`` and the combinators hand their sublayers.
# --------------------------------------------------------------------------


def _raw_words(rng: Any) -> np.ndarray:
    """The ``uint32`` words of a concrete raw or typed key, as a NumPy array."""
    if jax.dtypes.issubdtype(getattr(rng, "dtype", np.uint32), jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    return np.asarray(rng, np.uint32)


def init_rng_split(rng: Any, n: int) -> list[Any]:
    """``n`` keys from ``rng`` for initialization.

    A concrete key is split with NumPy (``SeedSequence``), which costs
    microseconds instead of one XLA compilation per distinct ``n``; a traced
    key (init under ``jit``/``eval_shape``) is split with ``jax.random``.
    Either way the same key gives the same keys.
    """
    if rng is None:
        return [None] * n
    if isinstance(rng, jax.core.Tracer):
        return list(jax.random.split(rng, n)) if n > 1 else [rng] * n
    seq = np.random.SeedSequence([int(v) for v in _raw_words(rng).ravel()])
    return list(seq.generate_state(2 * n, np.uint32).reshape(n, 2))


def numpy_generator(rng: Any) -> np.random.Generator | None:
    """A NumPy generator seeded from a concrete key, or None for a traced key."""
    if isinstance(rng, jax.core.Tracer):
        return None
    return np.random.default_rng([int(v) for v in _raw_words(rng).ravel()])


def split_rng(rng: Any, n: int) -> list[Any]:
    """The keys a combinator hands its ``n`` sublayers in a forward pass.

    All get the same key: each *leaf* derives its own from it and its index in
    the pass (``retrax.layers.pass_context.DerivedKey``), so no key is split
    per combinator.
    """
    return [rng] * n
