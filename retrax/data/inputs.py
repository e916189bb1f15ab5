"""Example-level stream functions, and Trax's module ``trax.data.inputs``.

Each stage here is a :class:`~retrax.data.stream.Stage`: use it in
``data.Serial(...)`` or apply it to any iterable, ``data.FilterByLength(512)(examples)``.
Examples are tuples ``(inputs, targets[, weights])`` of NumPy arrays unless a
stage says otherwise.

Trax programs also reach names through this module (``from trax.data import
inputs``; ``inputs.pad_to_max_dims(...)``, ``inputs.data_counters``), so it
re-exports every name of Trax 1.4.1's ``trax/data/inputs.py`` that retrax
has, from the modules that define them: :mod:`~retrax.data.batching`,
:mod:`~retrax.data.shuffle`, :mod:`~retrax.data.mixing` (``Parallel``),
:mod:`~retrax.data.counters` (``CountAndSkip``, ``data_counters``),
:mod:`~retrax.data.prefetch`, :mod:`~retrax.data.chunking` (``PrefixLM``),
:mod:`~retrax.data.masking` (``MLM``), :mod:`~retrax.data.bundle`
(``Inputs``) and :mod:`~retrax.data.synthetic` (``addition_inputs``, ...).

>>> import numpy as np
>>> from retrax import data
>>> pipeline = data.Serial(data.FilterByLength(3), data.AddLossWeights(id_to_mask=0))
>>> examples = [(np.arange(9), np.arange(9)), (np.array([5, 6, 0]), np.array([6, 7, 0]))]
>>> stream = pipeline(examples)
>>> x, y, w = next(stream)
>>> w.tolist(), stream.stats()
([1.0, 1.0, 0.0], {'FilterByLength': {'dropped_too_long': 1}})
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrax import shapes
from retrax.data.batching import (
    Batch,
    BucketByLength,
    UnBatch,
    batch,
    bucket_by_length,
    length_of,
    pad_to_max_dims,
)
from retrax.data.bundle import Inputs, make_additional_stream, make_inputs, make_parallel_stream
from retrax.data.chunking import PrefixLM, generate_sequential_chunks
from retrax.data.counters import (
    CountAndSkip,
    UniformlySeek,
    count_and_skip,
    data_counters,
    load_data_counters,
    save_data_counters,
)
from retrax.data.masking import (
    MLM,
    consume_noise_mask,
    generate_random_noise_mask,
    random_spans_noise_mask,
)
from retrax.data.mixing import Parallel
from retrax.data.prefetch import Prefetch
from retrax.data.shuffle import Shuffle, shuffle
from retrax.data.stream import DROP, MapStage, Node, Serial, Stage, logger
from retrax.data.synthetic import (
    addition_input_stream,
    addition_inputs,
    lower_endian_to_number,
    number_to_lower_endian,
    random_inputs,
    random_number_lower_endian,
    sequence_copy_inputs,
    simple_sequence_copy_inputs,
    sine_inputs,
)

__all__ = [
    # Defined here.
    "FilterByLength", "FilterEmptyExamples", "TruncateToLength", "PadToLength",
    "AddLossWeights", "ConcatenateToLMInput", "Dup", "CastTo", "AppendValue", "Log",
    "add_loss_weights",
    # Trax's trax.data.inputs names defined elsewhere in retrax.data.
    "Serial", "Parallel", "Shuffle", "shuffle", "Batch", "batch", "BucketByLength",
    "bucket_by_length", "UnBatch", "pad_to_max_dims", "Prefetch", "CountAndSkip",
    "count_and_skip", "data_counters", "save_data_counters", "load_data_counters",
    "UniformlySeek", "PrefixLM", "MLM", "generate_sequential_chunks",
    "generate_random_noise_mask", "consume_noise_mask", "random_spans_noise_mask", "Inputs",
    "make_inputs", "make_additional_stream", "make_parallel_stream", "random_inputs",
    "sequence_copy_inputs", "simple_sequence_copy_inputs", "addition_input_stream",
    "addition_inputs", "sine_inputs", "lower_endian_to_number", "number_to_lower_endian",
    "random_number_lower_endian",
]


# --------------------------------------------------------------------------
# Length filters and reshaping
# --------------------------------------------------------------------------


def _keys(example: Any, keys: Sequence[Any] | None) -> list[Any]:
    if keys is not None:
        return list(keys)
    if isinstance(example, dict):
        return list(example)
    return list(range(len(example))) if isinstance(example, (tuple, list)) else [None]


def _replace(example: Any, updates: dict[Any, Any]) -> Any:
    """``example`` with the components at ``updates``' keys replaced (None: the example)."""
    if None in updates:
        return updates[None]
    if isinstance(example, dict):
        return {**example, **updates}
    items = list(example)
    for k, v in updates.items():
        items[k] = v
    return tuple(items)


