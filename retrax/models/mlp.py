"""The multilayer perceptron: Dense layers with an activation between them (Trax's ``MLP``).

>>> import numpy as np
>>> from retrax import models, shapes
>>> mlp = models.MLP(layer_widths=(8, 3))
>>> print(mlp)
Serial[
  Flatten_keep1
  Dense_8
  Serial[
    Relu
  ]
  Dense_3
]
>>> _ = mlp.init(shapes.ShapeDtype((2, 4, 5)))
>>> mlp(np.ones((2, 4, 5), np.float32)).shape
(2, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from retrax import layers as tl
from retrax.layers.core import check_mode
from retrax.models.record import records_config

__all__ = ["MLP"]


@records_config
def MLP(  # noqa: N802
    layer_widths: Sequence[int] = (128, 64),
    activation_fn: Callable[[], tl.Layer] = tl.Relu,
    out_activation: bool = False,
    flatten: bool = True,
    mode: str = "train",
) -> tl.Layer:
    """A fully connected feed-forward network: ``(B, ...) -> (B, layer_widths[-1])``.

    ``Serial(Flatten, Dense(w1), act, Dense(w2), act, ..., Dense(wn)[, act])``
    in Trax's layer order, so Trax checkpoints load one to one (flat weights:
    kernel and bias of each Dense, ``2 * len(layer_widths)`` arrays).

    Args:
      layer_widths: the width of each Dense layer, in order.
      activation_fn: layer constructor called with no arguments (``tl.Relu``).
      out_activation: also apply the activation after the last Dense.
      flatten: first flatten each example to a vector (``tl.Flatten()``);
        without it the Dense layers act on the last axis.
      mode: accepted for a uniform model signature; the MLP is the same in
        every mode.
    """
    check_mode("MLP", mode)
    widths = tuple(layer_widths)
    if not widths or any(isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w <= 0
                         for w in widths):
        raise ValueError(f"MLP: layer_widths must be a non-empty tuple of positive ints; got "
                         f"{layer_widths!r}.")
    if not callable(activation_fn):
        raise TypeError(f"MLP: activation_fn must be a layer constructor such as tl.Relu; got "
                        f"{activation_fn!r}.")
    layers: list[tl.Layer] = []
    for width in widths:
        layers += [tl.Dense(int(width)), activation_fn()]
    if not out_activation:
        layers.pop()
    return tl.Serial([tl.Flatten()] if flatten else [], layers)
