"""Cutting token sequences into pieces: ``generate_sequential_chunks`` and ``PrefixLM``.

Both take a stream of 1-D token sequences (arrays or lists) and yield several
pieces per sequence, sliced from it (a list gives lists, an array arrays).

>>> from retrax import data
>>> list(data.generate_sequential_chunks(max_length=3)([[1, 2, 3, 4, 5, 6, 7]]))
[[1, 2, 3], [4, 5, 6], [7]]
>>> list(data.PrefixLM(input_length=2, output_length=3)([[1, 2, 3, 4, 5, 6, 7, 8]]))
[([1, 2], [3, 4, 5]), ([6, 7], [8])]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrax.data import _state
from retrax.data.stream import Node, Stage

__all__ = ["generate_sequential_chunks", "PrefixLM", "SequentialChunks"]


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive int; got {value!r}.")
    return int(value)


def token_length(example: Any, index: int, where: str) -> int:
    """The length of a 1-D token sequence, or a clear error for anything else."""
    if isinstance(example, (str, bytes)):
        raise TypeError(f"{where}: example {index} is a {type(example).__name__}; it takes token "
                        f"sequences. Tokenize text first (data.Tokenize).")
    if isinstance(example, (list, tuple)) and example and not np.isscalar(example[0]):
        raise TypeError(
            f"{where}: example {index} is a {type(example).__name__} of "
            f"{len(example)} components; it takes a stream of 1-D token sequences. Select "
            f"one first, e.g. `lambda g: (x[0] for x in g)`."
        )
    if np.ndim(example) != 1:
        raise ValueError(f"{where}: example {index} has shape {np.shape(example)}; it takes 1-D "
                         f"token sequences.")
    return len(example)


class _SplitStage(Stage):
    """A stage yielding the pieces ``split(example, index)`` of each input example."""

    def split(self, example: Any, index: int, node: Node) -> list[Any]:
        """The pieces of one example; ``node.count`` records what is dropped."""
        raise NotImplementedError

    def build(self, upstream: Node | None) -> Node:
        return _SplitNode(self, upstream)


class _SplitNode(Node):
    def __init__(self, stage: _SplitStage, upstream: Node | None):
        super().__init__(upstream)
        self.stage = stage
        self.name = stage.name
        self.pending: list[Any] = []
        self.index = 0

    def __next__(self) -> Any:
        while not self.pending:
            example = next(self.upstream)
            self.pending = self.stage.split(example, self.index, self)
            self.index += 1
        return self.pending.pop(0)

    def _get_state(self) -> dict:
        return {"pending": _state.encode(self.pending), "index": self.index}

    def _set_state(self, state: dict) -> None:
        self.pending = _state.decode(state["pending"])
        self.index = int(state["index"])


class SequentialChunks(_SplitStage):
    """The stage :func:`generate_sequential_chunks` returns."""

    name = "SequentialChunks"

    def __init__(self, max_length: int | None = None):
        self.max_length = None if max_length is None else _positive(
            max_length, "generate_sequential_chunks: max_length")

    def split(self, example: Any, index: int, node: Node) -> list[Any]:
        n = token_length(example, index, "generate_sequential_chunks")
        if self.max_length is None or n <= self.max_length:
            return [example]
        return [example[i:i + self.max_length] for i in range(0, n, self.max_length)]


def generate_sequential_chunks(max_length: int | None = None) -> SequentialChunks:
    """Cuts each sequence into consecutive chunks of ``max_length`` (the last may be shorter).

    ``max_length=None`` passes sequences whole (Trax fails there).
    """
    return SequentialChunks(max_length)


class PrefixLM(_SplitStage):
    """Cuts each sequence into ``(inputs, targets)`` pairs for prefix language models.

    From the start of the sequence: ``input_length`` tokens are the inputs and
    up to ``output_length`` following tokens the targets; the next pair starts
    after those targets. A pair is made only while its inputs are complete and
    at least one target token follows (Trax's rule), so a short tail is dropped
    (its tokens are counted in ``stats()['PrefixLM']['dropped_tokens']``).
    """

    name = "PrefixLM"

    def __init__(self, input_length: int = 128, output_length: int = 512):
        self.input_length = _positive(input_length, "PrefixLM: input_length")
        self.output_length = _positive(output_length, "PrefixLM: output_length")

    def split(self, example: Any, index: int, node: Node) -> list[Any]:
        n = token_length(example, index, "PrefixLM")
        pairs, start = [], 0
        while start + self.input_length < n:
            middle = start + self.input_length
            end = min(middle + self.output_length, n)
            pairs.append((example[start:middle], example[middle:end]))
            start = end
        if start < n:
            node.count("dropped_tokens", n - start,
                       f"dropped the last {n - start} tokens of example {index}: fewer than "
                       f"input_length={self.input_length} + 1 were left")
        return pairs
