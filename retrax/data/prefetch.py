"""``Prefetch``: the stages before it run ahead in a background thread (Trax's ``data.Prefetch``).

``data.Serial(source, data.Tokenize(...), data.Batch(32), data.Prefetch(4))``
prepares up to 4 batches while the consumer works on the current one. Trax
runs the generator in a thread too (``multiprocessing.dummy``). Examples come
out in the same order as without it, and an error raised upstream is raised
by the ``next()`` that would have returned that example.

The stream's position stays exact: the thread records the position of the
stages before ``Prefetch`` right after drawing each example, and
``stream.state_dict()`` saves the one matching the last example handed out,
not the read-ahead. (``training.Loop`` also draws each next batch in the
background by default, ``Loop(prefetch=True)``; this stage prefetches inside
the pipeline, further ahead.)

>>> from retrax import data
>>> stream = data.Serial(range(5), lambda g: (x * x for x in g), data.Prefetch(2))()
>>> list(stream)
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from retrax.data.stream import Node, Stage

__all__ = ["Prefetch"]

_POLL_S = 0.05  # How often a blocked worker checks whether it should stop.


class Prefetch(Stage):
    """Draws up to ``n_prefetch`` examples ahead in a background thread.

    Args:
      n_prefetch: how many examples may wait, ready, for the consumer.
    """

    def __init__(self, n_prefetch: int = 2):
        if isinstance(n_prefetch, bool) or not isinstance(n_prefetch, (int, np.integer)) \
                or n_prefetch < 1:
            raise ValueError(f"Prefetch: n_prefetch must be a positive int; got {n_prefetch!r}.")
        self.n_prefetch = int(n_prefetch)

    def build(self, upstream: Node | None) -> Node:
        return _PrefetchNode(self, upstream)

    def __repr__(self) -> str:
        return f"data.Prefetch({self.n_prefetch})"


def _chain(last: Node | None) -> list[Node]:
    nodes = []
    while last is not None:
        nodes.append(last)
        last = last.upstream
    return nodes[::-1]


class _Worker:
    """The background thread: draws from the upstream and queues (kind, value, position)."""

    def __init__(self, upstream: Node, chain: list[Node], size: int, snapshot: bool):
        self.upstream, self.chain, self.snapshot = upstream, chain, snapshot
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="retrax-data-prefetch", daemon=True)
        self.thread.start()

    def _put(self, item: tuple) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                example = next(self.upstream)
            except StopIteration:
                self._put(("end", None, None))
                return
            except BaseException as err:  # Re-raised by the consumer's next().
                self._put(("error", err, None))
                return
            position = [n.get_state() for n in self.chain] if self.snapshot else None
            if not self._put(("item", example, position)):
                return

    def close(self) -> None:
        """Stops the thread and waits for it (it finishes the draw in progress)."""
        self.stop.set()
        self.thread.join()


class _PrefetchNode(Node):
    name = "Prefetch"
    holds_upstream_state = True

    def __init__(self, stage: Prefetch, upstream: Node | None):
        super().__init__(upstream)
        self.size = stage.n_prefetch
        self.chain = _chain(upstream)
        self.resumable = all(n.resumable for n in self.chain)
        self.position = [n.get_state() for n in self.chain] if self.resumable else None
        self.done = False
        self.worker: _Worker | None = None
        self.pending: list[tuple] = []  # Drawn by a closed worker, not yet handed out.

    def _take(self) -> tuple:
        if self.pending:
            return self.pending.pop(0)
        if self.worker is None:
            self.worker = _Worker(self.upstream, self.chain, self.size, self.resumable)
        return self.worker.queue.get()

    def __next__(self) -> Any:
        if self.done:
            raise StopIteration
        kind, value, position = self._take()
        if kind == "item":
            self.position = position
            return value
        self.worker = None  # It has returned.
        if kind == "end":
            self.done = True
            raise StopIteration
        raise value

    def close(self) -> None:
        """Stops the background thread (nothing drawn is lost; ``next()`` restarts it)."""
        if self.worker is not None:
            self.worker.close()
            while True:
                try:
                    self.pending.append(self.worker.queue.get_nowait())
                except queue.Empty:
                    break
            self.worker = None

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop.set()

    def _get_state(self) -> dict:
        return {"upstream": self.position, "done": self.done}

    def _set_state(self, state: dict) -> None:
        self.close()
        self.pending = []  # The read-ahead belongs to the old position.
        position = state["upstream"]
        if position is None or len(position) != len(self.chain):
            raise ValueError("Prefetch: the saved position does not match the stages before it.")
        for node, node_state in zip(self.chain, position):
            node.set_state(node_state)
        self.position = position
        self.done = bool(state["done"])
