"""``Shuffle``: a seeded streaming shuffle with a buffer (Trax's ``data.Shuffle``).

>>> from retrax import data
>>> out = list(data.Shuffle(3, seed=1)(range(6)))
>>> sorted(out), out != list(range(6))
([0, 1, 2, 3, 4, 5], True)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrax.data import _state
from retrax.data.stream import Node, Stage, logger

__all__ = ["Shuffle", "shuffle"]


class Shuffle(Stage):
    """Shuffles the stream with a buffer of ``queue_size`` examples (seeded).

    The buffer is filled first; then each new example replaces a randomly
    chosen one, which is yielded. When the input ends, the buffer is shuffled
    and drained (as in Trax, with retrax's own seeded generator instead of
    NumPy's global one).

    Args:
      queue_size: examples in the buffer (the span of the shuffle).
      seed: keyword-only; the same seed gives the same order.
    """

    def __init__(self, queue_size: int = 1024, *, seed: int = 0):
        if not isinstance(queue_size, (int, np.integer)) or queue_size < 1:
            raise ValueError(f"Arg queue_size ({queue_size}) is less than 1.")
        if queue_size == 1:
            logger.warning("Shuffle: a queue_size of 1 does not shuffle.")
        self.queue_size = int(queue_size)
        self.seed = int(seed)

    def build(self, upstream: Node | None) -> Node:
        return _ShuffleNode(self, upstream)

    def __repr__(self) -> str:
        return f"data.Shuffle({self.queue_size}, seed={self.seed})"


class _ShuffleNode(Node):
    name = "Shuffle"

    def __init__(self, stage: Shuffle, upstream: Node | None):
        super().__init__(upstream)
        self.size = stage.queue_size
        self.rng = np.random.default_rng(stage.seed)
        self.queue: list[Any] = []
        self.draining = False
        self._cache = _state.EncodeCache()

    def _start_draining(self) -> None:
        self.draining = True
        order = self.rng.permutation(len(self.queue))
        self.queue = [self.queue[i] for i in order[::-1]]  # popped from the end

    def __next__(self) -> Any:
        if not self.draining:
            try:
                while len(self.queue) < self.size:
                    self.queue.append(next(self.upstream))
                new = next(self.upstream)
            except StopIteration:
                self._start_draining()
            else:
                i = int(self.rng.integers(self.size))
                out, self.queue[i] = self.queue[i], new
                return out
        if self.queue:
            return self.queue.pop()
        raise StopIteration

    def _get_state(self) -> dict:
        return {"queue": self._cache.encode_list(self.queue), "draining": self.draining,
                "rng": self.rng.bit_generator.state}

    def _set_state(self, state: dict) -> None:
        self.queue = _state.decode(state["queue"])
        self.draining = bool(state["draining"])
        self.rng.bit_generator.state = state["rng"]


def shuffle(samples: Any, queue_size: int) -> Any:
    """Trax's function form of :class:`Shuffle`."""
    return Shuffle(queue_size)(samples)
