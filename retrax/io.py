"""Files for checkpoints: fsspec paths and atomic writes.

Local paths and URLs (``gs://``, ``s3://``, ``memory://``, ...) go through
fsspec; a URL whose backend is not installed gives an error naming the package.
Local writes are atomic: a temporary file in the same directory is written,
flushed and fsync'd, then renamed over the target, so a reader (or a crash)
never sees half a file. Object stores only publish an upload when it completes,
so remote paths are written directly.

Reading checkpoints: every damaged, hostile or mismatched checkpoint raises
:class:`CheckpointError` (a ``ValueError``) naming the file. Compressed data
and arrays a file asks for are capped before they are allocated: at most
``max(MAX_EXPANSION * compressed_size, EXPANSION_FLOOR)`` bytes per file, where
``compressed_size`` is the size of the file on disk. The ratio (100) is far
above what real checkpoints reach (float weights barely compress), the floor
(256 MiB) lets small, highly compressible files such as all-zero weights load,
and a file that asks for more is refused as a likely decompression bomb. Change
the module settings (``retrax.io.MAX_EXPANSION = 1000``) or pass
``max_expansion=`` to the readers for a genuine file that needs more.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

__all__ = [
    "CheckpointError",
    "EXPANSION_FLOOR",
    "MAX_EXPANSION",
    "expansion_limit",
    "filesystem",
    "read_bytes",
    "write_atomic",
    "write_bytes_atomic",
]

#: A file may expand (decompressed data, arrays it asks for) to this many times
#: its size on disk, and always to at least ``EXPANSION_FLOOR`` bytes.
MAX_EXPANSION: float = 100
#: Bytes every file may expand to, whatever its size on disk (256 MiB).
EXPANSION_FLOOR: int = 256 * 2**20


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: damaged, hostile, or for another model.

    The message names the file, what was expected, what was found and how to fix it.
    """


def expansion_limit(compressed_size: int, max_expansion: float | None = None) -> int:
    """Bytes a file of ``compressed_size`` bytes may expand to (see the module docstring)."""
    ratio = MAX_EXPANSION if max_expansion is None else max_expansion
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise ValueError(
            f"max_expansion must be a positive number (a ratio of decompressed to "
            f"compressed bytes, e.g. 100); got {ratio!r}."
        )
    return max(int(ratio * max(int(compressed_size), 0)), int(EXPANSION_FLOOR))


def filesystem(path: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem for ``path``, with an install hint for a missing backend."""
    path = os.fspath(path)
    try:
        return fsspec.core.url_to_fs(path)
    except ImportError as err:  # fsspec knows the protocol; its package is missing
        protocol = path.split("://", 1)[0]
        # fsspec's registry names the implementing package (gcsfs.GCSFileSystem).
        package = known_implementations.get(protocol, {}).get("class", "").split(".")[0]
        hint = package if package not in ("", "fsspec") else f"the fsspec backend for {protocol}://"
        raise ImportError(
            f"Cannot open {path!r}: {protocol}:// paths need an extra package. Install it "
            f"with: pip install {hint}"
        ) from err
    except ValueError as err:  # a protocol fsspec has never heard of
        raise ValueError(f"Cannot open {path!r}: {err}; install the fsspec backend for it.") from err


def read_bytes(path: str | os.PathLike, what: str = "Checkpoint file") -> bytes:
    fs, p = filesystem(path)
    try:
        with fs.open(p, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{what} not found: {os.fspath(path)}") from err


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Calls ``write(file)`` on a temporary file, then atomically puts it at ``path``."""
    fs, p = filesystem(path)
    if not isinstance(fs, LocalFileSystem):
        with fs.open(p, "wb") as f:
            write(f)
        return
    directory = os.path.dirname(os.path.abspath(p))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(p)}.{secrets.token_hex(6)}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would force 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` so that readers see either the old file or the whole new one."""
    write_atomic(path, lambda f: f.write(data))
