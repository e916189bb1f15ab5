"""The Loop's data streams: batch counts, resumable positions, background prefetch.

Each data iterator a Loop uses (tasks sharing an iterator share it) becomes
one :class:`Stream`. It counts the batches it hands out, so a resumed run can
skip as many; for an iterator with ``state_dict()``/``load_state_dict(d)`` (a
``retrax.data`` pipeline) it knows the position after the last batch handed
out, so a resumed run restores it instead. With prefetch a :class:`Prefetcher`
draws the next batch in a background thread while the current step runs.

Counters (``data.CountAndSkip``, ``data.inputs.data_counters``) count the
batches training took, not those drawn ahead: a stream draws inside
``counting_aside`` and adds the counts when it hands the batch out (a batch
drawn ahead and then abandoned, by a restore or the end of the Loop, is
never counted), so after ``loop.run(1)`` the counter holds the sample batch
and the one batch trained on, as in Trax.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from retrax.data.counters import add_counts, counting_aside

__all__ = ["Prefetcher", "Stream", "shared_streams"]


class Prefetcher:
    """Runs ``draw()`` in a background thread, one call ahead of ``take()``, in order.

    An exception of ``draw()`` (``StopIteration`` included) is re-raised by the
    ``take()`` that would have returned its result; nothing is drawn ahead then.
    ``accept(result)``, if given, runs in the caller's thread on each result
    ``take()`` returns, before the next draw starts.

    One worker thread serves the draws while they keep coming (starting a
    thread per batch cost more host time than a small model's step); it ends
    after ``idle_s`` seconds without a request, so nothing lingers (or holds
    the data) long after the Loop.
    """

    def __init__(self, draw: Callable[[], Any], accept: Callable[[Any], None] | None = None,
                 idle_s: float = 1.0):
        self._draw = draw
        self._accept = accept
        self._idle_s = idle_s
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # guards _worker_alive against a worker timing out
        self._worker_alive = False
        self.pending = False

    def _serve(self) -> None:
        while True:
            try:
                self._requests.get(timeout=self._idle_s)
            except queue.Empty:
                with self._lock:
                    if self._requests.empty():
                        self._worker_alive = False
                        return
                continue
            try:
                result = (True, self._draw())
            except BaseException as err:  # Re-raised in the Loop's thread by take().
                result = (False, err)
            self._results.put(result)

    def request(self) -> None:
        with self._lock:
            self._requests.put(None)
            if not self._worker_alive:
                self._worker_alive = True
                threading.Thread(target=self._serve, name="retrax-prefetch", daemon=True).start()
        self.pending = True

    def take(self, ahead: bool = True) -> Any:
        """The next result; with ``ahead`` the draw after it starts now."""
        if not self.pending:
            self.request()
        ok, value = self._results.get()
        self.pending = False
        if not ok:
            raise value
        if self._accept is not None:
            self._accept(value)
        if ahead:
            self.request()
        return value

    def cancel(self) -> None:
        """Waits for a draw in flight and discards it."""
        if self.pending:
            self._results.get()
            self.pending = False


class Stream:
    """The batches of one data iterator (shared by the tasks using it).

    Counts them; for a resumable iterator (``state_dict``/``load_state_dict``)
    knows its position after the last batch handed out; with ``prefetch``
    draws the next batch in a background thread.
    """

    def __init__(self, iterator: Any, prefetch: bool = False):
        self.iterator = iterator
        self.consumed = 0
        self.resumable = (callable(getattr(iterator, "state_dict", None))
                          and callable(getattr(iterator, "load_state_dict", None)))
        self._state: Any = None
        self._prefetcher = Prefetcher(self._draw, accept=self._accept) if prefetch else None

    def _draw(self) -> tuple:
        with counting_aside() as counts:  # Counted when handed out (see the module doc).
            batch = tuple(next(self.iterator))
        # With prefetch the iterator runs one batch ahead: snapshot its position now.
        snapshot = self._prefetcher is not None and self.resumable
        return batch, (self.iterator.state_dict() if snapshot else None), counts

    @staticmethod
    def _accept(drawn: tuple) -> None:
        add_counts(drawn[2])

    def next(self, ahead: bool = True) -> tuple:
        """The next batch; with prefetch and ``ahead``, the one after it is drawn meanwhile.

        The Loop passes ``ahead=False`` for the last step of a ``run``, so
        between runs the iterator is where training left it.
        """
        if self._prefetcher is not None:
            drawn = self._prefetcher.take(ahead)  # accepted before the next draw starts
        else:
            drawn = self._draw()
            self._accept(drawn)
        batch, self._state, _ = drawn
        self.consumed += 1
        return batch

    def state(self) -> Any:
        """The iterator's position after the last batch handed out (resumable iterators)."""
        if self._prefetcher is not None and self.consumed > 0:
            return self._state
        return self.iterator.state_dict()

    def restore(self, state: Any, consumed: int) -> None:
        if self._prefetcher is not None:
            self._prefetcher.cancel()
        self.iterator.load_state_dict(state)
        self.consumed, self._state = consumed, state

    def skip(self, n: int, what: str) -> None:
        for i in range(n):
            try:
                self.next()
            except StopIteration:
                raise ValueError(
                    f"Resuming: {what} ran out after {i} batches while skipping the {n} "
                    f"batches the interrupted run had used."
                ) from None



def shared_streams(groups: Sequence[Sequence[Any]], prefetch: bool = False) -> list[list[Stream]]:
    """One :class:`Stream` per distinct iterator, for each group of iterators.

    Tasks sharing one iterator (in a group or across groups) share one stream,
    so they share its batches and its count.
    """
    streams: dict[int, Stream] = {}
    out = []
    for group in groups:
        for iterator in group:
            if id(iterator) not in streams:
                streams[id(iterator)] = Stream(iterator, prefetch=prefetch)
        out.append([streams[id(iterator)] for iterator in group])
    return out
