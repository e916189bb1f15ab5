"""Convolution layers: ``Conv``, ``Conv1d``, ``CausalConv``, ``CausalDepthwiseConv`` (Trax's).

Images are channels-last: ``NHWC`` inputs (batch, height, width, channels)
and ``HWIO`` kernels (height, width, in channels, out channels), as in Trax,
so Trax checkpoints load one to one. Weights are ``(kernel, bias)``, or just
the kernel with ``use_bias=False``. Inputs with more leading axes than the
layout names (``(B, T, H, W, C)`` into an ``NHWC`` conv) are folded into the
batch axis and unfolded after, as Trax does.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> conv = tl.Conv(4, (3, 3))
>>> kernel, bias = conv.init(shapes.ShapeDtype((2, 5, 5, 3)))[0]
>>> kernel.shape, bias.shape
((3, 3, 3, 4), (4,))
>>> conv(np.ones((2, 5, 5, 3), np.float32)).shape
(2, 3, 3, 4)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax.layers import initializers as init
from retrax.layers.base import Layer, init_rng_split

__all__ = ["Conv", "Conv1d", "CausalConv", "CausalDepthwiseConv", "ConvTranspose"]

_PADDINGS = ("VALID", "SAME", "SAME_LOWER")


def _positive_ints(owner: str, arg: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints (of ``length`` entries when given)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        hint = f" (for a square window write {(int(value),) * (length or 2)})"
        raise TypeError(f"{owner}: {arg} must be a tuple with one int per spatial axis; got "
                        f"{value!r}{hint}.")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{owner}: {arg} must be a tuple of positive ints; got {value!r}.") from None
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0
                        for v in items):
        raise ValueError(f"{owner}: {arg} must be a non-empty tuple of positive ints; got "
                         f"{value!r}.")
    if length is not None and len(items) != length:
        raise ValueError(f"{owner}: {arg} needs one entry per spatial axis ({length}); got "
                         f"{value!r}.")
    return tuple(int(v) for v in items)


def _check_padding(owner: str, padding: Any, n_spatial: int) -> Any:
    if isinstance(padding, str):
        if padding.upper() not in _PADDINGS:
            raise ValueError(f"{owner}: padding must be 'VALID' or 'SAME' (or one (low, high) "
                             f"pair per spatial axis); got {padding!r}.")
        return padding.upper()
    try:
        pairs = tuple((int(lo), int(hi)) for lo, hi in padding)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: padding must be 'VALID' or 'SAME' (or one (low, high) pair "
                         f"per spatial axis); got {padding!r}.") from None
    if len(pairs) != n_spatial:
        raise ValueError(f"{owner}: padding needs one (low, high) pair per spatial axis "
                         f"({n_spatial}); got {padding!r}.")
    return pairs


def _check_dimension_numbers(owner: str, numbers: Any, n_spatial: int) -> tuple[str, str, str]:
    ok = (isinstance(numbers, (tuple, list)) and len(numbers) == 3
          and all(isinstance(s, str) and len(s) == n_spatial + 2 and len(set(s)) == len(s)
                  for s in numbers))
    if ok:
        lhs, rhs, out = numbers
        ok = {"N", "C"} <= set(lhs) and {"O", "I"} <= set(rhs) and {"N", "C"} <= set(out)
    if not ok:
        raise ValueError(
            f"{owner}: dimension_numbers must be three layout strings (input, kernel, output) "
            f"of {n_spatial + 2} letters each, like ('NHWC', 'HWIO', 'NHWC') for 2-D kernels; "
            f"got {numbers!r}.")
    return tuple(numbers)  # type: ignore[return-value]


class Conv(Layer):
    """A convolution: ``(N, *spatial, C) -> (N, *spatial', filters)``; 1 -> 1.

    Args:
      filters: number of output channels.
      kernel_size: window size, one int per spatial axis, e.g. ``(3, 3)``.
      strides: window step per spatial axis; None means 1 everywhere.
      padding: ``'VALID'`` (only full windows) or ``'SAME'`` (output size
        ``ceil(input / stride)``), or one ``(low, high)`` pair per spatial axis.
      dimension_numbers: layouts of input, kernel and output,
        ``('NHWC', 'HWIO', 'NHWC')`` by default (``N`` batch, ``C`` channels,
        ``I``/``O`` kernel in/out channels, other letters spatial).
      kernel_initializer: ``(shape, rng) -> array``; by default Glorot-normal
        with fans along the kernel's ``O`` and ``I`` axes, as in Trax.
      bias_initializer: Normal(0, 1e-6) by default.
      use_bias: with False the weights are the kernel alone.
      kernel_dilation: (keyword-only, retrax) spacing between kernel taps per
        spatial axis; None means 1 (Trax's only setting).

    The bias has shape ``(filters,)`` for a channels-last output (Trax drops
    leading 1s from the output layout's shape). Inputs must be floats with
    the channel count the layer was initialized for.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> conv = tl.Conv(1, (2, 2), use_bias=False)
    >>> _ = conv.init(shapes.ShapeDtype((1, 3, 3, 1)))
    >>> conv.weights = np.ones((2, 2, 1, 1), np.float32)
    >>> conv(np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1))[..., 0].tolist()
    [[[8.0, 12.0], [20.0, 24.0]]]
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Sequence[int],
        strides: Sequence[int] | None = None,
        padding: Any = "VALID",
        dimension_numbers: Sequence[str] = ("NHWC", "HWIO", "NHWC"),
        kernel_initializer: Callable | None = None,
        bias_initializer: Callable = init.RandomNormalInitializer(1e-6),
        use_bias: bool = True,
        *,
        kernel_dilation: Sequence[int] | None = None,
    ):
        super().__init__()
        owner = self.name
        if isinstance(filters, bool) or not isinstance(filters, (int, np.integer)) or filters <= 0:
            raise ValueError(f"{owner}: filters must be a positive int; got {filters!r}.")
        self._filters = int(filters)
        self._kernel_size = _positive_ints(owner, "kernel_size", kernel_size)
        n = len(self._kernel_size)
        self._strides = (1,) * n if strides is None else _positive_ints(owner, "strides", strides, n)
        self._dilation = ((1,) * n if kernel_dilation is None
                          else _positive_ints(owner, "kernel_dilation", kernel_dilation, n))
        self._padding = _check_padding(owner, padding, n)
        self._dimension_numbers = _check_dimension_numbers(owner, dimension_numbers, n)
        self._lhs_spec, self._rhs_spec, self._out_spec = self._dimension_numbers
        if kernel_initializer is None:
            kernel_initializer = init.GlorotNormalInitializer(
                self._rhs_spec.index("O"), self._rhs_spec.index("I"))
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer
        self._use_bias = use_bias

    # -- shapes ---------------------------------------------------------------

    def _rank(self) -> int:
        return len(self._lhs_spec)

    def _layout_hint(self) -> str:
        names = {"N": "batch", "C": "channels"}
        return ", ".join(names.get(c, c) for c in self._lhs_spec)

    def _check_rank(self, shape: tuple[int, ...]) -> None:
        rank = self._rank()
        if len(shape) < rank:
            raise ValueError(
                f"{self.name} expects inputs with {rank} axes in layout {self._lhs_spec} "
                f"({self._layout_hint()}); got shape {tuple(shape)}. Add the missing axes "
                f"(e.g. a batch axis with x[None] or a channel axis with x[..., None]).")
        if len(shape) > rank and not (self._lhs_spec == self._out_spec
                                       and self._lhs_spec[0] == "N"):
            raise ValueError(
                f"{self.name} folds extra leading axes into the batch only when input and "
                f"output layouts are equal and start with N; layouts are "
                f"{self._dimension_numbers}, input shape {tuple(shape)}.")

    def _channels(self, shape: tuple[int, ...]) -> int:
        return shape[len(shape) - self._rank() + self._lhs_spec.index("C")]

    # -- init and forward ---------------------------------------------------------

    def init_weights_and_state(self, input_signature):
        shape = tuple(input_signature.shape)
        self._check_rank(shape)
        channels = self._channels(shape)
        sizes = iter(self._kernel_size)
        kernel_shape = tuple(self._filters if c == "O" else channels if c == "I" else next(sizes)
                             for c in self._rhs_spec)
        rng_w, rng_b = init_rng_split(self.rng, 2)
        w = self._kernel_initializer(kernel_shape, rng_w)
        if not self._use_bias:
            self.weights = w
            return
        bias_shape = [self._filters if c == "C" else 1 for c in self._out_spec]
        while bias_shape and bias_shape[0] == 1:  # Trax keeps no leading 1s
            bias_shape.pop(0)
        self.weights = (w, self._bias_initializer(tuple(bias_shape), rng_b))

    def _check_input(self, x: Any, w: Any) -> None:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{self.name} expects float inputs; got dtype {x.dtype} (shape {tuple(x.shape)}). "
                f"Convert them first: x.astype(np.float32), or tl.ToFloat() before the layer.")
        shape = tuple(x.shape)
        self._check_rank(shape)
        expected = w.shape[self._rhs_spec.index("I")]
        got = self._channels(shape)
        if got == expected:
            return
        message = (f"{self.name} was initialized for {expected} input channels (the C axis "
                   f"of layout {self._lhs_spec}); got shape {shape}, which has {got} there.")
        lead = len(shape) - self._rank()
        c_axis = self._lhs_spec.index("C")
        if self._lhs_spec[0] == "N" and c_axis == len(self._lhs_spec) - 1 \
                and shape[lead + 1] == expected:
            perm = (*range(lead + 1), *range(lead + 2, len(shape)), lead + 1)
            message += (f" The input looks channels-first (NCHW-style); this layer expects "
                        f"channels last ({self._lhs_spec}): transpose it with "
                        f"x.transpose{perm}.")
        else:
            message += (f" Feed inputs with {expected} channels, or re-run init with the new "
                        f"input signature.")
        raise ValueError(message)

    def _check_window(self, shape: tuple[int, ...]) -> None:
        if self._padding != "VALID":
            return
        spatial = [shape[len(shape) - self._rank() + i]
                   for i, c in enumerate(self._lhs_spec) if c not in "NC"]
        reach = [(k - 1) * d + 1 for k, d in zip(self._kernel_size, self._dilation)]
        if any(s < r for s, r in zip(spatial, reach)):
            warnings.warn(
                f"{self.name}: the kernel (reach {tuple(reach)}) is larger than the input's "
                f"spatial size {tuple(spatial)} with padding='VALID', so the output is empty "
                f"(as in Trax). Use padding='SAME' or larger inputs.", stacklevel=2)

    def forward(self, x):
        w, b = self.weights if self._use_bias else (self.weights, None)
        x = jnp.asarray(x)
        self._check_input(x, w)
        shape = tuple(x.shape)
        self._check_window(shape)
        lead = shape[: len(shape) - self._rank() + 1]
        if len(lead) > 1:
            x = jnp.reshape(x, (math.prod(lead), *shape[len(lead):]))
        dtype = jnp.result_type(x.dtype, w.dtype)
        y = self._convolve(x.astype(dtype), w.astype(dtype))
        if b is not None:
            y = y + b
        if len(lead) > 1:
            y = jnp.reshape(y, (*lead, *y.shape[1:]))
        return y


    def _convolve(self, x: Any, w: Any) -> Any:
        return lax.conv_general_dilated(x, w, self._strides, self._padding,
                                        rhs_dilation=self._dilation,
                                        dimension_numbers=self._dimension_numbers)


