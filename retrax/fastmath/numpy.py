"""``trax.fastmath.numpy``: the NumPy API of the selected backend.

``import retrax.fastmath.numpy as np`` (or ``from retrax.fastmath import numpy
as jnp``) gives ``jax.numpy``'s functions and constants, or NumPy's while
``fastmath.use_backend('numpy')`` is active: every attribute is looked up in
the current backend when it is read.

>>> import retrax.fastmath.numpy as np
>>> float(np.sum(np.arange(4)))
6.0
>>> np.float32 is __import__('jax').numpy.float32
True
"""

from __future__ import annotations

from typing import Any

from retrax.fastmath.backend import backend


def __getattr__(name: str) -> Any:
    module = backend()["np"]
    try:
        return getattr(module, name)
    except AttributeError:
        raise AttributeError(f"{module.__name__} (the fastmath.numpy of the "
                             f"{backend()['name']!r} backend) has no attribute {name!r}.") from None


def __dir__() -> list[str]:
    return sorted(set(dir(backend()["np"])) | {"__doc__", "__name__"})
