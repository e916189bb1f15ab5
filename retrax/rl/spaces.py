"""Minimal space descriptions, for code that has no gym (the serializers take any duck).

retrax does not depend on gym. The serializers of
:mod:`retrax.rl.space_serializer` read only a few attributes of a space, so
gym's and gymnasium's spaces work as they are, and so do these small
stand-ins:

- ``Box(low, high, shape)``: ``shape``, ``dtype``, ``low``, ``high`` (arrays
  of ``shape``; scalars are broadcast);
- ``Discrete(n, start=0)``: the integers ``start .. start + n - 1``;
- ``MultiDiscrete(nvec)``: one integer in ``[0, nvec[i])`` per entry.

They describe; they do not sample.

>>> Box(low=0.0, high=1.0, shape=(2,)).high.tolist()
[1.0, 1.0]
>>> Discrete(3).n, MultiDiscrete([2, 5]).nvec.tolist()
(3, [2, 5])
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Box", "Discrete", "MultiDiscrete"]


class Box:
    """A box of real vectors: ``low <= x <= high`` elementwise, ``x.shape == shape``."""

    def __init__(self, low: Any, high: Any, shape: Any = None, dtype: Any = np.float32):
        if shape is None:
            shape = np.shape(low)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.low = np.broadcast_to(np.asarray(low, self.dtype), self.shape).copy()
        self.high = np.broadcast_to(np.asarray(high, self.dtype), self.shape).copy()
        if np.any(self.low > self.high):
            raise ValueError(f"Box: low must be <= high everywhere; got low={self.low}, "
                             f"high={self.high}.")

    def __repr__(self) -> str:
        return f"Box(shape={self.shape}, low={self.low.min()}, high={self.high.max()})"


class Discrete:
    """The integers ``start, ..., start + n - 1`` (``shape == ()``)."""

    def __init__(self, n: int, start: int = 0):
        if int(n) < 1:
            raise ValueError(f"Discrete: n must be a positive int; got {n!r}.")
        self.n = int(n)
        self.start = int(start)
        self.shape = ()
        self.dtype = np.dtype(np.int64)

    def __repr__(self) -> str:
        return f"Discrete({self.n})" if not self.start else f"Discrete({self.n}, start={self.start})"


class MultiDiscrete:
    """An integer per entry of ``nvec``: entry ``i`` in ``[0, nvec[i])``."""

    def __init__(self, nvec: Any):
        self.nvec = np.asarray(nvec, np.int64)
        if self.nvec.size == 0 or np.any(self.nvec < 1):
            raise ValueError(f"MultiDiscrete: nvec must be non-empty positive ints; got {nvec!r}.")
        self.shape = self.nvec.shape
        self.dtype = np.dtype(np.int64)

    def __repr__(self) -> str:
        return f"MultiDiscrete({self.nvec.tolist()})"
