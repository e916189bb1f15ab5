"""Layers that report on the values passing through, unchanged: PrintShape, SummaryScalar.

``PrintShape`` prints the shapes and dtypes of its inputs (when the model is
traced, so once per compilation under ``jit``, and during ``init``).
``SummaryScalar`` keeps an aggregate of its input (the mean by default) in
its state under ``'summary_<name>'``, where the model's state can be read.

>>> import numpy as np
>>> from retrax import layers as tl
>>> tl.PrintShape(msg='after embedding')(np.zeros((2, 3), np.float32)).shape
PrintShape: after embedding: [(2, 3)[float32]]
(2, 3)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from retrax.layers.base import Layer, PureLayer

__all__ = ["PrintShape", "SummaryScalar"]

_LOG = logging.getLogger(__name__)


def PrintShape(n_in: int = 1, msg: str = "") -> Layer:  # noqa: N802
    """Prints the shapes and dtypes of ``n_in`` inputs and passes them on; n_in -> n_in.

    The line reads ``PrintShape: <msg>: [<shape>[<dtype>], ...]`` (also logged
    at INFO level). Shapes are known when the model is traced, so under
    ``jit`` it prints when compiling, not on every step.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> a, b = tl.PrintShape(n_in=2)((np.zeros(3, np.int32), np.ones((1, 2), np.float32)))
    PrintShape: : [(3,)[int32], (1, 2)[float32]]
    """
    if isinstance(n_in, bool) or not isinstance(n_in, (int, np.integer)) or n_in < 1:
        raise ValueError(f"PrintShape: n_in must be a positive int; got {n_in!r}.")
    n_in = int(n_in)

    def describe(x: Any) -> str:
        return f"{tuple(x.shape)}[{np.dtype(x.dtype).name}]"

    def print_shape(xs: Any) -> Any:
        items = list(xs) if n_in > 1 else [xs]
        info = f"PrintShape: {msg}: [{', '.join(describe(x) for x in items)}]"
        print(info)
        _LOG.info(info)
        return xs

    return PureLayer(print_shape, n_in=n_in, n_out=n_in, name=f"PrintShape_{n_in}")


class SummaryScalar(Layer):
    """Passes its input on and keeps ``aggregation_fun(input)`` in its state; 1 -> 1.

    The state is ``{'summary_<name>': value}`` (Trax's layout; ``0.0`` after
    ``init``), updated on every call. The layer prints as ``summary_<name>``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> layer = tl.SummaryScalar('act')
    >>> layer(np.array([[3.0, 5.0], [2.0, 6.0]])).tolist()
    [[3.0, 5.0], [2.0, 6.0]]
    >>> layer.state['summary_act'].item()
    4.0
    """

    def __init__(self, name: str, aggregation_fun: Callable = jnp.mean):
        if not isinstance(name, str) or not name:
            raise ValueError(f"SummaryScalar: name must be a non-empty str; got {name!r}.")
        if not callable(aggregation_fun):
            raise ValueError(
                f"SummaryScalar: aggregation_fun must be a function of an array (e.g. "
                f"jnp.mean); got {aggregation_fun!r}."
            )
        super().__init__(n_in=1, n_out=1, name=f"summary_{name}")
        self._key = f"summary_{name}"
        self._aggregation_fun = aggregation_fun

    def init_weights_and_state(self, input_signature):
        del input_signature  # The summary starts at 0 whatever the input.
        self.state = {self._key: jnp.array(0.0, jnp.float32)}

    def forward(self, x):
        value = jnp.asarray(self._aggregation_fun(x))
        if value.shape != ():
            raise ValueError(
                f"{self.name}: aggregation_fun must reduce its input to a scalar; it returned "
                f"shape {tuple(value.shape)} for an input of shape {tuple(jnp.shape(x))}."
            )
        self.state = {self._key: value.astype(jnp.float32)}
        return x
