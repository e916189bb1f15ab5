"""``Parallel``: one stream mixing several streams by counters (Trax's ``data.Parallel``).

``data.Parallel([f1, f2, f3], counters=(2, 1, 3))`` calls each stream
function (``f()``, or ``f(gen)`` when the mix is called on ``gen``) and
interleaves their examples: per round of ``sum(counters)`` examples,
``counters[i]`` come from stream ``i``, taken round-robin while a stream
still has examples due in the round. Without counters every stream gives one
example in turn; a counter of 0 leaves that stream out (it is never called).

>>> from retrax import data
>>> mixed = data.Parallel([lambda: iter(range(10)), lambda: iter(range(10, 20))],
...                       counters=(2, 1))()
>>> [next(mixed) for _ in range(6)]
[0, 10, 1, 11, 2, 3]

``gradually_reweight=True`` orders the streams by counter and nests them
instead: counters ``(1, 20, 40)`` give ``(a (b c c)^20)`` per cycle, each
exponent being the ratio of neighbouring counters (rounded down);
``use_remainders=True`` then appends what the rounding left out of each
stream (counter 45 instead of 40: five more from ``c`` per cycle).

The mix ends when one of its streams ends (counted in
``stream.stats()['Parallel']['ended_with']`` and logged); Trax raises a
``RuntimeError`` there. The mixer's position is saved with the stream when
every stream it mixes is a retrax pipeline (``state_dict``); otherwise a
restore re-draws the examples already yielded.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from retrax.data.stream import Node, Serial, Stage, Stream

__all__ = ["Parallel"]


def _check_counters(fns: list[Any], counters: Sequence[Any] | None,
                    reweight_by_minimum: bool) -> tuple[list[int], list[int]]:
    """(indices of the streams kept, their integer counters), as Trax computes them."""
    if not counters:
        return list(range(len(fns))), [1] * len(fns)
    if len(counters) != len(fns):
        raise ValueError(f"Parallel: {len(fns)} streams but {len(counters)} counters; give one "
                         f"counter per stream.")
    for i, c in enumerate(counters):
        if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) \
                or not c >= 0:
            raise ValueError(f"Parallel: counters must be numbers >= 0; counters[{i}] is {c!r}.")
    kept = [i for i, c in enumerate(counters) if c != 0]
    if not kept:
        raise ValueError("Parallel: every counter is 0, so there is nothing to mix.")
    values = [counters[i] for i in kept]
    if reweight_by_minimum:
        smallest = min(values)
        values = [math.floor(c / smallest) for c in values]
    for i, c in zip(kept, values):
        if c != int(c):
            raise ValueError(
                f"Parallel: counters[{i}] is {c!r}; counters are numbers of examples per round, "
                f"so they must be integers (or pass reweight_by_minimum=True to use ratios)."
            )
    return kept, [int(c) for c in values]


def _call_branch(fn: Any, arg: Any, i: int) -> Iterator[Any]:
    """``fn(arg)``, or without ``arg`` when it is None (``fn(None)`` if fn needs an argument)."""
    if arg is None:
        try:
            params = inspect.signature(fn).parameters.values()
            needs_arg = any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                                 p.POSITIONAL_OR_KEYWORD)
                            for p in params)
        except (TypeError, ValueError):  # No signature (some builtins): call as Trax does.
            needs_arg = False
        result = fn(None) if needs_arg else fn()
    else:
        result = fn(arg)
    if result is None or not isinstance(result, Iterable):
        raise TypeError(
            f"Parallel: stream function {i} ({getattr(fn, '__name__', type(fn).__name__)}) "
            f"returned {type(result).__name__}, not an iterator of examples."
        )
    return result if isinstance(result, Iterator) else iter(result)


def _gradual_cycle(order: list[int], counters: list[int], use_remainders: bool) -> Iterator[int]:
    """The stream indices of one cycle of ``gradually_reweight`` (Trax's nesting rule)."""

    def nest(level: int, previous: int) -> Iterator[int]:
        if level == len(order):
            return
        counter = counters[order[level]]
        for _ in range(math.floor(counter / previous)):
            yield order[level]
            yield from nest(level + 1, counter)

    yield from nest(0, min(counters))
    if use_remainders:
        taken = 1  # How many the nesting took from this level's stream per cycle.
        for level, b in enumerate(order):
            yield from [b] * (counters[b] - taken)
            if level + 1 < len(order):
                taken *= math.floor(counters[order[level + 1]] / counters[b])


class Parallel(Stage):
    """Mixes the examples of several streams (Trax's signature and order; see the module).

    Args:
      fns: stream functions or pipelines (``data.Serial``, sources, functions
        returning iterators); each is called once per mixed stream.
      counters: examples of each stream per round (ints >= 0); default one each.
      reweight_by_minimum: divide the counters by the smallest (rounding down):
        ``(10000, 100000)`` becomes ``(1, 10)``.
      gradually_reweight: nest the streams by counter instead of round-robin.
      use_remainders: with ``gradually_reweight``, add the examples the nesting
        rounded away at the end of each cycle.

    Call it (``parallel()`` or ``parallel(gen)``) for a :class:`Stream`, or put it
    first in a ``data.Serial``.
    """

    is_source = None  # Called with or without an input stream.

    def __init__(self, fns: Sequence[Any] | None = None, counters: Sequence[Any] | None = None,
                 reweight_by_minimum: bool = False, gradually_reweight: bool = False,
                 use_remainders: bool = False):
        if isinstance(fns, (Serial, Stage)) or callable(fns):
            raise TypeError("Parallel: fns is a list of stream functions; wrap a single one in "
                            "a list: data.Parallel([f]).")
        fns = list(fns or [])
        if not fns:
            raise ValueError("Parallel: give at least one stream function to mix.")
        for i, f in enumerate(fns):
            if not callable(f):
                raise TypeError(f"Parallel: fns[{i}] is a {type(f).__name__}, not a stream "
                                f"function (use e.g. `lambda: iter(examples)`).")
        kept, self.counters = _check_counters(fns, counters, reweight_by_minimum)
        self.fns = [fns[i] for i in kept]
        self.gradually_reweight = bool(gradually_reweight)
        self.use_remainders = bool(use_remainders)
        # gradually_reweight's nesting order: by counter, ties in the given order (as Trax).
        self.order = sorted(range(len(self.fns)), key=lambda b: self.counters[b])

    def build(self, upstream: Node | None) -> Node:
        return _ParallelNode(self, upstream, upstream)

    def __call__(self, gen: Any = None) -> Stream:
        """The mixed stream; ``gen`` (if given) is passed to every stream function."""
        if gen is None or isinstance(gen, (Node, Stream, Iterable)):
            return Serial(self)(gen)
        return Stream(_ParallelNode(self, None, gen))  # E.g. a generator function, as in Trax.

    def __repr__(self) -> str:
        return f"data.Parallel({len(self.fns)} streams, counters={tuple(self.counters)})"


class _ParallelNode(Node):
    name = "Parallel"

    def __init__(self, stage: Parallel, upstream: Node | None, arg: Any):
        super().__init__(upstream)
        self.stage = stage
        self.branches = [_call_branch(f, arg, i) for i, f in enumerate(stage.fns)]
        # Exact positions need every branch to save its own, and no input shared by branches.
        self.resumable = arg is None and all(
            callable(getattr(b, "state_dict", None)) and callable(getattr(b, "load_state_dict",
                                                                          None))
            for b in self.branches)
        self.current = [0] * len(self.branches)  # Round-robin: examples taken this round.
        self.pointer = 0  # Round-robin: the branch to look at next.
        self.cycle_position = 0  # gradually_reweight: indices taken in this cycle.
        self.cycle: Iterator[int] = self._new_cycle()
        self.ended = False

    def _new_cycle(self) -> Iterator[int]:
        s = self.stage
        return _gradual_cycle(s.order, s.counters, s.use_remainders)

    def _next_index(self) -> int:
        counters = self.stage.counters
        if self.stage.gradually_reweight:
            for _ in range(2):
                for b in self.cycle:
                    self.cycle_position += 1
                    return b
                self.cycle, self.cycle_position = self._new_cycle(), 0
            raise AssertionError("Parallel: empty gradual cycle")  # Counters >= 1: impossible.
        n = len(counters)
        for step in range(n):
            b = (self.pointer + step) % n
            if self.current[b] < counters[b]:
                self.current[b] += 1
                if sum(self.current) == sum(counters):
                    self.current = [0] * n
                self.pointer = (b + 1) % n
                return b
        raise AssertionError("Parallel: no stream due")  # The round resets when all are done.

    def __next__(self) -> Any:
        if self.ended:
            raise StopIteration
        b = self._next_index()
        try:
            return next(self.branches[b])
        except StopIteration:
            self.ended = True
            self.count("ended_with", message=f"stream {b} of the mix ended, so the mix ends")
            raise

    def _get_state(self) -> dict:
        return {"branches": [br.state_dict() for br in self.branches],
                "current": list(self.current), "pointer": self.pointer,
                "cycle_position": self.cycle_position, "ended": self.ended}

    def _set_state(self, state: dict) -> None:
        if len(state["branches"]) != len(self.branches):
            raise ValueError(f"Parallel: the saved position has {len(state['branches'])} "
                             f"streams but this mix has {len(self.branches)}.")
        for branch, branch_state in zip(self.branches, state["branches"]):
            branch.load_state_dict(branch_state)
        self.current = [int(c) for c in state["current"]]
        self.pointer = int(state["pointer"])
        self.ended = bool(state["ended"])
        self.cycle, self.cycle_position = self._new_cycle(), 0
        for _ in range(int(state["cycle_position"])):
            next(self.cycle)
            self.cycle_position += 1
