"""Activation layers (1 -> 1, elementwise unless noted).

Each prints as ``Serial[\\n  Name\\n]`` as in Trax, where they are wrapped in
shape assertions.

>>> import numpy as np
>>> from retrax import layers as tl
>>> tl.Relu()(np.array([-1.0, 0.0, 2.0])).tolist()
[0.0, 0.0, 2.0]
>>> print(tl.Relu())
Serial[
  Relu
]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from retrax.layers import initializers as init
from retrax.layers.assert_shape import assert_shape
from retrax.layers.base import Fn, Layer

__all__ = [
    "Relu", "ParametricRelu", "LeakyRelu", "Elu", "Selu", "Gelu", "FastGelu", "Sigmoid",
    "Tanh", "HardSigmoid", "HardTanh", "Softplus", "Exp", "Log", "Swish", "Glu",
    "ThresholdedLinearUnit",
]


@assert_shape("...->...")
def Relu() -> Layer:  # noqa: N802
    """``max(x, 0)`` (gradient 0 at 0); 1 -> 1, any shape.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Relu()(np.array([-1.0, 0.0, 2.0])).tolist()
    [0.0, 0.0, 2.0]
    """
    return Fn("Relu", lambda x: jnp.where(x <= 0, jnp.zeros_like(x), x))


@assert_shape("...->...")
def ParametricRelu(a: float = 1.0) -> Layer:  # noqa: N802
    """``max(a * x, 0)``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.ParametricRelu(a=0.5)(np.array([-1.0, 2.0])).tolist()
    [0.0, 1.0]
    """
    return Fn("ParametricRelu", lambda x: jnp.maximum(a * x, jnp.zeros_like(x)))


@assert_shape("...->...")
def LeakyRelu(a: float = 0.01) -> Layer:  # noqa: N802
    """``x`` for ``x >= 0``, ``a * x`` otherwise; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.LeakyRelu(a=0.5)(np.array([-2.0, 3.0])).tolist()
    [-1.0, 3.0]
    """
    return Fn("LeakyRelu", lambda x: jnp.where(x >= 0, x, a * x))


@assert_shape("...->...")
def Elu(a: float = 1.0) -> Layer:  # noqa: N802
    """``x`` for positive ``x``, ``a * (exp(x) - 1)`` otherwise; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Elu()(np.array([-1.0, 2.0])).tolist()
    [-0.632120..., 2.0]
    """
    return Fn("Elu", lambda x: jnp.where(x > 0, x, a * jnp.expm1(jnp.minimum(x, 0.0))))


@assert_shape("...->...")
def Selu(alpha: float = 1.6732632423543772848170429916717,  # noqa: N802
         lmbda: float = 1.0507009873554804934193349852946) -> Layer:
    """Scaled ELU: ``lmbda * (x if x > 0 else alpha * (exp(x) - 1))``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Selu()(np.array([-1.0, 1.0])).tolist()
    [-1.11133..., 1.05070...]
    """
    return Fn("Selu", lambda x: lmbda * jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0))))


@assert_shape("...->...")
def Gelu() -> Layer:  # noqa: N802
    """Exact GELU, ``x * Phi(x)`` with the normal CDF (erf form); 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Gelu()(np.array([-1.0, 1.0])).tolist()
    [-0.158655..., 0.841344...]
    """
    return Fn("Gelu", lambda x: jax.nn.gelu(x, approximate=False))


@assert_shape("...->...")
def FastGelu() -> Layer:  # noqa: N802
    """GELU with the tanh approximation; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.FastGelu()(np.array([1.0])).tolist()
    [0.841192...]
    """
    return Fn("FastGelu", lambda x: jax.nn.gelu(x, approximate=True))


@assert_shape("...->...")
def Sigmoid() -> Layer:  # noqa: N802
    """``1 / (1 + exp(-x))``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Sigmoid()(np.array([0.0])).tolist()
    [0.5]
    """
    return Fn("Sigmoid", jax.nn.sigmoid)


@assert_shape("...->...")
def Tanh() -> Layer:  # noqa: N802
    """Hyperbolic tangent; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Tanh()(np.array([0.0, 1.0])).tolist()
    [0.0, 0.761594...]
    """
    return Fn("Tanh", jnp.tanh)


@assert_shape("...->...")
def HardSigmoid() -> Layer:  # noqa: N802
    """``clip(1 + x, 0, 1)`` (Trax's definition); 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.HardSigmoid()(np.array([-2.0, -0.5, 1.0])).tolist()
    [0.0, 0.5, 1.0]
    """
    return Fn("HardSigmoid", lambda x: jnp.maximum(0.0, jnp.minimum(1.0, 1.0 + x)))


@assert_shape("...->...")
def HardTanh() -> Layer:  # noqa: N802
    """``clip(x, -1, 1)``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.HardTanh()(np.array([-2.0, 0.5, 3.0])).tolist()
    [-1.0, 0.5, 1.0]
    """
    return Fn("HardTanh", lambda x: jnp.maximum(-1.0, jnp.minimum(1.0, x)))


@assert_shape("...->...")
def Softplus() -> Layer:  # noqa: N802
    """``log(1 + exp(x))``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Softplus()(np.array([0.0])).tolist()
    [0.693147...]
    """
    return Fn("Softplus", lambda x: jnp.logaddexp(x, 0.0))


@assert_shape("...->...")
def Exp() -> Layer:  # noqa: N802
    """Elementwise ``exp``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Exp()(np.array([0.0])).tolist()
    [1.0]
    """
    return Fn("Exp", jnp.exp)


@assert_shape("...->...")
def Log() -> Layer:  # noqa: N802
    """Elementwise natural ``log``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Log()(np.array([1.0])).tolist()
    [0.0]
    """
    return Fn("Log", jnp.log)


@assert_shape("...->...")
def Swish() -> Layer:  # noqa: N802
    """``x * sigmoid(x)``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Swish()(np.array([0.0, 2.0])).tolist()
    [0.0, 1.761594...]
    """
    return Fn("Swish", lambda x: x * jax.nn.sigmoid(x))


@assert_shape("...a->...b")
def Glu() -> Layer:  # noqa: N802
    """Splits the last axis in halves ``(a, b)`` and returns ``a * sigmoid(b)``.

    1 -> 1, ``(..., 2 * D) -> (..., D)``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Glu()(np.array([[4.0, 0.0]])).tolist()
    [[2.0]]
    """

    def glu(x):
        a, b = jnp.split(x, 2, axis=-1)
        return a * jax.nn.sigmoid(b)

    return Fn("Glu", glu)


class ThresholdedLinearUnit(Layer):
    """``max(x, w)`` with a learned scalar threshold ``w`` (initialized to 0); 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> tlu = tl.ThresholdedLinearUnit()
    >>> _ = tlu.init(shapes.ShapeDtype((2,)))
    >>> tlu(np.array([-1.0, 3.0])).tolist()
    [0.0, 3.0]
    """

    def init_weights_and_state(self, input_signature):
        del input_signature
        self.weights = init.RandomNormalInitializer(0.0)((), self.rng)

    def forward(self, inputs):
        return jnp.maximum(inputs, self.weights)
