"""Core layers: Dense, Embedding, Dropout, Weights and function layers.

Shapes: B batch, T time, D features, V vocabulary.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> dense = tl.Dense(3)
>>> w, s = dense.init(shapes.ShapeDtype((2, 4)))
>>> [a.shape for a in w]
[(4, 3), (3,)]
>>> dense(np.ones((2, 4))).shape
(2, 3)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.fastmath import random as fastmath_random
from retrax.fastmath.linalg import dense_dot
from retrax.layers import initializers as init
from retrax.layers.base import Fn, Layer, PureLayer, init_rng_split

__all__ = [
    "Dense", "Embedding", "Dropout", "Weights", "Flatten", "LogSoftmax", "LogSumExp",
    "Softmax", "ToFloat", "Mean", "Min", "Max", "Sum", "ThresholdToBinary", "ArgMax",
    "Negate", "StopGradient", "one_hot", "log_softmax", "logsoftmax_sample", "MODES",
]

MODES = ("train", "eval", "predict", "viz")


def check_mode(owner: str, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"{owner}: mode must be one of {MODES}; got {mode!r}.")
    return mode


def _check_positive(owner: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a positive int; got {value!r}.")
    return int(value)


class Dense(Layer):
    """Fully connected layer: ``x @ w + b`` over the last axis (1 -> 1).

    Weights are ``(w, b)`` with ``w`` of shape ``(D_in, n_units)``, or just
    ``w`` when ``use_bias=False`` (Trax's layout). ``(..., D_in) -> (..., n_units)``.
    The kernel starts Glorot-uniform, the bias Normal(0, 1e-6).

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> dense = tl.Dense(2)
    >>> _ = dense.init(shapes.ShapeDtype((1, 3)))
    >>> dense.weights = (np.ones((3, 2), np.float32), np.array([0.0, 1.0], np.float32))
    >>> dense(np.array([[1.0, 2.0, 3.0]])).tolist()
    [[6.0, 7.0]]
    """

    def __init__(
        self,
        n_units: int,
        kernel_initializer: Callable = init.GlorotUniformInitializer(),
        bias_initializer: Callable = init.RandomNormalInitializer(1e-6),
        use_bias: bool = True,
        use_bfloat16: bool = False,
    ):
        n_units = _check_positive("Dense", "n_units", n_units)
        super().__init__(name=f"Dense_{n_units}")
        self._n_units = n_units
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer
        self._use_bias = use_bias
        self._use_bfloat16 = use_bfloat16

    def init_weights_and_state(self, input_signature):
        shape = input_signature.shape
        if len(shape) < 1:  # A last axis of size 0 is allowed, as in Trax (a (0, n) kernel).
            raise ValueError(
                f"{self.name} needs inputs with a feature (last) axis; got shape {shape}."
            )
        rng_w, rng_b = init_rng_split(self.rng, 2)
        w = self._kernel_initializer((shape[-1], self._n_units), rng_w)
        if self._use_bfloat16:
            w = w.astype(jnp.bfloat16)
        if not self._use_bias:
            self.weights = w
            return
        b = self._bias_initializer((self._n_units,), rng_b)
        if self._use_bfloat16:
            b = b.astype(jnp.bfloat16)
        self.weights = (w, b)

    def forward(self, x):
        w, b = self.weights if self._use_bias else (self.weights, None)
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise ValueError(
                f"{self.name} expects inputs whose last axis is {w.shape[0]} (its weight "
                f"matrix is {tuple(w.shape)}), but got inputs of shape {tuple(x.shape)}. Feed "
                f"inputs of width {w.shape[0]}, or re-run init() with the new input signature."
            )
        y = dense_dot(x, w)
        return y if b is None else y + b


class Embedding(Layer):
    """Maps integer ids ``(B, T)`` to vectors ``(B, T, d_feature)``.

    Weight ``(vocab_size, d_feature)``; there is no ``sqrt(d)`` scaling. 1 -> 1.
    ``init`` ignores the input signature (``init(None)`` works).

    Ids must be in ``[0, vocab_size)``. Called eagerly on concrete ids, an id
    outside that range raises a ``ValueError`` (inside a ``LayerError``)
    naming the id, the layer and ``vocab_size``. Under ``jax.jit`` (or
    ``grad``/``vmap``) the ids are tracers and cannot be checked without a
    device-to-host copy per step, so none is made: the gather clamps, as in
    Trax, and an id below 0 reads row 0 while an id ``>= vocab_size`` reads the
    last row, silently. Check the data (the training ``Loop`` checks its
    batches) when it may hold such ids.

    >>> import numpy as np
    >>> import jax
    >>> from retrax import layers as tl
    >>> emb = tl.Embedding(3, 2)
    >>> _ = emb.init(None)
    >>> emb.weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> emb(np.array([[2, 0]])).tolist()
    [[[4.0, 5.0], [0.0, 1.0]]]
    >>> try:
    ...     emb(np.array([[2, 7]]))
    ... except ValueError as e:
    ...     print(str(e).splitlines()[-1].strip().split(" (vocab_size")[0])
    ValueError: Embedding_3_2 got token id 7, outside its vocabulary [0, 3)
    >>> jax.jit(emb)(np.array([[2, 7]])).tolist()  # traced: clamped, no error
    [[[4.0, 5.0], [4.0, 5.0]]]
    """

    def __init__(
        self,
        vocab_size: int,
        d_feature: int,
        use_bfloat16: bool = False,
        kernel_initializer: Callable = init.ScaledInitializer(
            out_dim=-1, in_dim=-2, scale=1.0, mode="fan_out", distribution="uniform"),
    ):
        vocab_size = _check_positive("Embedding", "vocab_size", vocab_size)
        d_feature = _check_positive("Embedding", "d_feature", d_feature)
        super().__init__(name=f"Embedding_{vocab_size}_{d_feature}")
        self._vocab_size = vocab_size
        self._d_feature = d_feature
        self._use_bfloat16 = use_bfloat16
        self._kernel_initializer = kernel_initializer

    @property
    def vocab_size(self) -> int:
        """The number of ids: valid ids are ``[0, vocab_size)``."""
        return self._vocab_size

    @property
    def d_feature(self) -> int:
        return self._d_feature

    def init_weights_and_state(self, input_signature):
        del input_signature  # Weights depend only on the constructor arguments.
        w = self._kernel_initializer((self._vocab_size, self._d_feature), self.rng)
        self.weights = w.astype(jnp.bfloat16) if self._use_bfloat16 else w

    def forward(self, x):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(
                f"{self.name} expects integer token ids; got dtype {x.dtype}. Cast the ids "
                f"with .astype(np.int32)."
            )
        if not isinstance(x, jax.core.Tracer):  # concrete (eager) ids: cheap to check
            self._check_ids(x)
        return jnp.take(self.weights, x, axis=0, mode="clip")

    def _check_ids(self, x: Any) -> None:
        ids = np.asarray(x)
        if ids.size == 0:
            return
        low, high = ids.min(), ids.max()
        if low >= 0 and high < self._vocab_size:
            return
        bad = low if low < 0 else high
        n_bad = int(np.count_nonzero((ids < 0) | (ids >= self._vocab_size)))
        raise ValueError(
            f"{self.name} got token id {int(bad)}, outside its vocabulary "
            f"[0, {self._vocab_size}) (vocab_size={self._vocab_size}); {n_bad} of the "
            f"{ids.size} ids it received are outside, ranging from {int(low)} to {int(high)}. "
            f"Map the ids into the vocabulary (check the tokenizer and vocab_size), or build "
            f"the model with a larger vocab_size."
        )


class Dropout(Layer):
    """Zeroes each element with probability ``rate`` in ``'train'`` mode.

    Kept elements are scaled by ``1 / (1 - rate)``; in ``'eval'`` and
    ``'predict'`` mode (or with ``rate == 0``) it is the identity.
    ``shared_axes`` share one mask value along those axes. The state is the
    rate as a float32 scalar (Trax's layout, so checkpoints map one to one).
    1 -> 1. In train mode ``pure_fn`` needs an ``rng``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> from retrax.fastmath import random
    >>> drop = tl.Dropout(0.5)
    >>> _, state = drop.init(shapes.ShapeDtype((8,)))
    >>> y, _ = drop.pure_fn(np.ones(8), (), state, random.get_prng(0))
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [2.0], [0.0])
    True
    >>> tl.Dropout(0.5, mode='eval')(np.ones(2)).tolist()
    [1.0, 1.0]
    """

    def __init__(self, rate: float = 0.0, shared_axes: Any = None, mode: str = "train"):
        super().__init__()
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1); got {rate!r}.")
        self._initial_rate = float(rate)
        self._shared_axes = () if shared_axes is None else tuple(shared_axes)
        self._mode = check_mode("Dropout", mode)

    def init_weights_and_state(self, input_signature):
        del input_signature
        self.state = jnp.array(self._initial_rate, jnp.float32)

    def forward(self, x):
        if self._mode != "train" or self._initial_rate == 0.0:
            return x
        if not self.has_rng:
            raise ValueError(
                "Dropout in 'train' mode needs an rng; pass rng=... to pure_fn (or build "
                "the model with mode='eval' for deterministic outputs)."
            )
        x = jnp.asarray(x)  # NumPy float64 becomes JAX's default float.
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.float32)  # Scaled by 1 / (1 - rate): floats, as in Trax.
        rate = self.state if not isinstance(self.state, tuple) else self._initial_rate
        mask_shape = list(x.shape)
        for axis in self._shared_axes:
            if not -x.ndim <= axis < x.ndim:
                raise ValueError(
                    f"Dropout: shared_axes {list(self._shared_axes)} name axis {axis}, but "
                    f"the input has {x.ndim} axes (shape {tuple(x.shape)})."
                )
            mask_shape[axis] = 1
        keep = fastmath_random.hash_bernoulli(self.rng, 1.0 - rate, tuple(mask_shape))
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


class Weights(Layer):
    """A layer with no inputs that outputs a learned tensor of ``shape`` (0 -> 1).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> bias = tl.Weights(tl.RandomNormalInitializer(1.0), (3,))
    >>> bias
    Weights_(3,)_in0
    >>> _ = bias.init(())
    >>> bias(()).shape
    (3,)
    """

    def __init__(self, initializer: Callable, shape: tuple = (), use_bfloat16: bool = False):
        shape = tuple(shape)
        super().__init__(n_in=0, name=f"Weights_{shape}")
        self._shape = shape
        self._initializer = initializer
        self._use_bfloat16 = use_bfloat16

    def init_weights_and_state(self, input_signature):
        del input_signature
        w = self._initializer(self._shape, self.rng)
        self.weights = w.astype(jnp.bfloat16) if self._use_bfloat16 else w

    def forward(self, inputs):
        del inputs
        return self.weights


def Flatten(n_axes_to_keep: int = 1) -> Layer:  # noqa: N802
    """Flattens all axes after the first ``n_axes_to_keep`` into one; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Flatten()(np.zeros((2, 3, 4))).shape
    (2, 12)
    """
    if n_axes_to_keep < 0:
        raise ValueError(f"Flatten: n_axes_to_keep must be >= 0; got {n_axes_to_keep}.")

    def flatten(x):
        if n_axes_to_keep >= x.ndim:
            raise ValueError(
                f"Flatten_keep{n_axes_to_keep}: input has {x.ndim} axes (shape "
                f"{tuple(x.shape)}); n_axes_to_keep must be smaller than that."
            )
        return jnp.reshape(x, tuple(x.shape[:n_axes_to_keep]) + (-1,))

    return Fn(f"Flatten_keep{n_axes_to_keep}", flatten)


def log_softmax(x: Any, axis: int = -1) -> Any:
    """``x - logsumexp(x, axis)``: log-probabilities from scores.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> np.exp(tl.log_softmax(np.log(np.array([1.0, 3.0])))).tolist()
    [0.25, 0.75]
    """
    return x - jax.nn.logsumexp(x, axis=axis, keepdims=True)


class LogSoftmax(PureLayer):
    """Log-probabilities along ``axis``; weightless, 1 -> 1 (Trax's ``LogSoftmax``).

    ``axis`` is public so decoding can see that a model's outputs are already
    normalized.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> np.round(np.exp(tl.LogSoftmax()(np.array([0.0, 0.0]))), 3).tolist()
    [0.5, 0.5]
    >>> tl.LogSoftmax(axis=1).axis
    1
    """

    def __init__(self, axis: int = -1):
        super().__init__(functools.partial(log_softmax, axis=axis), name="LogSoftmax")
        self._axis = axis

    @property
    def axis(self) -> int:
        return self._axis


def LogSumExp(axis: int = -1) -> Layer:  # noqa: N802
    """``log(sum(exp(x)))`` along ``axis`` (the axis is removed); 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.LogSumExp()(np.log(np.array([[1.0, 3.0]]))).tolist()
    [1.386294...]
    """
    return Fn("LogSumExp", lambda x: jax.nn.logsumexp(x, axis=axis))


def Softmax(axis: int = -1) -> Layer:  # noqa: N802
    """Probabilities along ``axis``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Softmax()(np.array([0.0, 0.0])).tolist()
    [0.5, 0.5]
    """
    return Fn("Softmax", lambda x: jax.nn.softmax(x, axis=axis))


def ToFloat() -> Layer:  # noqa: N802
    """Casts to float32; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.ToFloat()(np.array([1, 2])).dtype
    dtype('float32')
    """
    return Fn("ToFloat", lambda x: x.astype(jnp.float32))


def Mean(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    """Mean along ``axis``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Mean()(np.array([[1.0, 3.0], [5.0, 9.0]])).tolist()
    [2.0, 7.0]
    """
    return Fn("Mean", lambda x: jnp.mean(x, axis=axis, keepdims=keepdims))


def Min(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    """Minimum along ``axis``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Min()(np.array([[1.0, 3.0], [5.0, 0.0]])).tolist()
    [1.0, 0.0]
    """
    return Fn("Min", lambda x: jnp.min(x, axis=axis, keepdims=keepdims))


def Max(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    """Maximum along ``axis``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Max(axis=0)(np.array([[1.0, 3.0], [5.0, 0.0]])).tolist()
    [5.0, 3.0]
    """
    return Fn("Max", lambda x: jnp.max(x, axis=axis, keepdims=keepdims))


def Sum(axis: int | None = None, keepdims: bool = False) -> Layer:  # noqa: N802
    """Sum along ``axis`` (all axes by default, as in Trax); 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Sum()(np.array([[1.0, 2.0], [3.0, 4.0]])).item()
    10.0
    >>> tl.Sum(axis=-1)(np.array([[1.0, 2.0], [3.0, 4.0]])).tolist()
    [3.0, 7.0]
    """
    return Fn("Sum", lambda x: jnp.sum(x, axis=axis, keepdims=keepdims))


def ThresholdToBinary(threshold: float = 0.5) -> Layer:  # noqa: N802
    """1 where ``x > threshold``, else 0 (same dtype); 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.ThresholdToBinary()(np.array([0.2, 0.7])).tolist()
    [0.0, 1.0]
    """
    def threshold_to_binary(x):
        x = jnp.asarray(x)
        return jnp.where(x > threshold, 1, 0).astype(x.dtype)

    return Fn("ThresholdToBinary", threshold_to_binary)


def ArgMax(axis: int = -1) -> Layer:  # noqa: N802
    """Index of the largest value along ``axis``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.ArgMax()(np.array([[0.1, 0.7, 0.2]])).tolist()
    [1]
    """
    return Fn("ArgMax", lambda x: jnp.argmax(x, axis=axis))


def Negate() -> Layer:  # noqa: N802
    """``-x``; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Negate()(np.array([1.0, -2.0])).tolist()
    [-1.0, 2.0]
    """
    return Fn("Negate", lambda x: -x)


def StopGradient() -> Layer:  # noqa: N802
    """Identity forward, zero gradient backward; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> import jax
    >>> sg = tl.StopGradient()
    >>> jax.grad(lambda x: sg.pure_fn(x, (), (), None)[0] * x)(3.0).item()
    3.0
    """
    return Fn("StopGradient", jax.lax.stop_gradient)


def one_hot(x: Any, n_categories: int, dtype: Any = jnp.float32) -> Any:
    """One-hot encoding along a new last axis.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.one_hot(np.array([2, 0]), 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    return jax.nn.one_hot(x, n_categories, dtype=dtype)


def logsoftmax_sample(log_probs: Any, temperature: float = 1.0, *, rng: Any = None) -> Any:
    """Samples ids from ``log_probs`` (Gumbel-max); ``temperature=0`` is argmax.

    ``rng`` is a PRNG key. Without one, each call draws a fresh key from
    ``retrax.fastmath.random``'s module-level generator (as Trax drew from
    NumPy's global state), so repeated calls give new samples;
    ``fastmath.random.seed(n)`` makes the sequence repeat. Under ``jax.jit``
    pass ``rng``: a key drawn while tracing is fixed into the compiled program.
    ``temperature`` must be a number >= 0 (NaN or a negative number raises).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.logsoftmax_sample(np.log(np.array([[0.1, 0.9]])), temperature=0.0).tolist()
    [1]
    """
    if not isinstance(temperature, jax.core.Tracer):
        try:
            if isinstance(temperature, (str, bytes)):
                raise TypeError
            t = float(np.asarray(temperature).item())
        except (TypeError, ValueError):
            raise TypeError(
                f"logsoftmax_sample: temperature must be a number (0 means argmax); got "
                f"{type(temperature).__name__} {temperature!r}."
            ) from None
        if not t >= 0.0:  # also catches NaN
            raise ValueError(
                f"logsoftmax_sample: temperature must be a number >= 0 (0 means argmax); got "
                f"{temperature!r}. Pass e.g. temperature=1.0."
            )
        if t == 0.0:
            return jnp.argmax(log_probs, axis=-1)
    if rng is None:
        rng = fastmath_random.next_key()
    u = jax.random.uniform(rng, jnp.shape(log_probs), minval=1e-6, maxval=1.0 - 1e-6)
    g = -jnp.log(-jnp.log(u))
    return jnp.argmax(log_probs + g * temperature, axis=-1)
