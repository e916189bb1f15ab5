"""Walks over a whole model: every layer once, and a copy in another mode.

``walk_layers(model)`` yields the model and every layer inside it, each once
(a shared layer too), in the order ``print`` lists them. ``with_mode(model,
mode)`` copies the model with each layer that has a mode (``own_mode``) in
``mode``; the copy shares the weight arrays, and its layers are switched
with ``Layer.set_own_mode`` before anyone else holds them.

>>> from retrax import layers as tl, shapes
>>> from retrax.layers.base import walk_layers
>>> model = tl.Serial(tl.Dense(2), tl.Dropout(0.5))
>>> [(lyr.name, lyr.own_mode) for lyr in walk_layers(model)]
[('Serial', None), ('Dense_2', None), ('Dropout', 'train')]
>>> _ = model.init(shapes.ShapeDtype((1, 3)))
>>> evaluator = tl.with_mode(model, 'eval')
>>> evaluator.sublayers[1].own_mode, evaluator.weights[0][0] is model.weights[0][0]
('eval', True)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING

import jax

if TYPE_CHECKING:
    from retrax.layers.layer import Layer

__all__ = ["walk_layers", "with_mode"]

_MODES = ("train", "eval", "predict", "viz")  # as tl.MODES


def with_mode(model: Layer, mode: str) -> Layer:
    """A copy of ``model`` whose layers run in ``mode``, sharing its weight arrays.

    Switches between ``'train'`` and ``'eval'`` (dropout, random position
    offsets, ...: every layer decides these when it runs). A ``'predict'``
    model has caches in its state and may be built differently, so switching
    to or from it is refused: build the model with ``mode='predict'`` and
    load the weights instead. Shared layers stay shared in the copy.

    >>> from retrax import layers as tl
    >>> model = tl.Serial(tl.Dense(2), tl.Dropout(0.5))
    >>> tl.with_mode(model, 'eval').mode, model.mode
    ('eval', 'train')
    """
    if mode not in _MODES:
        raise ValueError(f"with_mode: mode must be one of {_MODES}; got {mode!r}.")
    moded = [lyr for lyr in walk_layers(model) if lyr.own_mode is not None]
    if any((lyr.own_mode == "predict") != (mode == "predict") for lyr in moded):
        raise ValueError(
            f"with_mode: cannot switch {model.name_with_arity} between {model.mode!r} and "
            f"{mode!r}: 'predict' models keep caches in their state and may be built "
            f"differently. Build the model with mode='predict' and load the weights "
            f"(e.g. init_from_file(..., weights_only=True)).")
    # Arrays are immutable: the copy shares them instead of copying every weight.
    memo = {id(leaf): leaf for lyr in walk_layers(model)
            for leaf in jax.tree_util.tree_leaves(lyr.own_weights_and_state)}
    clone = copy.deepcopy(model, memo)
    for lyr in walk_layers(clone):
        if lyr.own_mode is not None:
            lyr.set_own_mode(mode)
    return clone


def walk_layers(layer: Layer) -> Iterator[Layer]:
    """``layer`` and every layer inside it, each once, in the order ``print`` lists them."""
    seen: set[int] = set()
    todo = [layer]
    while todo:
        lyr = todo.pop()
        if id(lyr) not in seen:
            seen.add(id(lyr))
            yield lyr
            todo.extend(reversed(lyr.sublayers))
