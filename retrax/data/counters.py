"""Counting and skipping examples by name: ``CountAndSkip``, ``data_counters``, ``UniformlySeek``.

Trax's way to resume reading data: ``data.CountAndSkip('train')`` counts the
examples it passes in the global dict :data:`data_counters` (``{'train': n}``);
a stream made later skips the first ``data_counters['train']`` examples, so a
deterministic pipeline continues where the counted one stopped.
:func:`save_data_counters` / :func:`load_data_counters` write and read the dict
next to a checkpoint, in Trax's file format (``data_counters<host>.pkl``).

>>> from retrax import data
>>> data.inputs.data_counters.pop('doc', None)
>>> pipeline = data.Serial(lambda _: iter(range(10)), data.CountAndSkip('doc'))
>>> first = pipeline()
>>> next(first), next(first), data.inputs.data_counters['doc']
(0, 1, 2)
>>> next(pipeline())  # a new stream skips the 2 examples already counted
2

``training.Loop`` does not need this: it saves every retrax pipeline's
position with its checkpoints. It keeps the counters right all the same, as
Trax's Loop does: each checkpoint holds them (and Trax's counters file is
written beside Trax's layout), and a resume restores them. Both together do
not skip twice: restoring a stream's position sets its counter to the
examples it had passed then, and the examples a restore re-draws (for
pipelines with plain Python functions) are not skipped again. A ``Prefetch`` after ``CountAndSkip`` counts the
examples it reads ahead (as in Trax); the Loop's own prefetch does not: it
draws inside :func:`counting_aside` and adds the counts with
:func:`add_counts` when training takes the batch, so the counters say how
many examples training consumed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import threading
from collections.abc import Iterator
from typing import Any

from retrax import io as rio
from retrax.data.stream import Node, Stage

__all__ = ["CountAndSkip", "count_and_skip", "data_counters", "save_data_counters",
           "load_data_counters", "UniformlySeek", "counting_aside", "add_counts",
           "changes_watched"]

logger = logging.getLogger("retrax.data")

data_counters: dict[str, int] = {}
"""``{name: examples counted}`` for every :class:`CountAndSkip`; changed in place only."""

_aside = threading.local()  # .counts: the dict counting_aside() collects into, in this thread


@contextlib.contextmanager
def counting_aside() -> Iterator[dict[str, int]]:
    """Within the block, in this thread, counts go to the yielded dict, not :data:`data_counters`.

    For a reader that draws ahead of its consumer (the Loop's prefetch): the
    examples it draws are counted once :func:`add_counts` adds the dict, when
    the consumer takes them. Skipping still sees both: an example is skipped
    while ``data_counters[name]`` plus the counts aside exceed what was read.

    >>> from retrax import data
    >>> from retrax.data import counters
    >>> counters.data_counters.pop('aside', None)
    >>> stream = data.Serial(lambda _: iter(range(5)), data.CountAndSkip('aside'))()
    >>> with counters.counting_aside() as drawn:
    ...     ahead = next(stream)
    >>> counters.data_counters.get('aside'), drawn
    (None, {'aside': 1})
    >>> counters.add_counts(drawn)  # the consumer took the example
    >>> counters.data_counters['aside']
    1
    """
    outer = getattr(_aside, "counts", None)
    counts: dict[str, int] = {}
    _aside.counts = counts
    try:
        yield counts
    finally:
        _aside.counts = outer


def add_counts(counts: dict[str, int]) -> None:
    """Adds counts collected by :func:`counting_aside` to :data:`data_counters`."""
    for key, n in counts.items():
        _set(key, data_counters.get(key, 0) + n)


_watchers: list[set[str]] = []  # one set per changes_watched() block open


@contextlib.contextmanager
def changes_watched() -> Iterator[set[str]]:
    """Collects the names of the counters that streams set within the block (in any thread).

    The Loop restores data positions inside one, then gives the counters no
    stream set the values its checkpoint saved.

    >>> from retrax import data
    >>> from retrax.data import counters
    >>> with counters.changes_watched() as changed:
    ...     _ = next(data.Serial(lambda _: iter(range(3)), data.CountAndSkip('watched'))())
    >>> sorted(changed)
    ['watched']
    """
    changed: set[str] = set()
    _watchers.append(changed)
    try:
        yield changed
    finally:
        _watchers.remove(changed)


def _set(key: str, value: int) -> None:
    data_counters[key] = value
    for changed in _watchers:
        changed.add(key)


class CountAndSkip(Stage):
    """Counts the examples passing in ``data_counters[name]``; skips those counted before.

    A stream made with this stage reads its input from the start, drops the
    first ``data_counters[name]`` examples and then adds one to the counter
    for every example it yields (Trax's semantics; the counter is read at
    every example, so resetting it to 0 makes a new stream start over).
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not name:
            raise ValueError(f"CountAndSkip: name must be a non-empty string; got {name!r}.")
        self.counter_name = name

    def build(self, upstream: Node | None) -> Node:
        return _CountNode(self, upstream)

    def __repr__(self) -> str:
        return f"data.CountAndSkip({self.counter_name!r})"


class _CountNode(Node):
    name = "CountAndSkip"

    def __init__(self, stage: CountAndSkip, upstream: Node | None):
        super().__init__(upstream)
        self.key = stage.counter_name
        self.seen = 0  # Examples this stream has read from its input.

    def __next__(self) -> Any:
        while True:
            example = next(self.upstream)
            self.seen += 1
            aside = getattr(_aside, "counts", None)
            if self.replaying:  # Re-drawn to restore a position: that is the skip already.
                _set(self.key, max(data_counters.get(self.key, 0), self.seen))
                return example
            if aside is not None:  # Drawn ahead: counted when the consumer takes it.
                if self.seen > data_counters.get(self.key, 0) + aside.get(self.key, 0):
                    aside[self.key] = aside.get(self.key, 0) + 1
                    return example
            else:
                done = data_counters.setdefault(self.key, 0)
                if self.seen > done:
                    _set(self.key, done + 1)
                    return example
            self.count("skipped")  # Intended: counted in stats, not warned about.

    def _get_state(self) -> dict:
        return {"seen": self.seen}

    def _set_state(self, state: dict) -> None:
        self.seen = int(state["seen"])
        # The restored position is what has been counted (examples drawn since, e.g. read
        # ahead by a Prefetch, belong to the abandoned run).
        _set(self.key, self.seen)


def count_and_skip(generator: Any, name: str) -> Any:
    """Trax's function form of :class:`CountAndSkip`."""
    return CountAndSkip(name)(generator)


def _counters_file(output_dir: str, host_id: int | None) -> str:
    if host_id is None:
        import jax  # Only here: the data pipeline itself needs no JAX.
        host_id = jax.process_index()
    return os.path.join(os.fspath(output_dir), f"data_counters{int(host_id)}.pkl")


def save_data_counters(output_dir: str, host_id: int | None = None) -> None:
    """Writes :data:`data_counters` to ``output_dir/data_counters<host_id>.pkl`` (Trax's file)."""
    rio.write_bytes_atomic(_counters_file(output_dir, host_id),
                           pickle.dumps({str(k): int(v) for k, v in data_counters.items()}))


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refers to {module}.{name}; a counters file holds only "
                                     f"a dict of names and ints")