class ConvTranspose(Conv):
    """A transposed convolution (upsampling): ``(N, *spatial, C) -> (N, *spatial', filters)``.

    The arguments, weights and layouts are ``Conv``'s (kernel ``HWIO``:
    ``I`` the input channels, ``O`` = ``filters``). Each input position
    spreads the kernel over the output with step ``strides``, its taps in
    reverse order (``lax.conv_transpose`` and Flax's ``ConvTranspose`` do so;
    PyTorch's uses them in order: flip the kernel's spatial axes to port
    weights). The output size is ``(size - 1) * stride + kernel`` with
    ``'VALID'`` padding and ``size * stride`` with ``'SAME'``. Trax 1.4.1 has
    no such layer; this is retrax's, in Trax's conventions.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> up = tl.ConvTranspose(1, (2,), strides=(2,), dimension_numbers=('NWC', 'WIO', 'NWC'),
    ...                       use_bias=False)
    >>> _ = up.init(shapes.ShapeDtype((1, 2, 1)))
    >>> up.weights = np.array([[[1.0]], [[10.0]]], np.float32)
    >>> up(np.array([[[1.0], [2.0]]]))[..., 0].tolist()
    [[10.0, 1.0, 20.0, 2.0]]
    """

    def _check_window(self, shape: tuple[int, ...]) -> None:
        del shape  # Any input size gives a non-empty output.

    def _convolve(self, x: Any, w: Any) -> Any:
        return lax.conv_transpose(x, w, self._strides, self._padding,
                                  rhs_dilation=self._dilation,
                                  dimension_numbers=self._dimension_numbers)


