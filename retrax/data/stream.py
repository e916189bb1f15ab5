"""Stream functions, ``data.Serial`` and resumable streams (Trax's ``trax.data``).

A *stream function* maps a stream of examples to another stream, as in Trax:
``Shuffle()(examples)``. ``data.Serial(f1, f2, ...)`` chains them (nested lists
and Serials are flattened); the first may be a *source* that takes no input
(``TextLines``, ``TFDS``, a Python list or generator). Calling the Serial gives
a :class:`Stream`, an iterator of examples::

    pipeline = data.Serial(data.TextLines('corpus/*.txt'), data.Tokenize(vocab_type='char'),
                           data.Shuffle(), data.Batch(8))
    stream = pipeline()        # or iter(pipeline)
    batch = next(stream)

Any Python function from an iterator to an iterator works as a stage too
(``lambda g: map(f, g)``), as in Trax.

**Resumable.** Every retrax stage keeps its position in plain data:
``stream.state_dict()`` returns it (JSON-safe: source position, buffered
examples, RNG state, counters) and ``stream.load_state_dict(d)`` puts a fresh
stream of the same pipeline exactly there. ``training.Loop`` saves it in each
checkpoint and restores it on resume. If a stage is a plain Python function,
its inner state cannot be read; the stream then records how many examples it
yielded and, on load, re-draws and discards that many (exact when the
pipeline is deterministic, e.g. seeded).

**Nothing is lost silently.** Stages that drop, truncate, pad or replace data
count it in ``stream.stats()`` (``stream.report()`` in words) and log the
first case of each kind on the ``retrax.data`` logger. A stream that yields no
example at all raises :class:`EmptyStreamError` explaining what each stage did.

>>> from retrax import data
>>> stream = data.Serial([1, 2, 3, 4, 5], lambda g: (x * 10 for x in g))()
>>> [next(stream), next(stream)]
[10, 20]
>>> saved = stream.state_dict()
>>> fresh = data.Serial([1, 2, 3, 4, 5], lambda g: (x * 10 for x in g))()
>>> fresh.load_state_dict(saved)
>>> list(fresh)
[30, 40, 50]
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["Serial", "Stream", "Stage", "MapStage", "Node", "IterableSource", "EmptyStreamError",
           "DROP"]

logger = logging.getLogger("retrax.data")

STATE_FORMAT = "retrax.data.stream/1"

DROP = object()
"""Returned by :meth:`MapStage.apply` to drop an example (it must also be counted)."""


class EmptyStreamError(ValueError):
    """A data stream ended before yielding a single example."""


class Node:
    """One stage of a running pipeline: an iterator over its upstream, with a position.

    Subclasses implement ``__next__`` and, when they keep state, ``_get_state``
    and ``_set_state`` (JSON-safe dicts). ``stats`` counts what the stage
    dropped, truncated or replaced; :meth:`count` adds to it and logs the
    first occurrence of each kind.
    """

    name = "Node"
    resumable = True  # False: its position cannot be read (restored by re-skipping).
    # True: get_state/set_state also cover every upstream node (e.g. Prefetch, whose
    # upstream runs ahead in another thread); the Stream then saves only this node onward.
    holds_upstream_state = False
    # True while Stream.load_state_dict re-draws examples to reach a saved position: a
    # stage that skips by an outside record (CountAndSkip) must not skip them again.
    replaying = False

    def __init__(self, upstream: Node | None):
        self.upstream = upstream
        self.stats: dict[str, int] = {}
        self._warned: set[str] = set()

    def __iter__(self) -> Node:
        return self

    def __next__(self) -> Any:
        raise NotImplementedError

    def count(self, key: str, n: int = 1, message: str | None = None) -> None:
        """Adds ``n`` to ``stats[key]``; logs ``message`` the first time ``key`` is counted."""
        self.stats[key] = self.stats.get(key, 0) + n
        if message is not None and key not in self._warned:
            self._warned.add(key)
            logger.warning("%s: %s (further cases are counted in stream.stats()['%s']['%s']).",
                           self.name, message, self.name, key)

    def get_state(self) -> dict:
        return {"stats": dict(self.stats), **self._get_state()}

    def set_state(self, state: dict) -> None:
        self.stats = dict(state.get("stats", {}))
        self._set_state(state)

    def _get_state(self) -> dict:
        return {}

    def _set_state(self, state: dict) -> None:
        del state


class Stage:
    """A stream function: ``stage(examples) -> Stream``; ``build`` links it into a pipeline.

    ``is_source``: ``False`` (needs an input stream), ``True`` (a source, takes
    none) or ``None`` (either: e.g. ``Parallel`` of sources, or of functions
    applied to the input).
    """

    is_source: bool | None = False

    @property
    def name(self) -> str:
        return type(self).__name__

    def build(self, upstream: Node | None) -> Node:
        raise NotImplementedError

    def __call__(self, generator: Any = None) -> Stream:
        return Serial(self)(generator)

    def __repr__(self) -> str:
        return f"data.{self.name}()"


class MapStage(Stage):
    """A stage that maps (or, returning :data:`DROP`, drops) one example at a time."""

    def apply(self, example: Any, node: Node, index: int) -> Any:
        """Returns the new example; ``index`` counts the examples this stage has seen."""
        raise NotImplementedError

    def build(self, upstream: Node | None) -> Node:
        return _MapNode(self, upstream)


class _MapNode(Node):
    def __init__(self, stage: MapStage, upstream: Node | None):
        super().__init__(upstream)
        self.stage = stage
        self.name = stage.name
        self.index = 0

    def __next__(self) -> Any:
        while True:
            example = next(self.upstream)
            index = self.index
            self.index += 1
            out = self.stage.apply(example, self, index)
            if out is not DROP:
                return out

    def _get_state(self) -> dict:
        return {"index": self.index}

    def _set_state(self, state: dict) -> None:
        self.index = int(state["index"])


class IterableSource(Node):
    """A Python iterable as a source.

    Lists, tuples, ranges and arrays are read by index, so their position is
    exact. Other iterables (generators, files, ...) are read once; restoring a
    position re-draws and discards items up to it, which is exact when the
    iterable is deterministic.
    """

    name = "Iterable"

    def __init__(self, iterable: Iterable[Any]):
        super().__init__(None)
        if isinstance(iterable, (str, bytes)):
            raise TypeError(
                f"data.Serial: a {type(iterable).__name__} is not a stream of examples. To read "
                f"text files use data.TextLines(pattern) or data.TextDocuments(pattern); to "
                f"stream one string, wrap it in a list."
            )
        self._indexable = isinstance(iterable, (Sequence, np.ndarray))
        self._data = iterable if self._indexable else iter(iterable)
        self.position = 0

    def __next__(self) -> Any:
        if self._indexable:
            if self.position >= len(self._data):
                raise StopIteration
            item = self._data[self.position]
        else:
            item = next(self._data)
        self.position += 1
        return item

    def _get_state(self) -> dict:
        return {"position": self.position}

    def _set_state(self, state: dict) -> None:
        target = int(state["position"])
        if self._indexable:
            self.position = target
            return
        if target < self.position:
            raise ValueError(
                f"Cannot move a one-shot iterable back from item {self.position} to item "
                f"{target}. Load the saved position into a freshly built pipeline."
            )
        while self.position < target:
            try:
                next(self._data)
            except StopIteration:
                raise ValueError(
                    f"Restoring a data position: the source iterable ended after "
                    f"{self.position} items but the saved position is item {target}. "
                    f"The data changed since the position was saved."
                ) from None
            self.position += 1


class _FnNode(Node):
    """A plain Python stream function in a pipeline; its inner state is opaque."""

    resumable = False

    def __init__(self, fn: Any, upstream: Node | None):
        super().__init__(upstream)
        self.name = getattr(fn, "__name__", type(fn).__name__)
        result = fn(upstream)
        if result is None or not isinstance(result, Iterable):
            raise TypeError(
                f"data.Serial: the stream function {self.name} returned "
                f"{type(result).__name__}; a stream function takes an iterator and returns "
                f"an iterator (e.g. a generator: `lambda g: (f(x) for x in g)`)."
            )
        self._it = iter(result)

    def __next__(self) -> Any:
        return next(self._it)


def _is_fn_list(x: Any) -> bool:
    """A (nested, maybe empty) list of stream functions, as opposed to a list of examples."""
    return isinstance(x, (list, tuple)) and all(
        isinstance(f, (Stage, Serial)) or callable(f) or _is_fn_list(f) for f in x)


def _flatten(fns: Any) -> list[Any]:
    out: list[Any] = []
    for f in fns:
        if isinstance(f, Serial):
            out.extend(f.fns)
        elif _is_fn_list(f):
            out.extend(_flatten(f))
        elif f is not None:
            out.append(f)
    return out


def _as_node(generator: Any) -> Node | None:
    if generator is None or isinstance(generator, Node):
        return generator
    if isinstance(generator, Stream):
        return generator.last
    if isinstance(generator, Iterable):
        return IterableSource(generator)
    raise TypeError(
        f"A stream function takes an iterator of examples; got {type(generator).__name__}."
    )


class Serial:
    """Chains stream functions (Trax's ``data.Serial``); calling it returns a :class:`Stream`.

    Args:
      *fns: retrax stages, plain functions ``iterator -> iterator``, nested
        lists or Serials of them. The first may be a source (a stage such as
        ``TextLines``, a function ignoring its argument, or any Python
        iterable such as a list or a generator).
    """

    def __init__(self, *fns: Any):
        self.fns = _flatten(fns)
        if not self.fns:
            raise ValueError("data.Serial needs at least one stream function or source.")
        for i, f in enumerate(self.fns):
            if not (isinstance(f, Stage) or callable(f) or (i == 0 and isinstance(f, Iterable))):
                raise TypeError(
                    f"data.Serial: item {i} ({type(f).__name__}) is not a stream function. "
                    f"Use retrax.data stages, functions `iterator -> iterator`, or (first) a "
                    f"Python iterable of examples."
                )

    def __call__(self, generator: Any = None) -> Stream:
        node = _as_node(generator)
        for i, f in enumerate(self.fns):
            if isinstance(f, Stage):
                if f.is_source is True and node is not None:
                    raise ValueError(
                        f"data.Serial: {f.name} is a source and ignores its input, but it gets "
                        f"one (it is item {i}, or the pipeline was called on a stream). Put "
                        f"sources first and call the pipeline without arguments."
                    )
                if f.is_source is False and node is None:
                    raise ValueError(
                        f"data.Serial: {f.name} needs an input stream. Start the pipeline with "
                        f"a source (data.TextLines, data.TFDS, a list, a generator) or call "
                        f"it on one: pipeline(examples)."
                    )
                node = f.build(node)
            elif callable(f):
                node = _FnNode(f, node)
            elif node is None:
                node = IterableSource(f)
            else:
                raise ValueError(
                    f"data.Serial: the iterable item {i} would ignore the stream it is called on."
                )
        return Stream(node)

    def __iter__(self) -> Stream:
        return self()

    def __repr__(self) -> str:
        names = [f.name if isinstance(f, Stage) else getattr(f, "__name__", type(f).__name__)
                 for f in self.fns]
        return f"data.Serial({', '.join(names)})"


class Stream:
    """An iterator of examples built by :class:`Serial`, with a saveable position."""

    def __init__(self, last: Node):
        self.last = last
        self.nodes: list[Node] = []
        node: Node | None = last
        while node is not None:
            self.nodes.append(node)
            node = node.upstream
        self.nodes.reverse()
        # The nodes whose get_state/set_state make up the position (a node that holds its
        # upstream's state stands for all nodes before it).
        first = max((i for i, n in enumerate(self.nodes) if n.holds_upstream_state), default=0)
        self.state_nodes = self.nodes[first:]
        self.yielded = 0

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        try:
            example = next(self.last)
        except StopIteration:
            if self.yielded == 0:
                raise EmptyStreamError(
                    f"The data stream {self.describe()} ended without yielding any example. "
                    f"{self.report()}"
                ) from None
            raise
        self.yielded += 1
        return example

    def describe(self) -> str:
        return "[" + " -> ".join(n.name for n in self.nodes) + "]"

    # -- position ---------------------------------------------------------------

    @property
    def exact(self) -> bool:
        """Whether every stage exposes its position (else restoring re-skips)."""
        return all(n.resumable for n in self.state_nodes)

    def state_dict(self) -> dict:
        """The stream's position as JSON-safe data (see :meth:`load_state_dict`)."""
        return {
            "format": STATE_FORMAT,
            "stages": [n.name for n in self.nodes],
            "yielded": self.yielded,
            "nodes": [n.get_state() for n in self.state_nodes] if self.exact else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Moves this stream to a position saved by :meth:`state_dict` of the same pipeline."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"Not a saved data-stream position (expected format {STATE_FORMAT}).")
        stages = [n.name for n in self.nodes]
        if list(state["stages"]) != stages:
            raise ValueError(
                f"The saved data position is for the pipeline [{' -> '.join(state['stages'])}] "
                f"but this one is [{' -> '.join(stages)}]. Resume with the same pipeline."
            )
        target = int(state["yielded"])
        if state.get("nodes") is not None and self.exact:
            if len(state["nodes"]) != len(self.state_nodes):
                raise ValueError(
                    f"The saved data position holds {len(state['nodes'])} stage states but "
                    f"this pipeline saves {len(self.state_nodes)}. Resume with the same pipeline."
                )
            for node, node_state in zip(self.state_nodes, state["nodes"]):
                node.set_state(node_state)
            self.yielded = target
            return
        if target < self.yielded:
            raise ValueError(
                f"This stream has already yielded {self.yielded} examples, past the saved "
                f"position ({target}), and a stage of it is a plain function whose state cannot "
                f"be restored. Load the position into a freshly built pipeline."
            )
        for node in self.nodes:
            node.replaying = True
        try:
            while self.yielded < target:
                try:
                    next(self)
                except StopIteration:
                    raise ValueError(
                        f"Restoring a data position: the stream ended after {self.yielded} "
                        f"examples but the saved position is {target}."
                    ) from None
        finally:
            for node in self.nodes:
                node.replaying = False

    # -- counters ---------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """``{stage name: {counter: n}}`` for the stages that counted something."""
        out: dict[str, dict[str, int]] = {}
        for node in self.nodes:
            if not node.stats:
                continue
            key, k = node.name, 2
            while key in out:
                key, k = f"{node.name}_{k}", k + 1
            out[key] = dict(node.stats)
        return out

    def report(self) -> str:
        """The counters in one line (what was read, dropped, truncated, padded, replaced)."""
        stats = self.stats()
        if not stats:
            return "No stage counted anything."
        return "; ".join(f"{name}: " + ", ".join(f"{k}={v}" for k, v in counters.items())
                         for name, counters in stats.items()) + "."

    def __repr__(self) -> str:
        return f"<data.Stream {self.describe()}, {self.yielded} yielded>"
