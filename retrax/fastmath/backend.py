"""Which array library ``trax.fastmath`` hands out: Trax's backend switch.

Two backends exist: ``'jax'`` (the default; every retrax layer runs on it)
and ``'numpy'`` (plain NumPy for the user's own ``fastmath.numpy`` calls,
e.g. data preprocessing written for Trax's NumPy backend). Trax's third one,
``'tensorflow-numpy'``, needs TensorFlow and is refused with an error.
Layers always compute with JAX; running one while the NumPy backend is
selected raises an error that says so, so the switch is never a silent no-op.

>>> from retrax import fastmath
>>> fastmath.backend_name()
'jax'
>>> with fastmath.use_backend('numpy'):
...     type(fastmath.numpy.ones(2)).__module__, fastmath.backend_name()
('numpy', 'numpy')
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as onp

from retrax.fastmath.gin_configurables import configurable

__all__ = ["Backend", "backend", "backend_name", "is_backend", "set_backend", "use_backend",
           "check_jax_backend", "backend_dicts"]


class Backend(enum.Enum):
    """Trax's backend names."""

    JAX = "jax"
    TFNP = "tensorflow-numpy"
    NUMPY = "numpy"


_JAX = {"name": "jax", "np": jnp, "global_device_count": jax.device_count,
        "local_device_count": jax.local_device_count, "jit": jax.jit}
_NUMPY = {"name": "numpy", "np": onp, "global_device_count": lambda: 1,
          "local_device_count": lambda: 1, "jit": lambda f, *args, **kwargs: f}
_BACKENDS = {Backend.JAX: _JAX, Backend.NUMPY: _NUMPY}


class _NeedsTensorFlow(dict):
    """The 'tensorflow-numpy' entry: its name; any other key says TensorFlow is needed."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"the 'tensorflow-numpy' backend has no {key!r} in retrax: it needs "
                       f"TensorFlow, which retrax does not use. Use 'jax' or 'numpy'.")


def backend_dicts() -> dict[Backend, dict[str, Any]]:
    """Every backend's dict (``'name'``, ``'np'``, ...) by :class:`Backend`, as Trax's
    ``fastmath.ops._backend_dict``; ``Backend.TFNP``'s holds only its name."""
    return {**_BACKENDS, Backend.TFNP: _NeedsTensorFlow(name=Backend.TFNP.value)}

_default: Backend | None = None   # set_backend
_override: list[Backend] = []     # use_backend blocks, innermost last


def _as_backend(name: Any, where: str) -> Backend:
    value = name.value if isinstance(name, Backend) else name
    try:
        chosen = Backend(value)
    except ValueError:
        raise ValueError(f"{where}: no backend named {value!r}; choose one of "
                         f"{[b.value for b in Backend]}.") from None
    if chosen is Backend.TFNP:
        raise ValueError(f"{where}: the 'tensorflow-numpy' backend needs TensorFlow, which "
                         f"retrax does not use. Use 'jax' (the default) or 'numpy'.")
    return chosen


@configurable("backend", module="retrax.fastmath")
def backend(name: Any = "jax") -> dict[str, Any]:
    """The backend in use, as Trax's dict: ``backend()['np']`` is its NumPy module.

    ``use_backend`` wins over ``set_backend``, which wins over ``name``. With
    ``gin-config`` installed this is gin's configurable ``backend``, as in
    Trax: ``gin.parse_config("backend.name = 'numpy'")`` changes the default.
    """
    if _override:
        return _BACKENDS[_override[-1]]
    if _default is not None:
        return _BACKENDS[_default]
    return _BACKENDS[_as_backend(name, "fastmath.backend")]


def backend_name() -> str:
    """``'jax'`` or ``'numpy'``."""
    return backend()["name"]


def is_backend(backend_: Backend) -> bool:
    return backend_name() == backend_.value


def set_backend(name: Any) -> None:
    """Makes ``name`` the default backend; ``None`` (or ``''``) restores JAX."""
    global _default
    _default = _as_backend(name, "fastmath.set_backend") if name else None


@contextlib.contextmanager
def use_backend(name: Any) -> Iterator[None]:
    """Uses backend ``name`` inside the ``with`` block."""
    _override.append(_as_backend(name, "fastmath.use_backend"))
    try:
        yield
    finally:
        _override.pop()


def check_jax_backend(what: str) -> None:
    """Raises unless the JAX backend is selected: retrax layers compute only with JAX."""
    if backend_name() != "jax":
        raise RuntimeError(
            f"{what}: retrax layers compute with JAX only, but the {backend_name()!r} "
            f"backend is selected (fastmath.use_backend / set_backend). That backend applies "
            f"to your own fastmath.numpy calls; run layers outside the use_backend block or "
            f"after fastmath.set_backend(None).")
