"""Data sources: text files (through fsspec), TensorFlow Datasets, Hugging Face ``datasets``.

Sources start a ``data.Serial`` pipeline. Each keeps an exact position
(file, byte offset, pass number; dataset index) for resumable streams.

* ``TextLines(pattern)`` yields each line of the matching files (without the
  newline); ``TextDocuments(pattern)`` yields each file's whole text. A
  pattern is a path, a glob (``'corpus/**/*.txt'``) or a list of them, local or
  any fsspec URL (``gs://``, ``s3://``... with that backend installed). Files
  are read in sorted order, or shuffled per pass with ``shuffle_files=True``.
  ``repeat=True`` starts a new pass at the end (for training).
* Bytes that are not UTF-8 are replaced by U+FFFD (``errors='replace'``,
  default), raise (``'strict'``) or skip the line/file (``'skip'``); empty
  files are skipped. All are counted in ``stream.stats()`` and the first of
  each kind is logged. A pass over files holding no text raises
  :class:`~retrax.data.stream.EmptyStreamError`.
* ``TFDS(...)`` and ``HFDataset(...)`` import their packages only when built
  and say how to install them when missing.

>>> import os, tempfile
>>> from retrax import data
>>> d = tempfile.mkdtemp()
>>> for name, text in [('a.txt', 'one\\ntwo\\n'), ('b.txt', ''), ('c.txt', 'three')]:
...     with open(os.path.join(d, name), 'w') as f:
...         _ = f.write(text)
>>> stream = data.TextLines(os.path.join(d, '*.txt'))()
>>> list(stream), stream.stats()['TextLines']
(['one', 'two', 'three'], {'files_read': 3, 'empty_files': 1})
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from retrax.data.stream import EmptyStreamError, Node, Stage
from retrax.io import filesystem

__all__ = ["TextLines", "TextDocuments", "TFDS", "HFDataset", "list_files"]

_ERRORS = ("replace", "strict", "skip")


def list_files(pattern: Any, where: str = "list_files") -> list[tuple[Any, str]]:
    """``(filesystem, path)`` of the files matching a pattern or list of patterns, sorted."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    if not patterns:
        raise ValueError(f"{where}: no file patterns given.")
    found: list[tuple[Any, str]] = []
    seen: set[str] = set()
    for p in patterns:
        p = os.path.expanduser(os.fspath(p))
        fs, path = filesystem(p)
        if any(c in path for c in "*?["):
            matches = sorted(m for m in fs.glob(path) if not fs.isdir(m))
            if not matches:
                raise ValueError(f"{where}: no files match {p!r}.")
        elif fs.isfile(path):
            matches = [path]
        else:
            raise FileNotFoundError(f"{where}: {p!r} does not exist or is not a file.")
        for m in matches:
            if m not in seen:
                seen.add(m)
                found.append((fs, m))
    return found


def _display(fs: Any, path: str) -> str:
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def _fingerprint(files: list[tuple[Any, str]]) -> str:
    return hashlib.sha1("\n".join(p for _, p in files).encode("utf-8")).hexdigest()[:16]


class _FileSource(Stage):
    is_source = True

    def __init__(self, pattern: Any, *, errors: str = "replace", repeat: bool = False,
                 shuffle_files: bool = False, seed: int = 0):
        if errors not in _ERRORS:
            raise ValueError(f"{self.name}: errors must be one of {_ERRORS}; got {errors!r}.")
        self.pattern = pattern
        self.files = list_files(pattern, self.name)
        self.errors = errors
        self.repeat = bool(repeat)
        self.shuffle_files = bool(shuffle_files)
        self.seed = int(seed)

    def __repr__(self) -> str:
        return f"data.{self.name}({self.pattern!r}: {len(self.files)} files)"