def _get(example: Any, key: Any) -> Any:
    return example if key is None else example[key]


class FilterByLength(Stage):
    """Drops examples longer than ``max_length`` or shorter than ``min_length``.

    The length is the largest ``shape[length_axis]`` of the components
    ``length_keys`` (default ``[0, 1]``), as in Trax. Dropped examples are
    counted (``dropped_too_long``, ``dropped_too_short``) and the first of each
    kind is logged.

    Args:
      too_long: keyword-only; what to do with an example longer than
        ``max_length``: ``'drop'`` (Trax), ``'truncate'`` (cut the
        ``length_keys`` components to ``max_length`` along ``length_axis``,
        counted as ``truncated``) or ``'error'``.
    """

    def __init__(self, max_length: int | None, min_length: int | None = 0,
                 length_keys: Sequence[Any] | None = None, length_axis: int = 0, *,
                 too_long: str = "drop"):
        if max_length is None and min_length is None:
            raise ValueError("FilterByLength: give max_length, min_length or both.")
        if too_long not in ("drop", "truncate", "error"):
            raise ValueError(f"FilterByLength: too_long must be 'drop', 'truncate' or 'error'; "
                             f"got {too_long!r}.")
        self.max_length, self.min_length = max_length, min_length or 0
        self.length_keys = None if length_keys is None else list(length_keys)
        self.length_axis = length_axis
        self.too_long = too_long

    def build(self, upstream: Node | None) -> Node:
        return _FilterNode(self, upstream)


class _FilterNode(Node):
    name = "FilterByLength"

    def __init__(self, stage: FilterByLength, upstream: Node | None):
        super().__init__(upstream)
        self.stage = stage
        self.index = 0

    def __next__(self) -> Any:
        s = self.stage
        while True:
            example = next(self.upstream)
            index, self.index = self.index, self.index + 1
            length = length_of(example, s.length_keys, s.length_axis, "FilterByLength")
            if s.max_length is not None and length > s.max_length:
                what = f"example {index} has length {length} > max_length={s.max_length}"
                if s.too_long == "error":
                    raise ValueError(f"FilterByLength: {what} (too_long='error'). Pass "
                                     f"too_long='drop' or 'truncate', or raise max_length.")
                if s.too_long == "drop":
                    self.count("dropped_too_long", message=f"dropped {what}")
                    continue
                self.count("truncated", message=f"truncated {what}")
                return self._truncate(example)
            if length < s.min_length:
                self.count("dropped_too_short", message=f"dropped example {index} of length "
                           f"{length} < min_length={s.min_length}")
                continue
            return example

    def _truncate(self, example: Any) -> Any:
        s = self.stage
        keys = s.length_keys
        if keys is None:
            keys = [None] if not isinstance(example, (tuple, list)) else [
                k for k in (0, 1) if k < len(example)]
        cut = [slice(None)] * s.length_axis + [slice(0, s.max_length)]
        return _replace(example, {k: np.asarray(_get(example, k))[tuple(cut)] for k in keys})

    def _get_state(self) -> dict:
        return {"index": self.index}

    def _set_state(self, state: dict) -> None:
        self.index = int(state["index"])


class FilterEmptyExamples(MapStage):
    """Drops examples with an empty array among the components ``axes`` (default: all)."""

    name = "FilterEmptyExamples"

    def __init__(self, axes: Sequence[Any] | None = None, debug: bool = False):
        self.axes = None if axes is None else list(axes)
        self.debug = debug

    def apply(self, example: Any, node: Node, index: int) -> Any:
        for k in _keys(example, self.axes):
            if np.size(_get(example, k)) == 0:
                node.count("dropped_empty", message=f"dropped example {index}: {k} is empty")
                if self.debug:
                    logger.info("FilterEmptyExamples: dropped example %d: %r", index, example)
                return DROP
        return example


