"""Math backend aliases, as Trax's ``trax.fastmath`` (JAX only).

Trax code does ``from trax.fastmath import numpy as jnp`` and calls
``fastmath.random.get_prng(seed)``; both work here. There is one backend, JAX;
``use_backend`` is accepted for compatibility and changes nothing.

>>> from retrax import fastmath
>>> from retrax.fastmath import numpy as jnp
>>> float(fastmath.logsumexp(jnp.array([0.0, 0.0])))  # log 2
0.6931471...
"""

from __future__ import annotations

import contextlib
import enum
from typing import Any

import jax
import jax.numpy as numpy  # noqa: F401  (re-exported as fastmath.numpy)
from jax import lax

from retrax.fastmath import random  # noqa: F401
from retrax.fastmath.trees import tree_flatten, tree_leaves, tree_unflatten  # noqa: F401

__all__ = [
    "numpy",
    "random",
    "Backend",
    "backend_name",
    "use_backend",
    "is_backend",
    "jit",
    "grad",
    "value_and_grad",
    "vmap",
    "pmap",
    "cond",
    "scan",
    "fori_loop",
    "stop_gradient",
    "logsumexp",
    "expit",
    "erf",
    "top_k",
    "sort_key_val",
    "device_count",
    "local_device_count",
    "tree_map",
    "tree_flatten",
    "tree_leaves",
    "tree_unflatten",
]


class Backend(enum.Enum):
    """Trax's backend names; only ``JAX`` is implemented."""

    JAX = "jax"
    TFNP = "tensorflow-numpy"
    NUMPY = "numpy"


def backend_name() -> str:
    return "jax"


def is_backend(backend: Backend) -> bool:
    return backend == Backend.JAX


@contextlib.contextmanager
def use_backend(name: Any):
    """Context manager accepted for Trax compatibility; only JAX is supported."""
    value = name.value if isinstance(name, Backend) else str(name)
    if value not in ("jax", "numpy"):
        raise ValueError(
            f"retrax.fastmath supports only the JAX backend; got {value!r}. "
            "Remove the use_backend call or pass Backend.JAX."
        )
    yield


jit = jax.jit
grad = jax.grad
value_and_grad = jax.value_and_grad
vmap = jax.vmap
pmap = jax.pmap
cond = lax.cond
scan = lax.scan
fori_loop = lax.fori_loop
stop_gradient = lax.stop_gradient
logsumexp = jax.nn.logsumexp
expit = jax.nn.sigmoid
erf = jax.scipy.special.erf
top_k = lax.top_k
tree_map = jax.tree_util.tree_map
device_count = jax.device_count
local_device_count = jax.local_device_count


def sort_key_val(keys: Any, values: Any, dimension: int = -1) -> tuple[Any, Any]:
    """Sorts ``keys`` along ``dimension`` and permutes ``values`` the same way."""
    return lax.sort_key_val(keys, values, dimension=dimension)