class _FileNode(Node):
    """Walks the files pass after pass; subclasses read one file."""

    def __init__(self, stage: _FileSource):
        super().__init__(None)
        self.stage = stage
        self.name = stage.name
        self.epoch = 0
        self.file_pos = 0  # index into this pass's file order
        self.yielded_in_epoch = 0
        self._order = self._make_order(0)

    def _make_order(self, epoch: int) -> np.ndarray:
        n = len(self.stage.files)
        if not self.stage.shuffle_files:
            return np.arange(n)
        return np.random.default_rng([self.stage.seed, epoch]).permutation(n)

    def _current(self) -> tuple[Any, str] | None:
        """The file at the current position, starting a new pass if needed (None: done)."""
        if self.file_pos >= len(self._order):
            if not self.stage.repeat:
                return None
            if self.yielded_in_epoch == 0:
                raise EmptyStreamError(
                    f"{self.name}: a whole pass over the {len(self.stage.files)} files matching "
                    f"{self.stage.pattern!r} yielded nothing ({self.stats}). Check the files."
                )
            self.epoch += 1
            self.count("passes")
            self.file_pos = 0
            self.yielded_in_epoch = 0
            self._order = self._make_order(self.epoch)
        return self.stage.files[int(self._order[self.file_pos])]

    def _decode(self, raw: bytes, where: str, counter: str) -> str | None:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            mode = self.stage.errors
            if mode == "strict":
                raise ValueError(
                    f"{self.name}: {where} is not valid UTF-8 ({err.reason} at byte {err.start}: "
                    f"{raw[err.start:err.start + 4]!r}). Pass errors='replace' to replace invalid "
                    f"bytes with U+FFFD or errors='skip' to skip it; both are counted."
                ) from None
            if mode == "skip":
                self.count(f"skipped_{counter}", message=f"skipped {where}: not valid UTF-8")
                return None
            self.count(counter, message=f"replaced the invalid UTF-8 bytes of {where} with "
                                        f"U+FFFD")
            return raw.decode("utf-8", errors="replace")

    def _get_state(self) -> dict:
        return {"files": len(self.stage.files), "fingerprint": _fingerprint(self.stage.files),
                "epoch": self.epoch, "file_pos": self.file_pos,
                "yielded_in_epoch": self.yielded_in_epoch}

    def _set_state(self, state: dict) -> None:
        if state["fingerprint"] != _fingerprint(self.stage.files):
            raise ValueError(
                f"{self.name}: the files matching {self.stage.pattern!r} changed since the data "
                f"position was saved ({state['files']} files then, {len(self.stage.files)} now); "
                f"the position cannot be restored."
            )
        self.epoch = int(state["epoch"])
        self.file_pos = int(state["file_pos"])
        self.yielded_in_epoch = int(state["yielded_in_epoch"])
        self._order = self._make_order(self.epoch)


class TextLines(_FileSource):
    """Yields the lines of text files, without their line ends (a source).

    Args:
      pattern: path, glob or list of them (fsspec URLs work).
      errors: keyword-only; invalid UTF-8: ``'replace'``, ``'strict'`` or ``'skip'``.
      repeat: keyword-only; start another pass at the end (endless stream).
      shuffle_files: keyword-only; a new seeded file order each pass.
      seed: keyword-only; the file-order seed.
      skip_empty_lines: keyword-only; skip lines that are empty (counted).
    """

    def __init__(self, pattern: Any, *, errors: str = "replace", repeat: bool = False,
                 shuffle_files: bool = False, seed: int = 0, skip_empty_lines: bool = False):
        super().__init__(pattern, errors=errors, repeat=repeat, shuffle_files=shuffle_files,
                         seed=seed)
        self.skip_empty_lines = skip_empty_lines

    def build(self, upstream: Node | None) -> Node:
        return _LinesNode(self)