class TruncateToLength(MapStage):
    """Cuts components to at most the shapes in ``len_map`` (``{key: shape}``).

    ``len_map={0: (256,), 1: (256,)}`` keeps at most 256 tokens of the inputs
    and targets; an int means a 1-D shape. Each truncated example is counted
    (``truncated``); the first is logged. ``None`` changes nothing (Trax).
    Unlike Trax, an array example stays an array (Trax wraps it in a tuple).
    """

    name = "TruncateToLength"

    def __init__(self, len_map: dict[Any, Any] | None = None):
        self.len_map = None if len_map is None else {
            k: (v,) if isinstance(v, (int, np.integer)) else tuple(v) for k, v in len_map.items()}

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if not self.len_map:
            return example
        updates = {}
        for key, max_shape in self.len_map.items():
            k = None if not isinstance(example, (tuple, list, dict)) and key == 0 else key
            x = np.asarray(_get(example, k))
            new = tuple(min(d, m) for d, m in zip(x.shape, max_shape))
            if new != x.shape[:len(new)]:
                node.count("truncated", message=f"cut {_name(k)} of example {index} from shape "
                           f"{x.shape} to {new + x.shape[len(new):]}")
                updates[k] = x[tuple(slice(0, n) for n in new)]
        return _replace(example, updates) if updates else example


def _name(key: Any) -> str:
    return "the example" if key is None else f"component {key!r}"


class PadToLength(MapStage):
    """Pads components along axis 0 to the lengths in ``len_map`` (``{key: length}``).

    Args:
      len_map: required; ``{0: 128}`` pads component 0 to 128 (longer ones are
        left unchanged).
      pad_value: the fill value, or ``{key: value}``.
      multiple: pad up to the next multiple of the length instead. (Trax's
        own formula for this case is wrong; this one pads to the multiple.)
    """

    name = "PadToLength"

    def __init__(self, len_map: dict[Any, int] | None = None, pad_value: Any = 0,
                 multiple: bool = False):
        if len_map is None:
            raise ValueError("len_map parameter should be provided.")
        self.len_map = dict(len_map)
        self.pad_value = pad_value
        self.multiple = multiple

    def apply(self, example: Any, node: Node, index: int) -> Any:
        updates = {}
        for key, value in self.len_map.items():
            k = None if not isinstance(example, (tuple, list, dict)) and key == 0 else key
            x = np.asarray(_get(example, k))
            n = x.shape[0]
            target = value * math.ceil(n / value) if self.multiple else max(n, value)
            fill = self.pad_value[key] if isinstance(self.pad_value, dict) else self.pad_value
            if target > n:
                pad = [(0, target - n)] + [(0, 0)] * (x.ndim - 1)
                updates[k] = np.pad(x, pad, constant_values=fill)
        return _replace(example, updates) if updates else example


# --------------------------------------------------------------------------
# Loss weights and language-model inputs
# --------------------------------------------------------------------------


class AddLossWeights(MapStage):
    """``(x, y)`` -> ``(x, y, ones)``; ``(x, y, w)`` -> ``(x, y, float32(w))``.

    With ``id_to_mask``, the weights are 0 where the targets equal it (padding).
    Examples of other lengths pass unchanged (then ``id_to_mask`` must be None).
    """

    name = "AddLossWeights"

    def __init__(self, id_to_mask: int | None = None):
        self.id_to_mask = id_to_mask

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if not isinstance(example, (tuple, list)) or len(example) not in (2, 3):
            if self.id_to_mask is not None:
                n = len(example) if isinstance(example, (tuple, list)) else "not a tuple"
                raise ValueError(
                    f"AddLossWeights: example {index} has {n} components; masking "
                    f"id_to_mask={self.id_to_mask} needs (inputs, targets[, weights])."
                )
            return example
        targets = np.asarray(example[1])
        if len(example) == 2:
            weights = np.ones(targets.shape, np.float32)
        else:
            weights = np.array(example[2], np.float32)
        if self.id_to_mask is not None:
            weights *= targets != self.id_to_mask
        return (example[0], example[1], weights)


def add_loss_weights(generator: Any, id_to_mask: int | None = None) -> Any:
    """Trax's function form of :class:`AddLossWeights`."""
    return AddLossWeights(id_to_mask)(generator)


