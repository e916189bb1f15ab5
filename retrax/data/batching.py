"""Batching stages: ``Batch``, ``BucketByLength``, ``UnBatch`` and ``pad_to_max_dims``.

Examples are tuples (or lists, dicts, single arrays) of arrays; a batch stacks
each component after padding it with zeros to the largest shape in the batch.

>>> import numpy as np
>>> from retrax import data
>>> examples = [(np.array([1, 2]), np.array(0)), (np.array([3]), np.array(1))]
>>> x, y = next(data.Batch(2)(examples))
>>> x.tolist(), y.tolist()
([[1, 2], [3, 0]], [0, 1])
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retrax.data import _state
from retrax.data.stream import Node, Stage

__all__ = ["Batch", "BucketByLength", "UnBatch", "pad_to_max_dims", "stack_examples", "batch",
           "bucket_by_length"]

_KIND = {"b": "bool", "i": "int", "u": "int", "f": "float", "c": "complex"}


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def pad_to_max_dims(tensors: Sequence[Any], boundary: Any = None,
                    strict_pad_on_len: bool = False) -> np.ndarray:
    """Pads arrays of one rank with zeros to a common shape and stacks them.

    Without ``boundary`` every axis is padded to its largest size. With an int
    ``boundary`` every axis is padded to ``boundary`` (or to its largest size
    if that is bigger), except that an axis whose largest size is less than
    half the boundary is padded to the next power of two instead. With
    ``strict_pad_on_len=True`` (or a per-axis list of boundaries) each axis is
    padded up to a multiple of its boundary. (Trax's behaviour.)

    >>> pad_to_max_dims([np.ones((2, 10)), np.ones((3, 9))], boundary=12).shape
    (2, 4, 12)
    """
    arrays = [np.asarray(t) for t in tensors]
    if not arrays:
        raise ValueError("pad_to_max_dims: needs at least one array.")
    ndim = arrays[0].ndim
    for i, a in enumerate(arrays):
        if a.ndim != ndim:
            raise ValueError(
                f"pad_to_max_dims: array {i} has shape {a.shape} (rank {a.ndim}) but array 0 "
                f"has shape {arrays[0].shape} (rank {ndim}); only arrays of one rank can be "
                f"padded together."
            )
    max_dims = [max(a.shape[d] for a in arrays) for d in range(ndim)]
    if boundary is not None and (strict_pad_on_len or isinstance(boundary, (list, tuple))):
        bounds = list(boundary) if isinstance(boundary, (list, tuple)) else [boundary] * ndim
        if len(bounds) != ndim:
            raise ValueError(f"pad_to_max_dims: {len(bounds)} boundaries for rank-{ndim} arrays.")
        target = [m if not b else b * math.ceil(m / b) for m, b in zip(max_dims, bounds)]
    elif boundary is None:
        target = max_dims
    else:
        target = []
        for d, m in enumerate(max_dims):
            if m == boundary and all(a.shape[d] == m for a in arrays):
                target.append(m)
                continue
            size = max(m, boundary)
            target.append(_next_power_of_two(m) if 2 * m < size else size)
    padded = [a if list(a.shape) == target else
              np.pad(a, [(0, t - s) for t, s in zip(target, a.shape)]) for a in arrays]
    return np.stack(padded)


def _describe(key: Any) -> str:
    return "the example" if key is None else (
        f"component {key}" if isinstance(key, int) else f"key {key!r}")


def _stack_component(values: list[Any], key: Any, indices: Sequence[int], where: str,
                     boundary: Any, strict: bool) -> np.ndarray:
    arrays = []
    for j, v in zip(indices, values):
        if isinstance(v, (str, bytes)) or np.asarray(v).dtype.kind in "OUSV":
            raise TypeError(
                f"{where}: {_describe(key)} of example {j} is a {type(v).__name__}; batches "
                f"hold numeric arrays. Tokenize text before batching (data.Tokenize)."
            )
        arrays.append(np.asarray(v))
    ref, i0 = arrays[0], indices[0]
    for j, a in zip(indices, arrays):
        if a.ndim != ref.ndim:
            raise ValueError(
                f"{where}: {_describe(key)} of example {j} has shape {a.shape} (rank {a.ndim}) "
                f"but in example {i0} it has shape {ref.shape} (rank {ref.ndim}). Examples of "
                f"a batch may differ in size along each axis, but not in rank."
            )
        if _KIND[a.dtype.kind] != _KIND[ref.dtype.kind]:
            raise TypeError(
                f"{where}: {_describe(key)} of example {j} has dtype {a.dtype} but in example "
                f"{i0} it has dtype {ref.dtype}. Cast them to one type (data.CastTo)."
            )
    return pad_to_max_dims(arrays, boundary, strict)


def stack_examples(examples: Sequence[Any], indices: Sequence[int], where: str = "Batch",
                   boundary: Any = None, strict_pad_on_len: bool = False) -> Any:
    """Stacks examples into one batch of the same structure, padding each component.

    ``indices`` are the examples' positions in the stream, used in error messages.
    """
    first, i0 = examples[0], indices[0]

    def mismatch(j: int, what: str, got: Any, want: Any) -> ValueError:
        return ValueError(
            f"{where}: example {j} has {what} {got} but example {i0} has {want}. Every "
            f"example of a stream must have the same structure."
        )

    if isinstance(first, (tuple, list)):
        for j, ex in zip(indices, examples):
            if not isinstance(ex, (tuple, list)):
                raise mismatch(j, "type", type(ex).__name__, "a tuple")
            if len(ex) != len(first):
                raise mismatch(j, "number of components", len(ex), len(first))
        return tuple(_stack_component([ex[k] for ex in examples], k, indices, where, boundary,
                                      strict_pad_on_len) for k in range(len(first)))
    if isinstance(first, dict):
        for j, ex in zip(indices, examples):
            if not isinstance(ex, dict) or ex.keys() != first.keys():
                got = sorted(ex) if isinstance(ex, dict) else type(ex).__name__
                raise mismatch(j, "keys", got, sorted(first))
        return {k: _stack_component([ex[k] for ex in examples], k, indices, where, boundary,
                                    strict_pad_on_len) for k in first}
    for j, ex in zip(indices, examples):
        if isinstance(ex, (tuple, list, dict)):
            raise mismatch(j, "type", type(ex).__name__, "a single array")
    return _stack_component(list(examples), None, indices, where, boundary, strict_pad_on_len)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int; got {value!r}.")
    return int(value)


class Batch(Stage):
    """Groups ``batch_size`` examples into one batch, padding each component with zeros.

    Args:
      batch_size: examples per batch.
      drop_remainder: keyword-only; as in Trax, the last batch is dropped when
        the stream ends with fewer than ``batch_size`` examples (counted in
        ``stats()['Batch']['dropped_remainder']`` and logged). ``False`` yields
        it as a smaller batch.

    Raises a ``ValueError`` naming the examples and shapes when examples in a
    batch differ in structure or rank.
    """

    def __init__(self, batch_size: int, *, drop_remainder: bool = True):
        self.batch_size = _positive_int(batch_size, "Batch: batch_size")
        self.drop_remainder = bool(drop_remainder)

    def build(self, upstream: Node | None) -> Node:
        return _BatchNode(self, upstream)

    def __repr__(self) -> str:
        return f"data.Batch({self.batch_size})"


class _BatchNode(Node):
    name = "Batch"

    def __init__(self, stage: Batch, upstream: Node | None):
        super().__init__(upstream)
        self.stage = stage
        self.buffer: list[Any] = []
        self.index = 0  # examples drawn from upstream

    def __next__(self) -> Any:
        size = self.stage.batch_size
        while len(self.buffer) < size:
            try:
                example = next(self.upstream)
            except StopIteration:
                return self._finish()
            self.buffer.append(example)
            self.index += 1
        batch = self._stack()
        self.buffer = []
        return batch

    def _stack(self) -> Any:
        first = self.index - len(self.buffer)
        return stack_examples(self.buffer, range(first, self.index), "Batch")

    def _finish(self) -> Any:
        n = len(self.buffer)
        if n and not self.stage.drop_remainder:
            batch = self._stack()
            self.buffer = []
            return batch
        if n:
            self.count("dropped_remainder", n,
                       f"dropped the last {n} examples of the stream, fewer than batch_size="
                       f"{self.stage.batch_size} (pass drop_remainder=False to keep them)")
            self.buffer = []
        raise StopIteration

    def _get_state(self) -> dict:
        return {"buffer": _state.encode(self.buffer), "index": self.index}

    def _set_state(self, state: dict) -> None:
        self.buffer = _state.decode(state["buffer"])
        self.index = int(state["index"])


def length_of(example: Any, length_keys: Sequence[Any] | None, length_axis: int,
              where: str) -> int:
    """The largest size along ``length_axis`` of the components at ``length_keys``."""
    if isinstance(example, (tuple, list, dict)):
        if length_keys is None:
            if isinstance(example, dict):
                raise ValueError(f"{where}: examples are dicts; pass length_keys=[key, ...].")
            length_keys = [k for k in (0, 1) if k < len(example)]
        values = [example[k] for k in length_keys]
    else:
        values = [example]
    lengths = []
    for v in values:
        if isinstance(v, (str, bytes)):
            raise TypeError(f"{where}: measures token arrays but got a {type(v).__name__}; "
                            f"tokenize text first (data.Tokenize).")
        shape = np.shape(v)
        if len(shape) <= length_axis:
            raise ValueError(f"{where}: length_axis={length_axis} but a component has shape "
                             f"{shape}.")
        lengths.append(shape[length_axis])
    return max(lengths)


class BucketByLength(Stage):
    """Batches examples of similar length together (Trax's signature and padding).

    An example of length ``l`` (the largest ``shape[length_axis]`` of the
    components ``length_keys``, default ``[0, 1]``) goes to the first bucket
    with ``l <= boundaries[i]`` (the last bucket takes the rest); a bucket
    holding ``batch_sizes[i]`` examples yields them as one batch padded as
    :func:`pad_to_max_dims` with that bucket's boundary.

    Args:
      boundaries: increasing bucket limits.
      batch_sizes: one per bucket: one more than ``boundaries`` (the last
        bucket takes the examples longer than every boundary), or as many as
        ``boundaries`` (then a longer example raises a ``ValueError``).
      drop_remainder: keyword-only; at the end of the stream the examples left
        in the buckets are dropped (Trax) and counted; ``False`` yields them as
        smaller batches.
      length_fn: keyword-only; ``length_fn(example) -> int`` measures an
        example instead of ``length_keys``/``length_axis`` (Trax's
        :func:`bucket_by_length` argument).
    """

    def __init__(self, boundaries: Sequence[int], batch_sizes: Sequence[int],
                 length_keys: Sequence[Any] | None = None, length_axis: int = 0,
                 strict_pad_on_len: bool = False, *, drop_remainder: bool = True,
                 length_fn: Callable[[Any], int] | None = None):
        self.boundaries = [int(b) for b in boundaries]
        self.batch_sizes = [_positive_int(b, "BucketByLength: batch_sizes[i]")
                            for b in batch_sizes]
        if len(self.batch_sizes) not in (len(self.boundaries), len(self.boundaries) + 1):
            raise ValueError(
                f"BucketByLength: needs one batch size per bucket: one more than boundaries "
                f"(the last bucket takes longer examples) or as many; got "
                f"{len(self.boundaries)} boundaries and {len(self.batch_sizes)} batch sizes."
            )
        if length_fn is not None and not callable(length_fn):
            raise TypeError(f"BucketByLength: length_fn must be callable; got {length_fn!r}.")
        self.length_fn = length_fn
        if any(b <= a for a, b in zip(self.boundaries, self.boundaries[1:])):
            raise ValueError(f"BucketByLength: boundaries must increase; got {self.boundaries}.")
        self.length_keys = None if length_keys is None else list(length_keys)
        self.length_axis = length_axis
        self.strict_pad_on_len = strict_pad_on_len
        self.drop_remainder = bool(drop_remainder)

    def build(self, upstream: Node | None) -> Node:
        return _BucketNode(self, upstream)


class _BucketNode(Node):
    name = "BucketByLength"

    def __init__(self, stage: BucketByLength, upstream: Node | None):
        super().__init__(upstream)
        self.stage = stage
        self.buckets: list[list[tuple[int, Any]]] = [[] for _ in stage.batch_sizes]
        self.leftover: list[Any] = []  # batches made of the remainders (drop_remainder=False)
        self.index = 0

    def _batch(self, b: int) -> Any:
        items, self.buckets[b] = self.buckets[b], []
        boundary = self.stage.boundaries[b] if b < len(self.stage.boundaries) else None
        return stack_examples([x for _, x in items], [i for i, _ in items], "BucketByLength",
                              boundary, self.stage.strict_pad_on_len)

    def __next__(self) -> Any:
        stage = self.stage
        while not self.leftover:
            try:
                example = next(self.upstream)
            except StopIteration:
                n = sum(len(b) for b in self.buckets)
                if n and stage.drop_remainder:
                    self.count("dropped_remainder", n,
                               f"dropped {n} examples left in partly filled buckets at the end "
                               f"of the stream (pass drop_remainder=False to keep them)")
                    self.buckets = [[] for _ in stage.batch_sizes]
                elif n:
                    self.leftover = [self._batch(b) for b in range(len(self.buckets))
                                     if self.buckets[b]]
                    continue
                raise StopIteration from None
            if stage.length_fn is None:
                length = length_of(example, stage.length_keys, stage.length_axis,
                                   "BucketByLength")
            else:
                length = stage.length_fn(example)
            b = bisect.bisect_left(stage.boundaries, length)
            if b == len(stage.batch_sizes):
                raise ValueError(
                    f"BucketByLength: example {self.index} has length {length}, longer than the "
                    f"last boundary {stage.boundaries[-1]}, and there is no bucket for longer "
                    f"examples. Give one more batch size (for the longest examples) or drop "
                    f"them first with data.FilterByLength({stage.boundaries[-1]})."
                )
            self.buckets[b].append((self.index, example))
            self.index += 1
            if len(self.buckets[b]) == stage.batch_sizes[b]:
                return self._batch(b)
        return self.leftover.pop(0)

    def _get_state(self) -> dict:
        return {"buckets": _state.encode(self.buckets), "leftover": _state.encode(self.leftover),
                "index": self.index}

    def _set_state(self, state: dict) -> None:
        self.buckets = [[tuple(item) for item in b] for b in _state.decode(state["buckets"])]
        self.leftover = _state.decode(state["leftover"])
        self.index = int(state["index"])


class UnBatch(Stage):
    """Splits batches (tuples of arrays with one leading size) back into examples."""

    def build(self, upstream: Node | None) -> Node:
        return _UnBatchNode(upstream)


class _UnBatchNode(Node):
    name = "UnBatch"

    def __init__(self, upstream: Node | None):
        super().__init__(upstream)
        self.pending: list[Any] = []
        self.index = 0

    def __next__(self) -> Any:
        while not self.pending:
            batch = next(self.upstream)
            parts = batch if isinstance(batch, tuple) else (batch,)
            sizes = {np.shape(x)[0] if np.ndim(x) else None for x in parts}
            if len(sizes) != 1 or None in sizes:
                raise ValueError(
                    f"UnBatch: batch {self.index} has leading sizes "
                    f"{[np.shape(x)[:1] for x in parts]}; all components need the same batch size."
                )
            n = sizes.pop()
            self.pending = [tuple(np.asarray(x)[i] for x in parts) if isinstance(batch, tuple)
                            else np.asarray(batch)[i] for i in range(n)]
            self.index += 1
        return self.pending.pop(0)

    def _get_state(self) -> dict:
        return {"pending": _state.encode(self.pending), "index": self.index}

    def _set_state(self, state: dict) -> None:
        self.pending = _state.decode(state["pending"])
        self.index = int(state["index"])


def batch(generator: Any, batch_size: int) -> Any:
    """Trax's function form of :class:`Batch`."""
    return Batch(batch_size)(generator)


def bucket_by_length(generator: Any, length_fn: Callable[[Any], int], boundaries: Sequence[int],
                     batch_sizes: Sequence[int], strict_pad_on_len: bool = False) -> Any:
    """Trax's function form of :class:`BucketByLength`, measuring examples with ``length_fn``.

    >>> examples = [(np.ones(n), np.ones(n)) for n in (3, 9, 4, 8)]
    >>> batches = bucket_by_length(iter(examples), lambda ex: len(ex[0]), [5], [2, 2])
    >>> [b[0].shape for b in batches]
    [(2, 5), (2, 9)]
    """
    return BucketByLength(boundaries, batch_sizes, strict_pad_on_len=strict_pad_on_len,
                          length_fn=length_fn)(generator)