class _LinesNode(_FileNode):
    def __init__(self, stage: TextLines):
        super().__init__(stage)
        self.offset = 0  # bytes of the current file already read
        self.lineno = 0
        self._file: Any = None

    def __next__(self) -> str:
        while True:
            if self._file is None:
                current = self._current()
                if current is None:
                    raise StopIteration
                fs, path = current
                self._file = fs.open(path, "rb")
                if self.offset:
                    self._file.seek(self.offset)
                else:
                    self.count("files_read")
            raw = self._file.readline()
            if not raw:
                if self.offset == 0:
                    self.count("empty_files", message=f"skipped the empty file {self._path()}")
                self._next_file()
                continue
            self.offset += len(raw)
            self.lineno += 1
            line = self._decode(raw.rstrip(b"\n").rstrip(b"\r"),
                                f"line {self.lineno} of {self._path()}", "invalid_utf8_lines")
            if line is None:
                continue
            if not line and self.stage.skip_empty_lines:
                self.count("skipped_empty_lines")
                continue
            self.yielded_in_epoch += 1
            return line

    def _path(self) -> str:
        return _display(*self.stage.files[int(self._order[self.file_pos])])

    def _next_file(self) -> None:
        self._file.close()
        self._file = None
        self.file_pos += 1
        self.offset = 0
        self.lineno = 0

    def _get_state(self) -> dict:
        return {**super()._get_state(), "offset": self.offset, "lineno": self.lineno}

    def _set_state(self, state: dict) -> None:
        super()._set_state(state)
        if self._file is not None:
            self._file.close()
            self._file = None
        self.offset = int(state["offset"])
        self.lineno = int(state["lineno"])


class TextDocuments(_FileSource):
    """Yields each file's whole text as one string (a source); see :class:`TextLines`."""

    def build(self, upstream: Node | None) -> Node:
        return _DocumentsNode(self)


class _DocumentsNode(_FileNode):
    def __next__(self) -> str:
        while True:
            current = self._current()
            if current is None:
                raise StopIteration
            fs, path = current
            with fs.open(path, "rb") as f:
                raw = f.read()
            self.file_pos += 1
            self.count("files_read")
            if not raw:
                self.count("empty_files", message=f"skipped the empty file {_display(fs, path)}")
                continue
            text = self._decode(raw, _display(fs, path), "invalid_utf8_files")
            if text is None:
                continue
            self.yielded_in_epoch += 1
            return text


# --------------------------------------------------------------------------
# Optional dataset libraries
# --------------------------------------------------------------------------


def _require(module: str, package: str, extra: str, who: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"data.{who} needs the {package} package, which is not installed. Install it with "
            f"`pip install 'retrax[{extra}]'` (or `pip install {package}`)."
        ) from err


def _to_example(row: dict, keys: Sequence[Any] | None) -> Any:
    def convert(v: Any) -> Any:
        return np.asarray(v) if isinstance(v, list) else v

    if keys is None:
        return {k: convert(v) for k, v in row.items()}
    missing = [k for k in keys if k not in row]
    if missing:
        raise KeyError(f"The dataset's examples have no field(s) {missing}; they have "
                       f"{sorted(row)}.")
    return tuple(convert(row[k]) for k in keys)


