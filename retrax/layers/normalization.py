"""Normalization layers: LayerNorm, RMSNorm, BatchNorm, FilterResponseNorm.

``BatchNorm`` is the one with state: running statistics, updated in
``'train'`` mode and used in the other modes.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> ln = tl.LayerNorm()
>>> _ = ln.init(shapes.ShapeDtype((1, 2)))
>>> np.round(ln(np.array([[1.0, 3.0]])), 4).tolist()
[[-1.0, 1.0]]
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.layers.base import EMPTY_WEIGHTS, Layer
from retrax.layers.core import check_mode

__all__ = ["LayerNorm", "RMSNorm", "BatchNorm", "FilterResponseNorm"]


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
        mean_of = _mean_last if x.dtype != jnp.float32 or x.size > SMALL_LAYER_NORM else (
            lambda v: compensated_sum_last(v) * (1.0 / v.shape[-1]))
        if self._center:
            centered = x - mean_of(x)
        else:
            centered = x
        var = mean_of(centered * centered)
        y = centered * (1.0 / jnp.sqrt(var + self._epsilon)) * scale
        return y + bias if self._center else y


# Float32 inputs of up to this many values (a one-row decoding step's (1, 1, d)
# up to d = 256) take their LayerNorm means from compensated_sum_last: one
# kernel per mean on XLA's CPU backend where jnp.mean is two (its tree
# reduction splits a 256-wide row), and more accurate. Larger inputs keep
# jnp.mean: the compensated sum is a scalar loop, which costs more than a
# kernel launch on many values (already at batch 8 x 256: config M's greedy
# decoding took 2.8% less time per token with jnp.mean there).
SMALL_LAYER_NORM = 256


def _mean_last(x):
    return jnp.mean(x, axis=-1, keepdims=True)


def _two_sum(a, b):
    """Adds two (sum, error) pairs exactly: the rounding error of ``sa + sb`` joins the errors."""
    (sa, ea), (sb, eb) = a, b
    s = sa + sb
    b_part = s - sa
    return s, (ea + eb) + ((sa - (s - b_part)) + (sb - b_part))


@jax.custom_jvp
def compensated_sum_last(x):
    """Sum over the last axis (kept, size 1) with a running rounding error (Knuth's TwoSum).

    One XLA reduction of (sum, error) pairs, which XLA's CPU backend runs as a
    single kernel with its producer fused in (a plain sum of a 256-wide row is
    a reduce-window and a reduce); the error makes it nearly exact in any
    order (LayerNorm of ``x + 1000``: 8e-6 from a float64 reference where
    ``jnp.mean`` gives 2e-5). The derivative is that of ``jnp.sum``.

    >>> import numpy as np
    >>> x = np.array([[1e8, 1.0, -1e8, 1.0]], np.float32)
    >>> compensated_sum_last(x).tolist(), float(((x[0, 0] + x[0, 1]) + x[0, 2]) + x[0, 3])
    ([[2.0]], 1.0)
    """
    zero = jnp.zeros((), x.dtype)
    total, error = lax.reduce((x, jnp.zeros_like(x)), (zero, zero), _two_sum, (x.ndim - 1,))
    return (total + error)[..., None]


@compensated_sum_last.defjvp
def _compensated_sum_last_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    return compensated_sum_last(x), jnp.sum(dx, axis=-1, keepdims=True)


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


def _stats_dtype(dtype: Any) -> Any:
    """Statistics of half-precision inputs are computed in float32."""
    return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _batch_normalize(x, gamma, beta, axes, epsilon):
    """``(gamma * (x - mean) / sqrt(var + epsilon) + beta, mean, var)`` with batch statistics.

    The statistics are sums of ``x`` and ``x**2``; the output is ``x * s + (beta
    - mean * s)`` with the per-feature ``s = gamma * rsqrt(var + epsilon)``.
    Its gradient (below) is the closed form: the sums of ``dy`` and ``dy * (x
    - mean)``, then ``dx`` as one multiply-add per element, instead of the
    chain rule through every elementwise step (which keeps more full-size
    intermediates and reads them more often).
    """
    return _batch_normalize_fwd(x, gamma, beta, axes, epsilon)[0]


def _batch_normalize_fwd(x, gamma, beta, axes, epsilon):
    xf = x.astype(_stats_dtype(x.dtype))
    mean = jnp.mean(xf, axes, keepdims=True)
    var = jnp.maximum(jnp.mean(xf * xf, axes, keepdims=True) - mean * mean, 0.0)
    inv = lax.rsqrt(var + epsilon)
    scale = inv * gamma
    # One multiply-add per element with per-feature scale and shift (nothing
    # like x - mean is kept in memory for the backward pass).
    y = (xf * scale + (beta - mean * scale)).astype(x.dtype)
    return (y, mean, var), (x, mean, inv, gamma, beta)


def _batch_normalize_bwd(axes, epsilon, residuals, cotangents):
    # The statistics' cotangents are ignored: the only caller stops their
    # gradient (they feed the running statistics, which are state).
    del epsilon
    x, mean, inv, gamma, beta = residuals
    dy = cotangents[0].astype(mean.dtype)
    xf = x.astype(mean.dtype)
    count = math.prod(x.shape[a] for a in axes)
    dbeta = jnp.sum(dy, axes, keepdims=True)
    dgamma = jnp.sum(dy * (xf - mean), axes, keepdims=True) * inv
    # dx = gamma * inv / n * (n * dy - dbeta - xhat * dgamma), xhat = (x - mean) * inv,
    # regrouped as a * dy + b * x + c with per-feature a, b, c: no normalized copy
    # of x is shared between the sums and dx (XLA would keep one in memory).
    a = gamma * inv
    b = -a * inv * dgamma * (1.0 / count)
    c = -a * dbeta * (1.0 / count) - b * mean
    dx = a * dy + b * xf + c
    return (dx.astype(x.dtype), _sum_to(dgamma, gamma).astype(gamma.dtype),
            _sum_to(dbeta, beta).astype(beta.dtype))


def _sum_to(g, like):
    """``g`` summed to ``like``'s shape (the scalar stand-ins of unlearned beta / gamma)."""
    return g if g.shape == like.shape else jnp.sum(g).reshape(like.shape)


_batch_normalize.defvjp(_batch_normalize_fwd, _batch_normalize_bwd)


def _train_normalize(x, gamma, beta, axes, epsilon):
    """Batch-normalized ``x`` and the batch ``(mean, var)`` (no gradient flows into those)."""
    y, mean, var = _batch_normalize(x, gamma, beta, axes, epsilon)
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)


