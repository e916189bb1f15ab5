"""``trax.fastmath.ops``: the backend-independent math functions, at Trax's module path.

Trax defines ``fastmath``'s functions in ``trax/fastmath/ops.py`` and some
programs (and Trax's tests) import that module; ``retrax.fastmath.ops`` is
the same module here: ``retrax.fastmath`` re-exports every name below.
``_backend_dict`` maps each :class:`Backend` to its dict, as in Trax.

>>> from retrax.fastmath import ops
>>> ops.backend_name(), sorted(b.value for b in ops._backend_dict)
('jax', ['jax', 'numpy', 'tensorflow-numpy'])
>>> float(ops.logsumexp(ops.numpy.zeros(2)))  # log 2
0.6931471...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax

from retrax.fastmath import numpy  # noqa: F401  (Trax's ops.numpy)
from retrax.fastmath.backend import (  # noqa: F401
    Backend,
    backend,
    backend_dicts,
    backend_name,
    is_backend,
    set_backend,
    use_backend,
)
from retrax.fastmath.nested import (  # noqa: F401
    nested_map,
    nested_map_multiarg,
    nested_stack,
    nested_zip,
)
from retrax.fastmath.trees import tree_flatten, tree_leaves, tree_unflatten  # noqa: F401

__all__ = [
    "numpy", "Backend", "backend", "backend_name", "set_backend", "use_backend",
    "is_backend", "jit", "disable_jit", "grad", "value_and_grad", "vjp", "vmap", "pmap", "psum",
    "remat", "custom_vjp", "custom_grad", "cond", "scan", "map", "fori_loop", "stop_gradient",
    "lt", "logsumexp", "expit", "sigmoid", "erf", "top_k", "sort_key_val", "dynamic_slice",
    "dynamic_slice_in_dim", "dynamic_update_slice", "dynamic_update_slice_in_dim",
    "index_update", "index_add", "index_min", "index_max", "device_count",
    "local_device_count", "global_device_count", "tree_map", "tree_flatten", "tree_leaves",
    "tree_unflatten", "nested_map", "nested_map_multiarg", "nested_zip", "nested_stack",
]


_backend_dict = backend_dicts()  # Trax's name: {Backend: that backend's dict}

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
disable_jit = jax.disable_jit
vjp = jax.vjp
psum = lax.psum
remat = jax.checkpoint
map = lax.map  # noqa: A001  (Trax's name)
lt = lax.lt
sigmoid = jax.nn.sigmoid
dynamic_slice = lax.dynamic_slice
dynamic_slice_in_dim = lax.dynamic_slice_in_dim
dynamic_update_slice = lax.dynamic_update_slice
dynamic_update_slice_in_dim = lax.dynamic_update_slice_in_dim


def local_device_count() -> int:
    """Devices on this host (1 under the NumPy backend)."""
    return backend()["local_device_count"]()


def global_device_count() -> int:
    """Devices on all hosts (1 under the NumPy backend)."""
    return backend()["global_device_count"]()


def index_update(x: Any, idx: Any, y: Any) -> Any:
    """``x`` with ``x[idx] = y`` (a new array: ``x.at[idx].set(y)``)."""
    return jax.numpy.asarray(x).at[idx].set(y)


def index_add(x: Any, idx: Any, y: Any) -> Any:
    """``x`` with ``y`` added at ``idx`` (``x.at[idx].add(y)``)."""
    return jax.numpy.asarray(x).at[idx].add(y)


def index_min(x: Any, idx: Any, y: Any) -> Any:
    """``x`` with ``min(x[idx], y)`` at ``idx``."""
    return jax.numpy.asarray(x).at[idx].min(y)


def index_max(x: Any, idx: Any, y: Any) -> Any:
    """``x`` with ``max(x[idx], y)`` at ``idx``."""
    return jax.numpy.asarray(x).at[idx].max(y)


def custom_vjp(f: Callable, f_fwd: Callable, f_bwd: Callable,
               nondiff_argnums: tuple[int, ...] = ()) -> Callable:
    """``f`` whose gradient is given by ``f_fwd`` / ``f_bwd`` (``jax.custom_vjp``, Trax's form).

    >>> import jax
    >>> double_grad = custom_vjp(lambda x: x, lambda x: (x, None), lambda _, g: (2 * g,))
    >>> float(jax.grad(double_grad)(1.0))
    2.0
    """
    wrapped = jax.custom_vjp(lambda *args: f(*args), nondiff_argnums=tuple(nondiff_argnums))
    wrapped.defvjp(f_fwd, f_bwd)
    return wrapped


def custom_grad(f_vjp: Callable, f_original: Callable) -> Callable:
    """``f_original`` whose gradient comes from ``f_vjp(*args) -> (out, vjp_fn)``.

    ``vjp_fn(g)`` returns one gradient per argument. The forward pass runs
    ``f_original``; the backward pass calls ``f_vjp`` again on the saved
    arguments (JAX cannot keep a function between the two).

    >>> import jax
    >>> f = custom_grad(lambda x: (x * x, lambda g: (3 * g,)), lambda x: x * x)
    >>> float(f(2.0)), float(jax.grad(f)(2.0))
    (4.0, 3.0)
    """
    wrapped = jax.custom_vjp(lambda *args: f_original(*args))
    wrapped.defvjp(lambda *args: (f_original(*args), args),
                   lambda args, g: tuple(f_vjp(*args)[1](g)))
    return wrapped


def sort_key_val(keys: Any, values: Any, dimension: int = -1) -> tuple[Any, Any]:
    """Sorts ``keys`` along ``dimension`` and permutes ``values`` the same way."""
    return lax.sort_key_val(keys, values, dimension=dimension)
