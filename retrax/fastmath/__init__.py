"""Math backend aliases, as Trax's ``trax.fastmath``.

Trax code does ``from trax.fastmath import numpy as jnp`` (or ``import
trax.fastmath.numpy as np``), calls ``fastmath.random.get_prng(seed)``,
``fastmath.nested_map``, ``fastmath.index_update`` and friends; all work here.
JAX is the backend layers run on; ``use_backend('numpy')`` switches what
``fastmath.numpy`` gives the user's own code (see :mod:`retrax.fastmath.backend`).
The functions live in :mod:`retrax.fastmath.ops` (Trax's module path); with
``gin-config`` installed, Trax's configurables are registered (see
:mod:`retrax.fastmath.gin_configurables`).

>>> from retrax import fastmath
>>> from retrax.fastmath import numpy as jnp
>>> float(fastmath.logsumexp(jnp.array([0.0, 0.0])))  # log 2
0.6931471...
>>> fastmath.index_add(jnp.zeros(3), 1, 5.0).tolist()
[0.0, 5.0, 0.0]
"""

from __future__ import annotations

from retrax.fastmath import gin_configurables, numpy, ops, random  # noqa: F401
from retrax.fastmath.ops import (  # noqa: F401
    Backend,
    backend,
    backend_name,
    cond,
    custom_grad,
    custom_vjp,
    device_count,
    disable_jit,
    dynamic_slice,
    dynamic_slice_in_dim,
    dynamic_update_slice,
    dynamic_update_slice_in_dim,
    erf,
    expit,
    fori_loop,
    global_device_count,
    grad,
    index_add,
    index_max,
    index_min,
    index_update,
    is_backend,
    jit,
    local_device_count,
    logsumexp,
    lt,
    map,
    nested_map,
    nested_map_multiarg,
    nested_stack,
    nested_zip,
    pmap,
    psum,
    remat,
    scan,
    set_backend,
    sigmoid,
    sort_key_val,
    stop_gradient,
    top_k,
    tree_flatten,
    tree_leaves,
    tree_map,
    tree_unflatten,
    use_backend,
    value_and_grad,
    vjp,
    vmap,
)

__all__ = ["numpy", "random", "ops", *(n for n in ops.__all__ if n != "numpy")]