def load_data_counters(output_dir: str, host_id: int | None = None) -> None:
    """Replaces the contents of :data:`data_counters` with the file :func:`save_data_counters` wrote.

    A missing file leaves the counters unchanged (logged, as in Trax). The file
    is read without running anything it may name: only a dict of str to int
    is accepted.
    """
    path = _counters_file(output_dir, host_id)
    fs, p = rio.filesystem(path)
    if not fs.exists(p):
        logger.info("Did not load data counters as %s does not exist.", path)
        return
    raw = rio.read_bytes(path, "Data counters file")
    try:
        loaded = _PlainUnpickler(io.BytesIO(raw)).load()
    except Exception as err:
        raise ValueError(f"{path} is not a data counters file: {err}.") from err
    if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in loaded.items()):
        raise ValueError(f"{path} is not a data counters file (expected a dict of names to ints).")
    data_counters.clear()
    data_counters.update(loaded)


class UniformlySeek(Stage):
    """Host ``host_id`` of ``n_hosts`` starts at example ``host_id * dataset_size // n_hosts``.

    Skips that many examples of its input once, before yielding the rest, so
    hosts reading one deterministic dataset start at evenly spread places.
    ``host_id`` and ``n_hosts`` default to JAX's process index and count.
    """

    def __init__(self, name: str | None = None, host_id: int | None = None,
                 n_hosts: int | None = None, dataset_size: int | None = None):
        if not name:
            raise ValueError("UniformlySeek: give the dataset a name (it is logged).")
        if not dataset_size:
            dataset_size = 2 ** 18
            logger.error("No dataset size given to UniformlySeek, assuming: %d", dataset_size)
        self.seek_name = name
        self.host_id, self.n_hosts, self.dataset_size = host_id, n_hosts, int(dataset_size)

    def build(self, upstream: Node | None) -> Node:
        return _SeekNode(self, upstream)


class _SeekNode(Node):
    name = "UniformlySeek"

    def __init__(self, stage: UniformlySeek, upstream: Node | None):
        super().__init__(upstream)
        host_id, n_hosts = stage.host_id, stage.n_hosts
        if host_id is None or not n_hosts:
            import jax  # Only here: the data pipeline itself needs no JAX.
            host_id = jax.process_index() if host_id is None else host_id
            n_hosts = n_hosts or jax.process_count()
        if not 0 <= host_id < n_hosts:
            raise ValueError(f"UniformlySeek: host_id={host_id} is not in [0, n_hosts={n_hosts}).")
        self.to_skip = int(host_id) * (stage.dataset_size // int(n_hosts))
        self.where = f"UniformlySeek[{stage.seek_name}] host {host_id}"

    def __next__(self) -> Any:
        if self.to_skip:
            logger.info("%s: seeking to example %d.", self.where, self.to_skip)
            while self.to_skip:
                next(self.upstream)
                self.to_skip -= 1
        return next(self.upstream)

    def _get_state(self) -> dict:
        return {"to_skip": self.to_skip}

    def _set_state(self, state: dict) -> None:
        self.to_skip = int(state["to_skip"])