def Conv1d(  # noqa: N802
    filters: int,
    kernel_size: int,
    stride: int = 1,
    padding: Any = "VALID",
    kernel_initializer: Callable | None = None,
    bias_initializer: Callable = init.RandomNormalInitializer(1e-6),
    use_bias: bool = True,
) -> Layer:
    """A 1-D ``Conv`` on ``(batch, width, channels)``: kernel ``(kernel_size, C, filters)``.

    >>> from retrax import layers as tl, shapes
    >>> conv = tl.Conv1d(8, 3)
    >>> [w.shape for w in conv.init(shapes.ShapeDtype((2, 10, 4)))[0]]
    [(3, 4, 8), (8,)]
    """
    for arg, value in (("kernel_size", kernel_size), ("stride", stride)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"Conv1d: {arg} must be a positive int; got {value!r}.")
    return Conv(filters, (int(kernel_size),), strides=(int(stride),), padding=padding,
                dimension_numbers=("NWC", "WIO", "NWC"), kernel_initializer=kernel_initializer,
                bias_initializer=bias_initializer, use_bias=use_bias)


class CausalConv(Conv):
    """A 1-D convolution over time that sees only the present and the past; 1 -> 1.

    ``(B, T, D) -> (B, T, filters)``: the sequence is padded on the left with
    ``kernel_width - 1`` zeros, then convolved with 'VALID' padding, so output
    ``t`` depends on inputs ``t - kernel_width + 1 .. t``. Kernel
    ``(kernel_width, D, filters)``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> conv = tl.CausalConv(1, kernel_width=2, use_bias=False)
    >>> _ = conv.init(shapes.ShapeDtype((1, 4, 1)))
    >>> conv.weights = np.array([[[10.0]], [[1.0]]], np.float32)  # taps t-1, t
    >>> conv(np.array([[[1.0], [2.0], [3.0], [4.0]]]))[..., 0].tolist()
    [[1.0, 12.0, 23.0, 34.0]]
    """

    def __init__(
        self,
        filters: int,
        kernel_width: int = 3,
        kernel_initializer: Callable | None = None,
        bias_initializer: Callable = init.RandomNormalInitializer(1e-6),
        use_bias: bool = True,
    ):
        if (isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, np.integer))
                or kernel_width <= 0):
            raise ValueError(f"CausalConv: kernel_width must be a positive int; got "
                             f"{kernel_width!r}.")
        super().__init__(filters, (int(kernel_width),), strides=None, padding="VALID",
                         dimension_numbers=("NWC", "WIO", "NWC"),
                         kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer, use_bias=use_bias)

    def forward(self, x):
        x = jnp.asarray(x)
        if x.ndim < 3:
            raise ValueError(f"{self.name} expects (batch, length, features) inputs; got shape "
                             f"{tuple(x.shape)}.")
        pad = [(0, 0)] * x.ndim
        pad[-2] = (self._kernel_size[0] - 1, 0)
        return super().forward(jnp.pad(x, pad))


