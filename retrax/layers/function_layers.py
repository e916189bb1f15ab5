"""Weightless layers from functions: ``PureLayer`` and ``Fn`` (as ``tl.Fn``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from retrax.layers.layer import Layer

__all__ = ["PureLayer", "Fn"]


class PureLayer(Layer):
    """A weightless layer from a function of its inputs.

    ``forward_fn`` receives a bare array for ``n_in == 1``, otherwise a tuple.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> diff = tl.PureLayer(lambda xs: xs[0] - xs[1], n_in=2, name='Diff')
    >>> diff
    Diff_in2
    >>> diff((np.array(5.0), np.array(3.0))).item()
    2.0
    """

    def __init__(self, forward_fn: Callable[[Any], Any], n_in: int = 1, n_out: int = 1,
                 name: str = "PureLayer"):
        super().__init__(n_in=n_in, n_out=n_out, name=name)
        self._forward_fn = forward_fn

    def forward(self, inputs: Any) -> Any:
        if self._n_in != 1:
            if not isinstance(inputs, (tuple, list)):
                raise TypeError(f"{self.name_with_arity} expects a tuple of {self._n_in} inputs.")
            if len(inputs) != self._n_in:
                raise ValueError(
                    f"{self.name_with_arity} expects {self._n_in} inputs; got {len(inputs)}."
                )
        result = self._forward_fn(inputs)
        if isinstance(result, (tuple, list)) and len(result) == 0:
            return ()
        return result


def Fn(name: str, f: Callable[..., Any], n_out: int = 1) -> Layer:  # noqa: N802
    """A weightless layer computing ``f(*inputs)``; ``n_in`` is ``f``'s arity.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> diff = tl.Fn('Diff', lambda a, b: a - b)
    >>> diff.n_in, diff.n_out
    (2, 1)
    >>> diff((np.array(5.0), np.array(3.0))).item()
    2.0
    """
    spec = inspect.getfullargspec(f)
    if spec.defaults:
        raise ValueError(f"Fn {name!r}: function has default arguments (not allowed).")
    if spec.varkw:
        raise ValueError(f"Fn {name!r}: function has keyword arguments (not allowed).")
    if spec.varargs:
        raise ValueError(f"Fn {name!r}: function has variable args (not allowed).")
    n_in = len(spec.args)
    if inspect.ismethod(f):
        n_in -= 1

    def forward(xs: Any) -> Any:
        if n_in == 1:
            return f(xs)
        return f(*xs)

    return PureLayer(forward, n_in=n_in, n_out=n_out, name=name or "Fn")
