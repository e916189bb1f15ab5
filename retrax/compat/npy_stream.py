"""Gzip streams and ``.npy`` record streams as Trax writes them, read within a size cap.

Trax gzips its checkpoint pickle (``.pkl.gz``) and, in the Loop layout, stores
weights and optimizer slots as back-to-back ``.npy`` records in gzip streams
beside it (``<base>.weights.npy.gz``, ``<base>.opt_slots{i}.npy.gz``; Trax's
``np_from_file``). :class:`GzipReader` gives out at most what
:func:`retrax.io.expansion_limit` allows, and :func:`read_npy_stream` checks
each record's dtype (numeric only) and size before allocating it. Writing is
atomic (:func:`retrax.io.write_atomic`) at Trax's compresslevel 2.

Faults: a file that is not gzip, a damaged or truncated stream, a record that
is not valid ``.npy`` and a stream or record larger than the cap raise
:class:`retrax.io.CheckpointError` naming the file.
"""

from __future__ import annotations

import errno
import gzip
import io
import math
import zlib
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import fsspec
import numpy as np

import retrax.io as _rio
from retrax.compat.safe_unpickle import dtype_problem
from retrax.io import CheckpointError, expansion_limit, write_atomic

__all__ = [
    "COMPRESSLEVEL",
    "GzipReader",
    "read_file",
    "read_npy_stream",
    "write_gzip_atomic",
    "write_npy_stream",
]

#: Trax writes every gzip stream at compresslevel 2 and stores that int in
#: place of the data it moved to a side file.
COMPRESSLEVEL = 2
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 24


def _open_read(fs: fsspec.AbstractFileSystem, path: str) -> BinaryIO:
    try:
        return fs.open(path, "rb")
    except FileNotFoundError as err:
        msg = "Trax checkpoint file not found"
        raise FileNotFoundError(errno.ENOENT, msg, path) from err


def read_file(fs: Any, path: str) -> bytes:
    """All bytes of ``path`` on ``fs``; a missing file is a FileNotFoundError naming it."""
    with _open_read(fs, path) as raw:
        return raw.read()


def _not_gzip(data: bytes, name: str, what: str) -> CheckpointError:
    start = "it is empty" if not data else f"it starts with {data[:8]!r}"
    return CheckpointError(
        f"Cannot read {what} {name}: it is not gzip data ({start}), but Trax writes its "
        f".pkl.gz and .npy.gz files gzip-compressed. Check that the path names the "
        f"checkpoint itself and that the file was copied completely.")


def _damaged_gzip(name: str, what: str, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Cannot read {what} {name}: its gzip stream is damaged or truncated "
        f"({type(err).__name__}: {err}). Copy the file again from where it was written.")


def _bomb(name: str, what: str, compressed: int, limit: int) -> CheckpointError:
    return CheckpointError(
        f"Cannot read {what} {name}: it expands to more than {limit} bytes from {compressed} "
        f"bytes on disk, more than retrax.io.MAX_EXPANSION (now {_rio.MAX_EXPANSION}) times "
        f"its size allows, so it is refused as a likely decompression bomb. If the file is "
        f"genuine, pass max_expansion= (or set retrax.io.MAX_EXPANSION) to allow more.")


class GzipReader:
    """A gzip file's decompressed stream that refuses to give out more than ``limit`` bytes.

    Its errors (a damaged or truncated stream, or more data than the limit)
    are CheckpointErrors naming the file. Reading to the end (``drain``) makes
    gzip check the stream's CRC and length, which a reader that stops early
    (the unpickler stops at STOP) would never see.
    """

    def __init__(self, data: bytes, limit: int, name: str, what: str):
        if data[:2] != _GZIP_MAGIC:
            raise _not_gzip(data, name, what)
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self.left, self.limit = limit, limit
        self._size, self._name, self._what = len(data), name, what

    def _guarded(self, fn: Callable[[int], bytes], n: int | None) -> bytes:
        try:
            out = fn(self.left + 1 if n is None or n < 0 else min(n, self.left + 1))
        except (OSError, EOFError, zlib.error) as err:
            raise _damaged_gzip(self._name, self._what, err) from err
        self.left -= len(out)
        if self.left < 0:
            raise _bomb(self._name, self._what, self._size, self.limit)
        return out

    def read(self, n: int | None = -1) -> bytes:
        return self._guarded(self._gz.read, n)

    def readline(self, n: int | None = -1) -> bytes:
        return self._guarded(self._gz.readline, n)

    def at_end(self) -> bool:
        try:
            return not self._gz.peek(1)
        except (OSError, EOFError, zlib.error) as err:
            raise _damaged_gzip(self._name, self._what, err) from err

    def drain(self) -> None:
        while self.read(_READ_CHUNK):
            pass

    def close(self) -> None:
        self._gz.close()