class ConcatenateToLMInput(MapStage):
    """``(inputs, targets)`` -> ``(x, x, w)`` with ``x = inputs ++ targets``, w 1 on targets.

    With ``pad_to_length`` both ``x`` and ``w`` are zero-padded to it (an
    example longer than that raises). A single array ``x`` (or ``(x,)``)
    becomes ``(x, x)``. The weights are float32 (Trax: the inputs' dtype).
    """

    name = "ConcatenateToLMInput"

    def __init__(self, pad_to_length: int | None = None):
        self.pad_to_length = pad_to_length

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if isinstance(example, (tuple, list)) and len(example) == 2:
            inputs, targets = np.asarray(example[0]), np.asarray(example[1])
            x = np.concatenate([inputs, targets], axis=-1)
            w = np.concatenate([np.zeros(inputs.shape, np.float32),
                                np.ones(targets.shape, np.float32)], axis=-1)
            if self.pad_to_length is not None:
                extra = self.pad_to_length - x.shape[-1]
                if extra < 0:
                    raise ValueError(
                        f"ConcatenateToLMInput: example {index} has lengths ({inputs.shape[-1]}, "
                        f"{targets.shape[-1]}), longer than pad_to_length={self.pad_to_length} "
                        f"together. Shorten them first (data.TruncateToLength or "
                        f"data.FilterByLength)."
                    )
                x, w = np.pad(x, (0, extra)), np.pad(w, (0, extra))
            return (x, x, w)
        if isinstance(example, (tuple, list)) and len(example) == 1:
            return (example[0], example[0])
        if isinstance(example, np.ndarray):
            return (example, example)
        raise ValueError(
            f"ConcatenateToLMInput: example {index} is a {type(example).__name__}"
            f"{f' of {len(example)}' if isinstance(example, (tuple, list)) else ''}; expected "
            f"(inputs, targets), (x,) or an array."
        )


class Dup(MapStage):
    """``(x, *rest)`` -> ``(x, x, *rest)``; an array ``x`` -> ``(x, x)``."""

    name = "Dup"

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if isinstance(example, (tuple, list)):
            return (example[0], *example)
        return (example, example)


class CastTo(MapStage):
    """Casts the components ``indices`` of each tuple to ``dtype``."""

    name = "CastTo"

    def __init__(self, dtype: Any = np.int32, indices: Sequence[int] = (0, 1),
                 debug: bool = False):
        self.dtype = np.dtype(dtype)
        self.indices = tuple(indices)
        self.debug = debug

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if not isinstance(example, (tuple, list)):
            raise TypeError(f"CastTo: example {index} is a {type(example).__name__}, not a tuple.")
        items = list(example)
        for i in self.indices:
            if i < len(items):
                items[i] = np.asarray(items[i]).astype(self.dtype)
        return tuple(items)


class AppendValue(MapStage):
    """Appends ``val[key]`` to the component ``key`` along its last axis."""

    name = "AppendValue"

    def __init__(self, val: dict[Any, Any] | None = None):
        self.val = val or {}

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if isinstance(example, (tuple, list)):
            items = list(example)
            for key, value in self.val.items():
                items[key] = np.append(items[key], value, -1)
            return tuple(items)
        return np.append(example, self.val[0]) if 0 in self.val else example


def _shapes_of(example: Any) -> Any:
    if isinstance(example, (tuple, list)):
        return type(example)(_shapes_of(x) for x in example)
    if isinstance(example, dict):
        return {k: _shapes_of(v) for k, v in example.items()}
    if isinstance(example, (np.ndarray, np.generic)):
        return shapes.signature(example)
    return example


class Log(MapStage):
    """Prints every ``n_steps_per_example``-th example (only shapes and dtypes by default)."""

    name = "Log"

    def __init__(self, n_steps_per_example: int = 1, only_shapes: bool = True):
        if not isinstance(n_steps_per_example, int) or n_steps_per_example < 1:
            raise ValueError(f"Log: n_steps_per_example must be a positive int; "
                             f"got {n_steps_per_example!r}.")
        self.every = n_steps_per_example
        self.only_shapes = only_shapes

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if index % self.every == 0:
            shown = _shapes_of(example) if self.only_shapes else example
            logger.info("example %d: %s", index, shown)
            print(shown)
        return example
