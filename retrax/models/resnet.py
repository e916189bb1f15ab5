"""Residual convolutional networks for images: ``Resnet50`` and ``WideResnet`` (Trax's).

Images are ``(B, H, W, C)`` (channels last), any dtype (the models start with
``tl.ToFloat()``); outputs are ``(B, n_output_classes)`` logits. The layer
trees, weight order and BatchNorm states are Trax's, so Trax checkpoints load
one to one. In ``'train'`` mode BatchNorm normalizes with batch statistics and
updates its running statistics (kept in the model's state); in ``'eval'`` and
``'predict'`` mode it uses them.

The blocks are importable from this module, as in Trax
(``retrax.models.resnet.ConvBlock``); each returns a list of layers.

>>> import numpy as np
>>> from retrax import models, shapes
>>> net = models.WideResnet(n_blocks=1, n_output_classes=3, mode='eval')
>>> _ = net.init(shapes.ShapeDtype((2, 32, 32, 3)))
>>> net(np.zeros((2, 32, 32, 3), np.float32)).shape
(2, 3)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retrax import layers as tl
from retrax.layers.core import check_mode
from retrax.models.record import records_config

__all__ = ["Resnet50", "WideResnet"]


def _check_positive(owner: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a positive int; got {value!r}.")
    return int(value)


def _three_filters(owner: str, filters: Sequence[int]) -> tuple[int, int, int]:
    items = tuple(filters)
    if len(items) != 3:
        raise ValueError(f"{owner}: filters must be three ints (1x1 in, kxk, 1x1 out); got "
                         f"{filters!r}.")
    return tuple(_check_positive(owner, "filters", f) for f in items)  # type: ignore[return-value]


def _bottleneck(kernel_size: int, filters: Sequence[int], strides: Sequence[int],
                norm: Callable[..., tl.Layer], non_linearity: Callable[[], tl.Layer],
                mode: str) -> list[tl.Layer]:
    f1, f2, f3 = filters
    return [
        tl.Conv(f1, (1, 1), strides), norm(mode=mode), non_linearity(),
        tl.Conv(f2, (kernel_size, kernel_size), padding="SAME"), norm(mode=mode),
        non_linearity(),
        tl.Conv(f3, (1, 1)), norm(mode=mode),
    ]


def ConvBlock(kernel_size: int, filters: Sequence[int], strides: Sequence[int],  # noqa: N802
              norm: Callable[..., tl.Layer], non_linearity: Callable[[], tl.Layer],
              mode: str = "train") -> list[tl.Layer]:
    """The ResNet block that changes shape: a bottleneck with a projected shortcut.

    ``[Residual(Conv 1x1 /strides, norm, act, Conv kxk, norm, act, Conv 1x1,
    norm; shortcut=Conv 1x1 /strides, norm), act]``; ``filters`` are the three
    convolutions' widths.
    """
    filters = _three_filters("ConvBlock", filters)
    kernel_size = _check_positive("ConvBlock", "kernel_size", kernel_size)
    main = _bottleneck(kernel_size, filters, strides, norm, non_linearity, mode)
    shortcut = [tl.Conv(filters[2], (1, 1), strides), norm(mode=mode)]
    return [tl.Residual(main, shortcut=shortcut), non_linearity()]


def IdentityBlock(kernel_size: int, filters: Sequence[int],  # noqa: N802
                  norm: Callable[..., tl.Layer], non_linearity: Callable[[], tl.Layer],
                  mode: str = "train") -> list[tl.Layer]:
    """The ResNet block that keeps shape: a bottleneck added to its input.

    ``[Residual(Conv 1x1, norm, act, Conv kxk, norm, act, Conv 1x1, norm),
    act]``; the last width ``filters[2]`` must equal the input's channels.
    """
    filters = _three_filters("IdentityBlock", filters)
    kernel_size = _check_positive("IdentityBlock", "kernel_size", kernel_size)
    main = _bottleneck(kernel_size, filters, (1, 1), norm, non_linearity, mode)
    return [tl.Residual(main), non_linearity()]


@records_config
def Resnet50(  # noqa: N802
    d_hidden: int = 64,
    n_output_classes: int = 1001,
    mode: str = "train",
    norm: Callable[..., tl.Layer] = tl.BatchNorm,
    non_linearity: Callable[[], tl.Layer] = tl.Relu,
) -> tl.Layer:
    """ResNet-50: images ``(B, H, W, C)`` -> logits ``(B, n_output_classes)``.

    ``ToFloat, Conv 7x7 /2 (SAME), norm, act, MaxPool 3x3 /2``, then four
    stages of one ``ConvBlock`` and 2, 3, 5, 2 ``IdentityBlock``s with widths
    ``(d, d, 4d) * 1, 2, 4, 8`` (``d = d_hidden``; the first stage keeps the
    resolution, the others halve it), then ``AvgPool 7x7, Flatten, Dense``.
    The final pooling is 'VALID' with stride 1, so the Dense layer's input
    width depends on the image size: images of 224 pixels end in one 7x7
    window, 256 pixels in 2x2 windows. Images under 197 pixels leave no full
    window (an empty feature vector, as in Trax).

    Args:
      d_hidden: width of the first convolution (the stages multiply it).
      n_output_classes: number of logits.
      mode: ``'train'``, ``'eval'`` or ``'predict'`` (passed to ``norm``).
      norm: normalization layer constructor taking ``mode=``:
        ``tl.BatchNorm`` or ``tl.FilterResponseNorm``.
      non_linearity: activation constructor: ``tl.Relu`` with BatchNorm,
        ``tl.ThresholdedLinearUnit`` with FilterResponseNorm.
    """
    check_mode("Resnet50", mode)
    d = _check_positive("Resnet50", "d_hidden", d_hidden)
    n_classes = _check_positive("Resnet50", "n_output_classes", n_output_classes)

    def stage(multiplier: int, strides: tuple[int, int], n_identity: int) -> list[Any]:
        widths = [multiplier * d, multiplier * d, 4 * multiplier * d]
        return [ConvBlock(3, widths, strides, norm, non_linearity, mode),
                [IdentityBlock(3, widths, norm, non_linearity, mode) for _ in range(n_identity)]]

    return tl.Serial(
        tl.ToFloat(),
        tl.Conv(d, (7, 7), (2, 2), "SAME"),
        norm(mode=mode),
        non_linearity(),
        tl.MaxPool(pool_size=(3, 3), strides=(2, 2)),
        stage(1, (1, 1), 2),
        stage(2, (2, 2), 3),
        stage(4, (2, 2), 5),
        stage(8, (2, 2), 2),
        tl.AvgPool(pool_size=(7, 7)),
        tl.Flatten(),
        tl.Dense(n_classes),
    )


def WideResnetBlock(channels: int, strides: Sequence[int] = (1, 1),  # noqa: N802
                    bn_momentum: float = 0.9, mode: str = "train") -> list[tl.Layer]:
    """Pre-activation block: ``BatchNorm, Relu, Conv 3x3 /strides, BatchNorm, Relu, Conv 3x3``."""
    channels = _check_positive("WideResnetBlock", "channels", channels)
    return [
        tl.BatchNorm(momentum=bn_momentum, mode=mode),
        tl.Relu(),
        tl.Conv(channels, (3, 3), strides, padding="SAME"),
        tl.BatchNorm(momentum=bn_momentum, mode=mode),
        tl.Relu(),
        tl.Conv(channels, (3, 3), padding="SAME"),
    ]


def WideResnetGroup(n: int, channels: int, strides: Sequence[int] = (1, 1),  # noqa: N802
                    bn_momentum: float = 0.9, mode: str = "train") -> list[tl.Layer]:
    """``n`` blocks: the first with a Conv 3x3 shortcut, the rest in one residual.

    ``[Residual(block /strides, shortcut=Conv 3x3 /strides), Residual(n - 1
    blocks in series)]``. With ``n == 1`` the second residual wraps nothing,
    so it adds its input to itself (doubling it), exactly as Trax's does.
    """
    n = _check_positive("WideResnetGroup", "n", n)
    first = tl.Residual(WideResnetBlock(channels, strides, bn_momentum=bn_momentum, mode=mode),
                        shortcut=[tl.Conv(channels, (3, 3), strides, padding="SAME")])
    rest = [WideResnetBlock(channels, (1, 1), bn_momentum=bn_momentum, mode=mode)
            for _ in range(n - 1)]
    # Trax's Residual of no layers is Branch(identity, identity) + Add: x + x.
    second = tl.Residual(rest) if rest else tl.Serial(tl.Branch(None, tl.Serial()), tl.Add())
    return [first, second]


@records_config
def WideResnet(  # noqa: N802
    n_blocks: int = 3,
    widen_factor: int = 1,
    n_output_classes: int = 10,
    bn_momentum: float = 0.9,
    mode: str = "train",
) -> tl.Layer:
    """Wide ResNet (arXiv:1605.07146): images ``(B, H, W, C)`` -> logits ``(B, n_output_classes)``.

    ``ToFloat, Conv 3x3 (16)``, three ``WideResnetGroup``s of ``n_blocks``
    blocks with ``16k, 32k, 64k`` channels (``k = widen_factor``; the second
    and third halve the resolution), ``BatchNorm, Relu, AvgPool 8x8, Flatten,
    Dense``: ``6 * n_blocks + 4`` layers deep. Made for 32x32 images (the
    final 8x8 pooling then covers the whole 8x8 map); smaller images leave no
    full window and an empty feature vector, as in Trax.

    Args:
      n_blocks: blocks per group.
      widen_factor: channel multiplier (1 is the plain ResNet).
      n_output_classes: number of logits.
      bn_momentum: BatchNorm's momentum (weight of the old running statistics).
      mode: ``'train'``, ``'eval'`` or ``'predict'``.
    """
    check_mode("WideResnet", mode)
    n = _check_positive("WideResnet", "n_blocks", n_blocks)
    k = _check_positive("WideResnet", "widen_factor", widen_factor)
    n_classes = _check_positive("WideResnet", "n_output_classes", n_output_classes)
    return tl.Serial(
        tl.ToFloat(),
        tl.Conv(16, (3, 3), padding="SAME"),
        WideResnetGroup(n, 16 * k, bn_momentum=bn_momentum, mode=mode),
        WideResnetGroup(n, 32 * k, (2, 2), bn_momentum=bn_momentum, mode=mode),
        WideResnetGroup(n, 64 * k, (2, 2), bn_momentum=bn_momentum, mode=mode),
        tl.BatchNorm(momentum=bn_momentum, mode=mode),
        tl.Relu(),
        tl.AvgPool(pool_size=(8, 8)),
        tl.Flatten(),
        tl.Dense(n_classes),
    )