def _read_npy_record(f: GzipReader, index: int, name: str) -> np.ndarray:
    """One ``.npy`` record, its size checked against the budget before it is allocated."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not one Trax writes")
    problem = dtype_problem(dtype)
    if problem:
        raise CheckpointError(f"Cannot read Trax weights file {name}: array {index} has "
                              f"{problem}.")
    n_bytes = math.prod(shape) * dtype.itemsize
    if n_bytes > f.left:
        raise CheckpointError(
            f"Cannot read Trax weights file {name}: array {index} (shape {shape}, dtype "
            f"{dtype}) asks for {n_bytes} bytes, more than the {f.left} bytes left of the "
            f"{f.limit} a file of {f._size} bytes may expand to (retrax.io.MAX_EXPANSION is "
            f"{_rio.MAX_EXPANSION}), so it is refused as a likely memory bomb. If the file is "
            f"genuine, pass max_expansion= (or set retrax.io.MAX_EXPANSION) to allow more.")
    flat = np.empty(math.prod(shape), dtype)
    view = memoryview(flat.view(np.uint8))
    done = 0
    while done < n_bytes:
        chunk = f.read(min(_READ_CHUNK, n_bytes - done))
        if not chunk:
            raise CheckpointError(
                f"Cannot read Trax weights file {name}: it ends inside array {index} (shape "
                f"{shape}, {done} of {n_bytes} bytes present), so it is truncated. Copy the "
                f"file again from where it was written.")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def read_npy_stream(fs: Any, path: str, bfloat16: bool,
                     max_expansion: float | None = None) -> list[np.ndarray]:
    """Reads a gzip stream of back-to-back ``.npy`` records (Trax's ``np_from_file``).

    Records are read forwards only (``np.load`` seeks backwards, and a
    backwards seek on a gzip stream decompresses it again from the start).
    """
    what = "Trax weights file"
    data = read_file(fs, path)
    f = GzipReader(data, expansion_limit(len(data), max_expansion), path, what)
    arrays: list[np.ndarray] = []
    try:
        while not f.at_end():
            arr = _read_npy_record(f, len(arrays), path)
            if bfloat16 and arr.dtype == np.uint16:
                import ml_dtypes  # jax's dependency; only needed on request

                arr = arr.view(ml_dtypes.bfloat16)
            arrays.append(arr)
    except CheckpointError:
        raise
    except (ValueError, SyntaxError, TypeError, EOFError) as err:  # np.lib.format's errors
        raise CheckpointError(
            f"Cannot read {what} {path}: record {len(arrays)} is not a valid .npy array "
            f"({type(err).__name__}: {err}). The file is damaged or not a Trax weights "
            f"file; copy it again from where it was written.") from err
    finally:
        f.close()
    return arrays


def write_gzip_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Writes a gzip file (compresslevel 2) atomically (see :func:`retrax.io.write_atomic`)."""

    def write_gzip(raw: BinaryIO) -> None:
        # filename='' keeps the temp name out of the gzip header; mtime=0 makes
        # the bytes reproducible.
        kw = {"compresslevel": COMPRESSLEVEL, "mtime": 0, "filename": ""}
        with gzip.GzipFile(fileobj=raw, mode="wb", **kw) as gz:
            write(gz)

    write_atomic(path, write_gzip)


def write_npy_stream(arrays: Sequence[np.ndarray]) -> Callable[[BinaryIO], None]:
    """A writer for :func:`write_gzip_atomic`: ``arrays`` as back-to-back ``.npy`` records."""

    def write(f: BinaryIO) -> None:
        for arr in arrays:
            np.lib.format.write_array(f, arr, allow_pickle=False)

    return write
