"""Toy sequence tasks in the quick start's format: ``(x, x, loss_weights)``.

Each batch row is ``[0, source..., 0, answer...]``; the loss weights are 0 on
the prefix and 1 on the answer, so a language model learns to continue the
prefix with the answer. Every generator is seeded (no global NumPy state).

>>> batch = next(reverse_ints_task(2, length=3, seed=0))
>>> x, y, w = batch
>>> x.shape, w[0].tolist()
((2, 8), [0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
>>> (x[:, 5:] == x[:, 1:4][:, ::-1]).all()
np.True_
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

__all__ = ["reverse_ints_task", "sort_ints_task", "copy_ints_task", "sequence_task"]

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


def sequence_task(transform: Callable[[np.ndarray], np.ndarray], batch_size: int,
                  length: int = 4, low: int = 1, high: int = 31, seed: int = 0) -> Iterator[Batch]:
    """Endless batches ``(x, x, w)`` of ``[0, src, 0, transform(src)]`` rows.

    Args:
      transform: maps the ``(batch_size, length)`` sources to the answers.
      batch_size: rows per batch.
      length: source length.
      low, high: sources are drawn uniformly from ``[low, high)``.
      seed: seed of the generator's own random state.
    """
    for name, value in (("batch_size", batch_size), ("length", length)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"sequence_task: {name} must be a positive int; got {value!r}.")
    if not 0 < low < high:
        raise ValueError(f"sequence_task: need 0 < low < high (0 is the separator); got {low}, {high}.")
    rng = np.random.default_rng(seed)
    zero = np.zeros((batch_size, 1), np.int32)
    answer_len = None
    while True:
        source = rng.integers(low, high, (batch_size, length), dtype=np.int32)
        answer = np.asarray(transform(source), np.int32)
        answer_len = answer.shape[1] if answer_len is None else answer_len
        x = np.concatenate([zero, source, zero, answer], axis=1)
        weights = np.concatenate([np.zeros((batch_size, length + 2), np.float32),
                                  np.ones((batch_size, answer_len), np.float32)], axis=1)
        yield x, x, weights


def reverse_ints_task(batch_size: int, length: int = 4, seed: int = 0) -> Iterator[Batch]:
    """The quick start's reverse task: the answer is the source reversed."""
    return sequence_task(lambda s: np.flip(s, 1), batch_size, length, seed=seed)


def sort_ints_task(batch_size: int, length: int = 4, seed: int = 0) -> Iterator[Batch]:
    """The pretrained model's task: the answer is the source sorted ascending."""
    return sequence_task(lambda s: np.sort(s, axis=1), batch_size, length, seed=seed)


def copy_ints_task(batch_size: int, length: int = 4, seed: int = 0) -> Iterator[Batch]:
    """The answer is the source itself."""
    return sequence_task(lambda s: s, batch_size, length, seed=seed)
