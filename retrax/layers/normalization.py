"""Normalization layers.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> ln = tl.LayerNorm()
>>> _ = ln.init(shapes.ShapeDtype((1, 2)))
>>> np.round(ln(np.array([[1.0, 3.0]])), 4).tolist()
[[-1.0, 1.0]]
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from retrax.layers.base import Layer

__all__ = ["LayerNorm", "RMSNorm"]


def _feature_check(layer: Layer, x, d: int) -> None:
    if x.shape[-1] != d:
        raise ValueError(
            f"{layer.name} was initialized for inputs whose last axis is {d} but got shape "
            f"{tuple(x.shape)}. Feed width-{d} inputs or re-run init with the new signature."
        )


class LayerNorm(Layer):
    """Layer normalization over the last axis (Trax: weights ``(scale, bias)``).

    ``y = (x - mean) / sqrt(var + epsilon) * scale + bias`` with the biased
    variance. With ``center=False`` there is no mean subtraction and no bias
    (the bias weight still exists, as in Trax, so checkpoints map one to one).
    1 -> 1; weights take the input's float dtype.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> ln = tl.LayerNorm()
    >>> scale, bias = ln.init(shapes.ShapeDtype((1, 2)))[0]
    >>> scale.tolist(), bias.tolist()
    ([1.0, 1.0], [0.0, 0.0])
    >>> ln(np.array([[2.0, 4.0]])).tolist()
    [[-0.99999..., 0.99999...]]
    """

    def __init__(self, center: bool = True, epsilon: float = 1e-6):
        super().__init__()
        if epsilon <= 0:
            raise ValueError(f"LayerNorm: epsilon must be > 0; got {epsilon}.")
        self._center = center
        self._epsilon = epsilon

    def init_weights_and_state(self, input_signature):
        d = input_signature.shape[-1]
        dtype = np.dtype(input_signature.dtype)
        if not np.issubdtype(dtype, np.floating):
            dtype = np.dtype(np.float32)
        self.weights = (jnp.ones(d, dtype), jnp.zeros(d, dtype))

    def forward(self, x):
        scale, bias = self.weights
        _feature_check(self, x, scale.shape[0])
        if self._center:
            mean = jnp.mean(x, axis=-1, keepdims=True)
            centered = x - mean
        else:
            centered = x
        var = jnp.mean(centered * centered, axis=-1, keepdims=True)
        y = centered * (1.0 / jnp.sqrt(var + self._epsilon)) * scale
        return y + bias if self._center else y


class RMSNorm(Layer):
    """Root-mean-square normalization over the last axis; weight ``scale``.

    ``y = x / sqrt(mean(x**2) + epsilon) * scale``. 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> rms = tl.RMSNorm()
    >>> _ = rms.init(shapes.ShapeDtype((1, 2)))
    >>> rms(np.array([[3.0, 4.0]])).tolist()
    [[0.84852..., 1.13137...]]
    """

    def __init__(self, epsilon: float = 1e-6):
        super().__init__()
        if epsilon <= 0:
            raise ValueError(f"RMSNorm: epsilon must be > 0; got {epsilon}.")
        self._epsilon = epsilon

    def init_weights_and_state(self, input_signature):
        d = input_signature.shape[-1]
        self.weights = jnp.ones(d, jnp.float32)

    def forward(self, x):
        scale = self.weights
        _feature_check(self, x, scale.shape[0])
        ms = jnp.mean(x * x, axis=-1, keepdims=True)
        return x * (1.0 / jnp.sqrt(ms + self._epsilon)) * scale