class BatchNorm(Layer):
    """Batch normalization with running statistics in its state (Trax's); 1 -> 1.

    In ``'train'`` mode it normalizes with the mean and (biased) variance of
    the batch over ``axis`` and updates the state; in ``'eval'`` and
    ``'predict'`` mode it normalizes with the running statistics and leaves
    the state as it is. The mode is read when the layer runs, so
    ``tl.with_mode(model, 'eval')`` switches it.

    ``y = gamma * (x - mean) / sqrt(var + epsilon) + beta``.

    Layout (Trax's, so checkpoints load one to one), for inputs ``(B, H, W, C)``
    and the default ``axis=(0, 1, 2)``:

    - weights ``(beta, gamma)``, float32 of the shape of the axes not reduced,
      ``(C,)``: zeros and ones. Without ``center`` (``scale``) ``beta``
      (``gamma``) is the empty tuple ``()``.
    - state ``(running_mean, running_var, n_batches)``: float32 of the input's
      shape with 1 on the reduced axes, ``(1, 1, 1, C)``, starting at zeros and
      ones; ``n_batches`` an int32 scalar counting the train-mode calls.

    Each train-mode call sets ``running = momentum * running + (1 - momentum)
    * batch_statistic`` (no debiasing: Trax's rule; ``n_batches`` only
    counts). The batch variance is ``mean(x**2) - mean(x)**2`` as in Trax,
    floored at 0 against rounding. In ``'train'`` mode the gradient is the
    closed form of batch normalization's (a ``jax.custom_vjp``: the two sums
    and one pass for ``dx``, as cheap as it gets in a train step), so
    reverse mode (``jax.grad``) is defined there and forward mode
    (``jax.jvp``) is not.

    A train-mode call whose reduced axes hold one value per feature (a batch
    of one with ``axis=(0,)``) has variance 0 and outputs just ``beta``.
    Called on concrete inputs it raises instead. Traced (under ``jit``, and
    in ``init``, whose shape inference may see a batch of one in the input
    signature) it cannot be told from a real step, so it computes what Trax
    computes.

    Args:
      axis: the axes reduced (an int or a tuple; negative ones count from the end).
      epsilon: added to the variance.
      center, scale: learn ``beta`` / ``gamma``.
      momentum: weight of the old running statistic.
      mode: ``'train'``, ``'eval'`` or ``'predict'``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> bn = tl.BatchNorm(axis=(0,), momentum=0.5)
    >>> _ = bn.init(shapes.ShapeDtype((2, 1)))
    >>> np.round(bn(np.array([[1.0], [3.0]])), 4).tolist()
    [[-1.0], [1.0]]
    >>> [v.tolist() for v in bn.state]
    [[[1.0]], [[1.0]], 1]
    >>> np.round(tl.with_mode(bn, 'eval')(np.array([[2.0]])), 4).tolist()
    [[1.0]]
    """

    def __init__(self, axis: Any = (0, 1, 2), epsilon: float = 1e-5, center: bool = True,
                 scale: bool = True, momentum: float = 0.999, mode: str = "train"):
        super().__init__()
        axes = (axis,) if isinstance(axis, (int, np.integer)) else axis
        try:
            axes = tuple(int(a) for a in axes)
        except TypeError:
            raise TypeError(f"BatchNorm: axis must be an int or a tuple of ints; got "
                            f"{axis!r}.") from None
        if not axes or len(set(axes)) != len(axes):
            raise ValueError(f"BatchNorm: axis must name distinct axes; got {axis!r}.")
        if epsilon <= 0:
            raise ValueError(f"BatchNorm: epsilon must be > 0; got {epsilon}.")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1]; got {momentum}.")
        self._axis = axes
        self._epsilon = epsilon
        self._center = center
        self._scale = scale
        self._momentum = momentum
        self._mode = check_mode("BatchNorm", mode)

    def _axes_for(self, ndim: int, shape: tuple[int, ...]) -> tuple[int, ...]:
        if any(not -ndim <= a < ndim for a in self._axis):
            raise ValueError(
                f"{self.name} normalizes over axes {self._axis}, which inputs of shape {shape} "
                f"({ndim} axes) do not have. Build it with axis= naming the batch (and "
                f"spatial) axes of these inputs, e.g. axis=(0,) for (batch, features).")
        return tuple(sorted(a % ndim for a in self._axis))

    def init_weights_and_state(self, input_signature):
        shape = tuple(input_signature.shape)
        axes = self._axes_for(len(shape), shape)
        kept = tuple(d for i, d in enumerate(shape) if i not in axes)
        stats = tuple(1 if i in axes else d for i, d in enumerate(shape))
        beta = jnp.zeros(kept, jnp.float32) if self._center else EMPTY_WEIGHTS
        gamma = jnp.ones(kept, jnp.float32) if self._scale else EMPTY_WEIGHTS
        self.weights = (beta, gamma)
        self.state = (jnp.zeros(stats, jnp.float32), jnp.ones(stats, jnp.float32),
                      jnp.zeros((), jnp.int32))

    def _check_input(self, x: Any, running_mean: Any) -> tuple[int, ...]:
        shape = tuple(x.shape)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{self.name} expects float inputs; got dtype {x.dtype} (shape "
                            f"{shape}). Convert first: tl.ToFloat() or x.astype(np.float32).")
        axes = self._axes_for(x.ndim, shape)
        stats = tuple(running_mean.shape)
        if len(stats) != x.ndim or any(s != d for i, (s, d) in enumerate(zip(stats, shape))
                                       if i not in axes):
            features = tuple(s for i, s in enumerate(stats) if i not in axes)
            got = tuple(d for i, d in enumerate(shape) if i not in axes)
            hint = ""
            if x.ndim == 4 and len(stats) == 4 and axes == (0, 1, 2) and shape[1] == stats[3]:
                hint = (" The input looks channels-first (NCHW); BatchNorm's default axis "
                        "expects channels last (NHWC): transpose it with x.transpose(0, 2, 3, 1).")
            raise ValueError(
                f"{self.name} was initialized for inputs of {len(stats)} axes whose "
                f"non-normalized axes are {features} (running statistics {stats}); got shape "
                f"{shape}, whose are {got}.{hint} Otherwise re-run init with the new input "
                f"signature.")
        return axes

    def forward(self, x):
        running_mean, running_var, n_batches = self.state
        x = jnp.asarray(x)
        axes = self._check_input(x, running_mean)
        if self._mode == "train":
            count = int(np.prod([x.shape[a] for a in axes]))
            if count < 2 and not isinstance(x, jax.core.Tracer):
                raise ValueError(
                    f"{self.name} in 'train' mode normalizes with statistics over axes {axes}, "
                    f"which hold {count} value(s) per feature for input shape "
                    f"{tuple(x.shape)}: the variance would be 0 and every output just beta. "
                    f"Train with batches of at least 2, or run in 'eval' mode "
                    f"(tl.with_mode(model, 'eval')) to use the running statistics.")
            beta, gamma = self._affine(x, axes)
            y, mean, var = _train_normalize(x, gamma, beta, axes, self._epsilon)
            m = self._momentum
            self.state = ((m * running_mean + (1 - m) * mean).astype(running_mean.dtype),
                          (m * running_var + (1 - m) * var).astype(running_var.dtype),
                          n_batches + 1)
            return y
        beta, gamma = self._affine(x, axes)
        inv = lax.rsqrt(running_var + self._epsilon) * gamma
        return ((x - running_mean.astype(x.dtype)) * inv.astype(x.dtype)
                + beta.astype(x.dtype)).astype(x.dtype)

    def _affine(self, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
        """``(beta, gamma)`` broadcastable to ``x`` (zeros / ones when not learned)."""
        beta, gamma = self.weights
        expand = tuple(None if i in axes else slice(None) for i in range(x.ndim))
        beta = beta[expand] if self._center else jnp.zeros((), jnp.float32)
        gamma = gamma[expand] if self._scale else jnp.ones((), jnp.float32)
        return beta, gamma


class FilterResponseNorm(Layer):
    """Filter response normalization (arXiv:1911.09737), without its TLU; 1 -> 1.

    For ``(B, H, W, C)`` inputs, ``nu2`` is the mean of ``x**2`` over the axes
    between batch and channels, and ``y = gamma * x / sqrt(nu2 + epsilon) +
    beta``. Weights ``(gamma, beta, epsilon_l)`` (Trax's): float32 ``(C,)``
    ones and zeros, and ``epsilon_l = ()``, or with ``learn_epsilon`` the
    1-tuple ``(init_learnt_epsilon,)`` of a float32 scalar; then ``epsilon =
    init_epsilon + |epsilon_l[0]|``. ``mode`` is accepted and unused (it
    behaves the same in every mode). Pair it with
    ``tl.ThresholdedLinearUnit``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> frn = tl.FilterResponseNorm(init_epsilon=1e-9)
    >>> _ = frn.init(shapes.ShapeDtype((1, 2, 1)))
    >>> frn(np.array([[[3.0], [4.0]]]))[0, :, 0].tolist()
    [0.84852..., 1.13137...]
    """

    def __init__(self, mode: str | None = None, learn_epsilon: bool = False,
                 init_epsilon: float = 1e-6, init_learnt_epsilon: float = 1e-4):
        super().__init__()
        if mode is not None:
            check_mode("FilterResponseNorm", mode)
        if init_epsilon <= 0 or init_learnt_epsilon <= 0:
            raise ValueError(
                f"FilterResponseNorm: init_epsilon and init_learnt_epsilon must be > 0; got "
                f"{init_epsilon} and {init_learnt_epsilon}.")
        self._learn_epsilon = learn_epsilon
        self._init_epsilon = float(init_epsilon)
        self._init_learnt_epsilon = float(init_learnt_epsilon)

    def init_weights_and_state(self, input_signature):
        channels = input_signature.shape[-1]
        epsilon_l = ((jnp.array(self._init_learnt_epsilon, jnp.float32),)
                     if self._learn_epsilon else EMPTY_WEIGHTS)
        self.weights = (jnp.ones((channels,), jnp.float32), jnp.zeros((channels,), jnp.float32),
                        epsilon_l)

    def forward(self, x):
        gamma, beta, epsilon_l = self.weights
        x = jnp.asarray(x)
        _feature_check(self, x, gamma.shape[0])
        epsilon = jnp.float32(self._init_epsilon)
        if len(epsilon_l):
            epsilon = epsilon + jnp.abs(epsilon_l[0])
        nu2 = jnp.mean(x * x, axis=tuple(range(1, x.ndim - 1)), keepdims=True)
        return gamma * (x / jnp.sqrt(nu2 + epsilon)) + beta