class CausalDepthwiseConv(Layer):
    """Per-feature causal convolution over time: ``(B, L, D) -> (B, L, D)``; 1 -> 1.

    ``y[:, t, d] = sum_i w[i, d] * x[:, t - i, d]`` (zero before the start),
    so ``w[0]`` weighs the present position. Weight ``(kernel_size, D)``,
    Glorot-uniform; bfloat16 with ``use_bfloat16``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> conv = tl.CausalDepthwiseConv(kernel_size=2)
    >>> _ = conv.init(shapes.ShapeDtype((1, 3, 1)))
    >>> conv.weights = np.array([[1.0], [10.0]], np.float32)
    >>> conv(np.array([[[1.0], [2.0], [3.0]]]))[..., 0].tolist()
    [[1.0, 12.0, 23.0]]
    """

    def __init__(
        self,
        kernel_size: int = 3,
        kernel_initializer: Callable = init.GlorotUniformInitializer(),
        use_bfloat16: bool = False,
    ):
        super().__init__(n_in=1, n_out=1)
        if (isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer))
                or kernel_size <= 0):
            raise ValueError(f"CausalDepthwiseConv: kernel_size must be a positive int; got "
                             f"{kernel_size!r}.")
        self._kernel_size = int(kernel_size)
        self._kernel_initializer = kernel_initializer
        self._use_bfloat16 = use_bfloat16

    def init_weights_and_state(self, input_signature):
        rng_w, _ = init_rng_split(self.rng, 2)
        w = self._kernel_initializer((self._kernel_size, input_signature.shape[-1]), rng_w)
        self.weights = w.astype(jnp.bfloat16) if self._use_bfloat16 else w

    def forward(self, x):
        w = self.weights
        x = jnp.asarray(x)
        if x.ndim != 3 or x.shape[-1] != w.shape[1]:
            raise ValueError(
                f"{self.name} expects (batch, length, {w.shape[1]}) inputs (its weight is "
                f"{tuple(w.shape)}); got shape {tuple(x.shape)}.")
        length, k = x.shape[1], self._kernel_size
        padded = jnp.pad(x, ((0, 0), (k - 1, 0), (0, 0)))
        y = x * w[0]
        for i in range(1, k):  # k is small and static: one fused sum of shifted copies
            y = y + padded[:, k - 1 - i: k - 1 - i + length, :] * w[i]
        return y
