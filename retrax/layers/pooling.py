"""Pooling layers: ``MaxPool``, ``SumPool``, ``AvgPool`` (Trax's; weightless, 1 -> 1).

Each reduces windows over every axis between the first (batch) and the last
(channels): inputs have ``len(pool_size) + 2`` axes, ``(B, H, W, C)`` for a
2-D ``pool_size``. ``strides`` default to 1 on every window axis (not to
``pool_size``), as in Trax. ``padding='VALID'`` reduces only full windows;
``'SAME'`` pads the ends (the extra position goes at the end when the padding
is odd) so that padded values never win a max, add nothing to a sum and are
not counted in an average. A layer prints as ``MaxPool(2,2)``.

>>> import numpy as np
>>> from retrax import layers as tl
>>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
>>> tl.MaxPool(pool_size=(2, 2), strides=(2, 2))(x)[..., 0].tolist()
[[[5.0, 7.0], [13.0, 15.0]]]
>>> tl.AvgPool(pool_size=(2, 2), strides=(2, 2))(x)[..., 0].tolist()
[[[2.5, 4.5], [10.5, 12.5]]]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.layers.base import Fn, Layer

__all__ = ["MaxPool", "SumPool", "AvgPool"]


def _window(kind: str, pool_size: Any, strides: Any, padding: Any
            ) -> tuple[str, tuple[int, ...], tuple[int, ...], str]:
    """The checked ``(name, pool_size, strides, padding)`` of a pooling layer."""

    def ints(arg: str, value: Any) -> tuple[int, ...]:
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            raise TypeError(f"{kind}: {arg} must be a tuple with one int per window axis, e.g. "
                            f"({int(value)}, {int(value)}); got {value!r}.")
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(f"{kind}: {arg} must be a tuple of positive ints; got "
                            f"{value!r}.") from None
        if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0
                            for v in items):
            raise ValueError(f"{kind}: {arg} must be a non-empty tuple of positive ints; got "
                             f"{value!r}.")
        return tuple(int(v) for v in items)

    size = ints("pool_size", pool_size)
    steps = (1,) * len(size) if strides is None else ints("strides", strides)
    if len(steps) != len(size):
        raise ValueError(f"{kind}: strides {tuple(steps)} need one entry per axis of pool_size "
                         f"{size}.")
    if not isinstance(padding, str) or padding.upper() not in ("VALID", "SAME"):
        raise ValueError(f"{kind}: padding must be 'VALID' or 'SAME'; got {padding!r}.")
    return f"{kind}{size}".replace(" ", ""), size, steps, padding.upper()


def _checked(name: str, x: Any, size: tuple[int, ...], padding: str) -> Any:
    x = jnp.asarray(x)
    n = len(size)
    if x.ndim != n + 2:
        raise ValueError(
            f"{name} pools the {n} axes between the batch axis and the channel axis, so it "
            f"expects inputs with {n + 2} axes (batch, {n} window axes, channels); got shape "
            f"{tuple(x.shape)}. Give pool_size one entry per axis to pool, and keep a batch "
            f"and a channel axis (x[None], x[..., None]).")
    spatial = x.shape[1:-1]
    if padding == "VALID" and any(s < k for s, k in zip(spatial, size)):
        warnings.warn(
            f"{name}: the window {size} is larger than the input's window axes "
            f"{tuple(spatial)} (input shape {tuple(x.shape)}) with padding='VALID', so the "
            f"output is empty (as in Trax). Use a smaller pool_size, padding='SAME' or larger "
            f"inputs.", stacklevel=2)
    return x


def _reduce(x: Any, init: Any, op: Callable, size: tuple[int, ...], strides: tuple[int, ...],
            padding: str) -> Any:
    # ``init`` is a NumPy constant: JAX then sees a max/add pool (differentiable), not a
    # generic reduction.
    return lax.reduce_window(x, init, op, (1, *size, 1), (1, *strides, 1), padding)


def MaxPool(pool_size: Sequence[int] = (2, 2), strides: Sequence[int] | None = None,  # noqa: N802
            padding: str = "VALID") -> Layer:
    """The maximum of each window; shape ``(B, *window_axes', C)``, dtype kept.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.MaxPool(pool_size=(3,), strides=(3,), padding='SAME')(
    ...     np.array([[[0], [1], [2], [3], [4]]])).tolist()
    [[[2], [4]]]
    """
    name, size, steps, pad = _window("MaxPool", pool_size, strides, padding)

    def max_pool(x):
        x = _checked(name, x, size, pad)
        if jnp.issubdtype(x.dtype, jnp.floating):
            low = -np.inf
        elif jnp.issubdtype(x.dtype, jnp.integer):
            low = jnp.iinfo(x.dtype).min
        else:
            raise TypeError(f"{name} pools numbers; got dtype {x.dtype}.")
        return _reduce(x, np.array(low, x.dtype), lax.max, size, steps, pad)

    return Fn(name, max_pool)


def SumPool(pool_size: Sequence[int] = (2, 2), strides: Sequence[int] | None = None,  # noqa: N802
            padding: str = "VALID") -> Layer:
    """The sum of each window; padding adds nothing; dtype kept.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.SumPool(pool_size=(3,), strides=(3,), padding='SAME')(
    ...     np.array([[[0], [1], [2], [3], [4]]])).tolist()
    [[[3], [7]]]
    """
    name, size, steps, pad = _window("SumPool", pool_size, strides, padding)

    def sum_pool(x):
        x = _checked(name, x, size, pad)
        return _reduce(x, np.array(0, x.dtype), lax.add, size, steps, pad)

    return Fn(name, sum_pool)


def AvgPool(pool_size: Sequence[int] = (2, 2), strides: Sequence[int] | None = None,  # noqa: N802
            padding: str = "VALID") -> Layer:
    """The mean of each window; with 'SAME', padded positions are not counted.

    A window at an edge that ``'SAME'`` pads is divided by the number of real
    positions it covers (PyTorch's ``count_include_pad=False``), as in Trax.
    Integer inputs give float32 means.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.AvgPool(pool_size=(3,), strides=(3,), padding='SAME')(
    ...     np.array([[[0.0], [1.0], [2.0], [3.0], [4.0]]])).tolist()
    [[[1.0], [3.5]]]
    """
    name, size, steps, pad = _window("AvgPool", pool_size, strides, padding)

    def avg_pool(x):
        x = _checked(name, x, size, pad)
        sums = _reduce(x, np.array(0, x.dtype), lax.add, size, steps, pad)
        counts = lax.reduce_window(jnp.ones(x.shape[1:-1], jnp.float32), 0.0, lax.add,
                                   size, steps, pad)
        out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
        return (sums / counts[..., None]).astype(out_dtype)

    return Fn(name, avg_pool)