class _EpochNode(Node):
    """Reads ``stage.open_epoch(epoch)`` pass after pass; position = (pass, index)."""

    def __init__(self, stage: Any):
        super().__init__(None)
        self.stage = stage
        self.name = stage.name
        self.epoch = 0
        self.position = 0
        self._it: Any = None

    def __next__(self) -> Any:
        while True:
            if self._it is None:
                self._it = self.stage.open_epoch(self.epoch, self.position)
            try:
                row = next(self._it)
            except StopIteration:
                if not self.stage.repeat:
                    raise
                if self.position == 0:
                    raise EmptyStreamError(f"data.{self.name}: a whole pass over the dataset "
                                           f"yielded no example.") from None
                self.epoch, self.position, self._it = self.epoch + 1, 0, None
                self.count("passes")
                continue
            self.position += 1
            return _to_example(row, self.stage.keys)

    def _get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def _set_state(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._it = None


def _skip(it: Any, n: int, who: str) -> Any:
    for i in range(n):
        try:
            next(it)
        except StopIteration:
            raise ValueError(f"data.{who}: the dataset ended after {i} examples while moving "
                             f"to the saved position {n}; it changed since.") from None
    return it


class TFDS(Stage):
    """A TensorFlow Datasets dataset as a source (Trax's signature; needs tensorflow-datasets).

    Yields ``tuple(example[k] for k in keys)`` (or the example dicts without
    ``keys``). The training split repeats forever; eval splits are read once.
    Text features arrive as bytes, which ``Tokenize`` decodes. Positions are
    (pass, index): resuming re-reads the pass up to the index, with the same
    ``seed`` for the file shuffle.
    """

    is_source = True

    def __init__(self, dataset_name: str, data_dir: str | None = None,
                 tfds_preprocess_fn: Callable[[Any], Any] | None = None,
                 keys: Sequence[str] | None = None, train: bool = True,
                 use_alt_eval: bool = False, shuffle_train: bool = True,
                 host_id: int | None = None, n_hosts: int | None = None,
                 eval_holdout_size: int = 0, *, seed: int = 0, repeat: bool | None = None):
        self.tfds = _require("tensorflow_datasets", "tensorflow-datasets", "tfds", "TFDS")
        self.dataset_name, self.data_dir = dataset_name, data_dir
        self.preprocess_fn = tfds_preprocess_fn
        self.keys = None if keys is None else list(keys)
        self.train, self.use_alt_eval, self.shuffle = train, use_alt_eval, train and shuffle_train
        self.host_id, self.n_hosts = host_id or 0, n_hosts or 1
        self.eval_holdout_size = eval_holdout_size
        self.seed = seed
        self.repeat = train if repeat is None else repeat

    def split(self) -> str:
        if self.eval_holdout_size:
            n = self.eval_holdout_size
            return f"train[{n}:]" if self.train else f"train[:{n}]"
        if self.train:
            return "train"
        splits = self.tfds.builder(self.dataset_name, data_dir=self.data_dir).info.splits
        return "test" if self.use_alt_eval or "validation" not in splits else "validation"

    def open_epoch(self, epoch: int, position: int) -> Any:
        split = self.split()
        if self.n_hosts > 1:
            split = self.tfds.even_splits(split, n=self.n_hosts)[self.host_id]
        kwargs: dict[str, Any] = {"split": split, "data_dir": self.data_dir,
                                  "shuffle_files": self.shuffle}
        if self.shuffle:
            kwargs["read_config"] = self.tfds.ReadConfig(shuffle_seed=self.seed + epoch)
        ds = self.tfds.load(self.dataset_name, **kwargs)
        if self.preprocess_fn is not None:
            ds = self.preprocess_fn(ds)
        return _skip(iter(self.tfds.as_numpy(ds)), position, self.name)

    def build(self, upstream: Node | None) -> Node:
        return _EpochNode(self)


class HFDataset(Stage):
    """A Hugging Face ``datasets`` dataset as a source (needs the ``datasets`` package).

    Args:
      path: a dataset name or path for ``datasets.load_dataset``, or an
        already loaded ``Dataset``/``IterableDataset``.
      name: the dataset configuration.
      split: keyword-only; the split to read.
      keys: keyword-only; yield ``tuple(row[k] for k in keys)`` instead of dicts.
        Lists become NumPy arrays.
      repeat: keyword-only; start another pass at the end.
      shuffle: keyword-only; a new seeded order each pass (map-style datasets).
      seed: keyword-only.
      **load_kwargs: passed to ``datasets.load_dataset`` (``data_files``,
        ``streaming``, ...).

    Map-style datasets are read by index (exact positions); streaming ones in
    order, restored by re-reading up to the position.
    """

    is_source = True

    def __init__(self, path: Any, name: str | None = None, *, split: str = "train",
                 keys: Sequence[str] | None = None, repeat: bool = False, shuffle: bool = False,
                 seed: int = 0, **load_kwargs: Any):
        if isinstance(path, (str, os.PathLike)):
            datasets = _require("datasets", "datasets", "hf", "HFDataset")
            self.dataset = datasets.load_dataset(os.fspath(path), name, split=split,
                                                 **load_kwargs)
        else:
            self.dataset = path
        self.keys = None if keys is None else list(keys)
        self.repeat, self.shuffle, self.seed = bool(repeat), bool(shuffle), int(seed)
        self.indexable = hasattr(self.dataset, "__len__") and hasattr(self.dataset, "__getitem__")

    def open_epoch(self, epoch: int, position: int) -> Any:
        ds = self.dataset
        if not self.indexable:
            return _skip(iter(ds), position, self.name)
        n = len(ds)
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else range(n))
        return (ds[int(order[i])] for i in range(position, n))

    def build(self, upstream: Node | None) -> Node:
        return _EpochNode(self)
