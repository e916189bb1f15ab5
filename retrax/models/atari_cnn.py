"""Networks over sequences of game frames: ``AtariCnn``, ``AtariCnnBody``, ``FrameStackMLP`` (Trax's).

Inputs are observation sequences ``(B, T, ...)``: frames ``(B, T, H, W, C)``
of bytes for the CNNs, feature vectors ``(B, T, D)`` for ``FrameStackMLP``.
Each time step sees its own frame and the ``n_frames - 1`` before it,
stacked along the last axis (frames before the start are zeros); outputs are
``(B, T, output_size)``. The convolutions fold ``B`` and ``T`` into one
batch axis. ``mode`` is accepted and ignored, as in Trax.

>>> import numpy as np
>>> from retrax import models, shapes
>>> net = models.AtariCnn(hidden_sizes=(4, 4), output_size=6)
>>> _ = net.init(shapes.ShapeDtype((1, 1, 28, 28, 3)))
>>> net(np.zeros((2, 3, 28, 28, 3), np.uint8)).shape
(2, 3, 6)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retrax import layers as tl
from retrax.models.record import records_config

__all__ = ["AtariCnn", "AtariCnnBody", "FrameStackMLP"]


def _check_n_frames(owner: str, n_frames: Any) -> int:
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"{owner}: n_frames must be an int >= 1; got {n_frames!r}.")
    return int(n_frames)


def _sizes(owner: str, arg: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    items = tuple(value)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in items) \
            or (length is not None and len(items) < length):
        need = f" (at least {length})" if length else ""
        raise ValueError(f"{owner}: {arg} must be positive ints{need}; got {value!r}.")
    return tuple(int(v) for v in items)


def _frame_stack(n_frames: int) -> list[tl.Layer]:
    """``(B, T, ..., C) -> (B, T, ..., C * n_frames)``: frames t, t-1, ... side by side."""
    if n_frames == 1:
        return []
    # Branch i applies one ShiftRight instance i times, as Trax builds it.
    return [tl.Branch(*[[tl.ShiftRight()] * i for i in range(n_frames)]),
            tl.Concatenate(n_items=n_frames, axis=-1)]


def _bytes_to_floats() -> tl.Layer:
    return tl.Fn("BytesToFloats", lambda x: x / 255.0)


@records_config
def AtariCnn(  # noqa: N802
    n_frames: int = 4,
    hidden_sizes: Sequence[int] = (32, 32),
    output_size: int = 128,
    mode: str = "train",
) -> tl.Layer:
    """Frames ``(B, T, H, W, C)`` of bytes -> features ``(B, T, output_size)``.

    ``BytesToFloats (x / 255), frame stack, Conv 5x5 /2 SAME, Relu, Conv 5x5
    /2 SAME, Relu, Flatten(n_axes_to_keep=2), Dense, Relu``; the two
    convolutions have ``hidden_sizes[0]`` and ``hidden_sizes[1]`` channels.
    """
    del mode
    n_frames = _check_n_frames("AtariCnn", n_frames)
    hidden = _sizes("AtariCnn", "hidden_sizes", hidden_sizes, 2)
    return tl.Serial(
        _bytes_to_floats(),
        _frame_stack(n_frames),
        tl.Conv(hidden[0], (5, 5), (2, 2), "SAME"),
        tl.Relu(),
        tl.Conv(hidden[1], (5, 5), (2, 2), "SAME"),
        tl.Relu(),
        tl.Flatten(n_axes_to_keep=2),
        tl.Dense(output_size),
        tl.Relu(),
    )


@records_config
def AtariCnnBody(  # noqa: N802
    n_frames: int = 4,
    hidden_sizes: Sequence[int] = (32, 64, 64),
    output_size: int = 512,
    mode: str = "train",
    kernel_initializer: Callable | None = None,
    padding: str = "VALID",
) -> tl.Layer:
    """The DQN network body: frames ``(B, T, H, W, C)`` -> ``(B, T, output_size)``.

    ``BytesToFloats, frame stack, Conv 8x8 /4, Relu, Conv 4x4 /2, Relu, Conv
    3x3 /1, Relu, Flatten(n_axes_to_keep=2), Dense, Relu``; ``padding`` and
    ``kernel_initializer`` go to the three convolutions.
    """
    del mode
    n_frames = _check_n_frames("AtariCnnBody", n_frames)
    hidden = _sizes("AtariCnnBody", "hidden_sizes", hidden_sizes, 3)

    def conv(width: int, size: int, stride: int) -> tl.Layer:
        return tl.Conv(width, (size, size), (stride, stride), padding=padding,
                       kernel_initializer=kernel_initializer)

    return tl.Serial(
        _bytes_to_floats(),
        _frame_stack(n_frames),
        conv(hidden[0], 8, 4),
        tl.Relu(),
        conv(hidden[1], 4, 2),
        tl.Relu(),
        conv(hidden[2], 3, 1),
        tl.Relu(),
        tl.Flatten(n_axes_to_keep=2),
        tl.Dense(output_size),
        tl.Relu(),
    )


@records_config
def FrameStackMLP(  # noqa: N802
    n_frames: int = 4,
    hidden_sizes: Sequence[int] = (64,),
    output_size: int = 64,
    mode: str = "train",
) -> tl.Layer:
    """Features ``(B, T, D)`` -> ``(B, T, output_size)`` from the last ``n_frames`` steps.

    ``frame stack, [Dense(h), Relu] for h in hidden_sizes, Dense(output_size)``.
    """
    del mode
    n_frames = _check_n_frames("FrameStackMLP", n_frames)
    hidden = _sizes("FrameStackMLP", "hidden_sizes", hidden_sizes)
    return tl.Serial(
        _frame_stack(n_frames),
        [[tl.Dense(h), tl.Relu()] for h in hidden],
        tl.Dense(output_size),
    )
