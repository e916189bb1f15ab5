"""``PackSequences``: many short token sequences -> rows of one fixed length.

Language models train fastest on full rows of one shape (one compiled step,
no padding). ``PackSequences(length)`` turns a stream of 1-D token arrays of
any lengths into int32 rows of exactly ``length`` tokens, each sequence
followed by ``separator_id`` (EOS). Two ways:

* ``mode='concat'`` (default): the sequences are concatenated and cut every
  ``length`` tokens, so a sequence may continue on the next row. Nothing is
  padded except the last row of a finite stream.
* ``mode='whole'``: each row holds whole sequences, greedily in order; the
  rest of a row is ``pad_id``. A sequence longer than a row is split over
  rows, truncated or dropped (``too_long``), and counted.

Follow it with ``Batch`` and ``ConcatenateToLMInput`` (``x -> (x, x)``) and
``AddLossWeights(id_to_mask=pad_id)`` to get ``(x, x, weights)`` batches.

>>> import numpy as np
>>> from retrax import data
>>> seqs = [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13])]
>>> [r.tolist() for r in data.PackSequences(4)(seqs)]
[[5, 6, 7, 1], [8, 9, 1, 10], [11, 12, 13, 1]]
>>> [r.tolist() for r in data.PackSequences(7, mode='whole')(seqs)]
[[5, 6, 7, 1, 8, 9, 1], [10, 11, 12, 13, 1, 0, 0]]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrax.data import _state
from retrax.data.stream import Node, Stage

__all__ = ["PackSequences"]


class PackSequences(Stage):
    """Packs 1-D token sequences into int32 rows of exactly ``length`` tokens.

    Args:
      length: tokens per row.
      separator_id: keyword-only; appended after each sequence (default 1,
        EOS); ``None`` appends nothing.
      pad_id: keyword-only; fills the rest of a row that cannot be filled.
      mode: keyword-only; ``'concat'`` or ``'whole'`` (see the module).
      too_long: keyword-only, ``mode='whole'`` only; a sequence (with its
        separator) longer than ``length``: ``'split'`` over consecutive rows,
        ``'truncate'`` to ``length`` or ``'drop'``. Truncations and drops are
        counted and logged.

    Counters: ``rows``, ``padded_tokens``, ``truncated``/``truncated_tokens``,
    ``dropped_too_long``/``dropped_tokens``.
    """

    def __init__(self, length: int, *, separator_id: int | None = 1, pad_id: int = 0,
                 mode: str = "concat", too_long: str = "split"):
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"PackSequences: length must be a positive int; got {length!r}.")
        if mode not in ("concat", "whole"):
            raise ValueError(f"PackSequences: mode must be 'concat' or 'whole'; got {mode!r}.")
        if too_long not in ("split", "truncate", "drop"):
            raise ValueError(f"PackSequences: too_long must be 'split', 'truncate' or 'drop'; "
                             f"got {too_long!r}.")
        self.length = int(length)
        self.separator_id = separator_id
        self.pad_id = pad_id
        self.mode = mode
        self.too_long = too_long

    def build(self, upstream: Node | None) -> Node:
        return _PackNode(self, upstream)

    def __repr__(self) -> str:
        return f"data.PackSequences({self.length}, mode={self.mode!r})"


class _PackNode(Node):
    name = "PackSequences"

    def __init__(self, stage: PackSequences, upstream: Node | None):
        super().__init__(upstream)
        self.stage = stage
        # mode='concat': rows are cut from buffer[offset:]; mode='whole': carry is the
        # row being filled and ready holds finished rows.
        self.buffer = np.zeros((0,), np.int32)
        self.offset = 0
        self.ready: list[np.ndarray] = []
        self.index = 0
        self.ended = False
        self._cache = _state.EncodeCache()

    def _unit(self, example: Any, index: int) -> np.ndarray:
        if isinstance(example, (tuple, list)) and len(example) == 1:
            example = example[0]
        if isinstance(example, (str, bytes, tuple, list, dict)):
            raise TypeError(
                f"PackSequences: example {index} is a {type(example).__name__}; it packs 1-D "
                f"token arrays (tokenize text first with data.Tokenize)."
            )
        seq = np.asarray(example)
        if seq.ndim != 1 or seq.dtype.kind not in "iu":
            raise TypeError(f"PackSequences: example {index} has shape {seq.shape} and dtype "
                            f"{seq.dtype}; it packs 1-D integer token arrays.")
        sep = self.stage.separator_id
        tail = [] if sep is None else [sep]
        return np.concatenate([seq.astype(np.int32), np.asarray(tail, np.int32)])

    def _row(self, tokens: np.ndarray) -> np.ndarray:
        missing = self.stage.length - tokens.shape[0]
        self.count("rows")
        if not missing:
            return tokens.copy()
        self.count("padded_tokens", missing)
        return np.concatenate([tokens, np.full((missing,), self.stage.pad_id, np.int32)])

    def _pull(self) -> np.ndarray | None:
        try:
            example = next(self.upstream)
        except StopIteration:
            self.ended = True
            return None
        index, self.index = self.index, self.index + 1
        return self._unit(example, index)

    def __next__(self) -> np.ndarray:
        if self.stage.mode == "concat":
            return self._next_concat()
        while not self.ready:
            if self.ended:
                raise StopIteration
            unit = self._pull()
            if unit is None:
                if self.buffer.shape[0]:
                    self.ready.append(self._row(self.buffer))
                    self.buffer = self.buffer[:0]
            else:
                self._add_whole(unit, self.index - 1)
        return self.ready.pop(0)

    def _next_concat(self) -> np.ndarray:
        length = self.stage.length
        while self.buffer.shape[0] - self.offset < length and not self.ended:
            unit = self._pull()
            if unit is not None:
                self.buffer = np.concatenate([self.buffer[self.offset:], unit])
                self.offset = 0
        rest = self.buffer.shape[0] - self.offset
        if rest == 0:
            raise StopIteration
        row = self._row(self.buffer[self.offset:self.offset + length])
        self.offset += min(rest, length)
        return row

    def _add_whole(self, unit: np.ndarray, index: int) -> None:
        stage, length = self.stage, self.stage.length
        if unit.shape[0] > length:
            what = f"example {index} has {unit.shape[0]} tokens (with separator) > length={length}"
            if stage.too_long == "drop":
                self.count("dropped_too_long", message=f"dropped {what}")
                self.count("dropped_tokens", unit.shape[0])
                return
            if stage.too_long == "truncate":
                self.count("truncated", message=f"truncated {what}")
                self.count("truncated_tokens", unit.shape[0] - length)
                unit = unit[:length]
            else:
                if self.buffer.shape[0]:
                    self.ready.append(self._row(self.buffer))
                n = unit.shape[0] // length
                self.ready.extend(self._row(r) for r in unit[:n * length].reshape(n, length))
                self.buffer = unit[n * length:]
                return
        if self.buffer.shape[0] + unit.shape[0] > length:
            self.ready.append(self._row(self.buffer))
            self.buffer = unit
        else:
            self.buffer = np.concatenate([self.buffer, unit])
        if self.buffer.shape[0] == length:
            self.ready.append(self._row(self.buffer))
            self.buffer = self.buffer[:0]

    def _get_state(self) -> dict:
        return {"buffer": self._cache.encode_list([self.buffer] + self.ready),
                "offset": self.offset, "index": self.index, "ended": self.ended}

    def _set_state(self, state: dict) -> None:
        items = _state.decode(state["buffer"])
        self.buffer, self.ready = items[0], items[1:]
        self.offset = int(state["offset"])
        self.index = int(state["index"])
        self.ended = bool(state["ended"])
