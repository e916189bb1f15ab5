"""The output directory of a training run: who may write to it, and one writer at a time.

A ``Loop`` writes checkpoints, ``config.json`` and ``metrics.jsonl`` into its
``output_dir``. Two promises keep a user's work safe:

* **Nothing retrax did not write is replaced.** A directory is used when it is
  empty, when it holds a retrax run (its ``config.json`` names a
  ``retrax_version``), or when every entry in it is one that Trax's own
  ``training.Loop`` writes (``model.pkl.gz``, ``model.weights.npy.gz``,
  ``train/``, ``eval/``, ...), which the Loop then resumes. Anything else is
  refused with :class:`ForeignOutputDirError` (a ``FileExistsError``) unless
  ``overwrite=True`` is passed.
* **One Loop writes at a time.** The Loop holds an exclusive lock on
  ``<output_dir>/.retrax.lock`` (``fcntl.flock``) while it lives. A Loop in
  another process fails at once with :class:`OutputDirLockedError`. The operating
  system drops the lock when its process ends, however it ends, so a crashed
  run never leaves a stale lock behind. Within one process a new Loop on the
  same directory takes the lock over (re-running a notebook cell builds a new
  Loop while the old one is still referenced); the old Loop is then retired
  and refuses to train or checkpoint again.

Temporary files that a killed writer left (``.<name>.<hex>.tmp``, see
:mod:`retrax.io`) are removed when the lock is taken: no other writer can be
using them then.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import time

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: the pid file alone
    fcntl = None

__all__ = ["OutputDirLockedError", "ForeignOutputDirError", "RunDirLock", "claim", "is_retrax_run"]

LOCK_NAME = ".retrax.lock"
_TMP_FILE = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")
# What Trax 1.4.1's Loop (and its TensorBoard writers) put in an output_dir.
_TRAX_RUN_ENTRY = re.compile(
    r"^(model(_\d+)?\.(pkl\.gz|weights\.npy\.gz|opt_slots\d+\.npy\.gz)|"
    r"(lowest|highest)_.+\.(pkl\.gz|weights\.npy\.gz|opt_slots\d+\.npy\.gz)|"
    r"train|eval|config\.gin|\..+\.[0-9a-f]{12}\.tmp)$"  # the last: retrax.io's temp files
)
_held: dict[str, RunDirLock] = {}  # real path -> the lock this process holds on it
_held_guard = threading.Lock()


class ForeignOutputDirError(FileExistsError):
    """``output_dir`` holds files that no retrax or Trax run wrote."""


class OutputDirLockedError(RuntimeError):
    """Another process's Loop is writing to ``output_dir``."""


def is_retrax_run(directory: str) -> bool:
    """Whether ``directory/config.json`` was written by a retrax Loop."""
    try:
        with open(os.path.join(directory, "config.json"), "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "retrax_version" in config


def _foreign_entries(directory: str) -> list[str]:
    """Entries of ``directory`` that show it is not a run retrax may continue."""
    entries = sorted(e for e in os.listdir(directory) if e != LOCK_NAME)
    if not entries or is_retrax_run(directory):
        return []
    return [e for e in entries if not _TRAX_RUN_ENTRY.match(e)]


class RunDirLock:
    """This process's exclusive hold on an output directory (see the module docstring)."""

    def __init__(self, directory: str, fd: int | None):
        self.directory = directory
        self._fd = fd
        self._owner: object | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def owned_by(self, owner: object) -> bool:
        return self.held and self._owner is owner

    def check_owner(self, owner: object, what: str) -> None:
        """Raises if ``owner`` no longer holds the lock (a newer Loop took the directory)."""
        if not self.owned_by(owner):
            raise RuntimeError(
                f"Loop: cannot {what}: a newer Loop on output_dir {self.directory!r} took it "
                f"over, or this Loop was closed. Use the newer Loop, or give each Loop its own "
                f"output_dir."
            )

    def release(self, owner: object) -> None:
        """Drops the lock if ``owner`` still owns it (the lock file itself stays)."""
        with _held_guard:
            if self._owner is owner:
                self._close()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
        self._owner = None
        real = os.path.realpath(self.directory)
        if _held.get(real) is self:
            del _held[real]


def _describe_holder(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        return (f"process {info.get('pid')} on host {info.get('host')!r} (since "
                f"{info.get('started')})")
    except (OSError, ValueError):
        return "another process"


def _take_os_lock(directory: str) -> int:
    path = os.path.join(directory, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise PermissionError(
            f"Loop: cannot write to output_dir {directory!r} ({err.strerror or err}). Choose a "
            f"directory you can write to, or pass output_dir=None to train without checkpoints."
        ) from err
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputDirLockedError(
                f"Loop: output_dir {directory!r} is in use by {_describe_holder(path)}: its "
                f"lock {path} is held. Two Loops writing one directory would interleave their "
                f"checkpoints. Wait for that run to finish, stop it, or choose another output_dir."
            ) from None
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
    return fd


def _remove_stale_temp_files(directory: str) -> list[str]:
    removed = []
    for entry in os.listdir(directory):
        if _TMP_FILE.match(entry):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, entry))
                removed.append(entry)
    return removed


def claim(directory: str, owner: object, *, overwrite: bool = False) -> RunDirLock:
    """Makes ``directory`` ``owner``'s to write: checks it, locks it, removes stale temp files.

    Raises :class:`ForeignOutputDirError` for a directory holding foreign files
    (unless ``overwrite``), :class:`OutputDirLockedError` when another process holds
    it, and ``PermissionError`` when it cannot be written.
    """
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"Loop: cannot write to output_dir {directory!r} ({err.strerror or err}). Choose a "
            f"directory you can write to, or pass output_dir=None to train without checkpoints."
        ) from err
    if not os.path.isdir(directory):
        raise NotADirectoryError(
            f"Loop: output_dir {directory!r} exists and is not a directory. Choose a directory."
        )
    real = os.path.realpath(directory)
    with _held_guard:
        lock = _held.get(real)
        fresh = lock is None
        if fresh:
            lock = RunDirLock(directory, _take_os_lock(directory))
        foreign = [] if overwrite else _foreign_entries(directory)
        if foreign:
            if fresh:
                lock._close()
            shown = ", ".join(foreign[:5]) + (
                f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ForeignOutputDirError(
                f"Loop: output_dir {directory!r} is not empty and holds no retrax run (no "
                f"config.json written by retrax; found {shown}). retrax will not replace files "
                f"it did not write. Choose an empty or new directory, or pass overwrite=True "
                f"(retrax train --force) to write there anyway."
            )
        _held[real] = lock
        lock._owner = owner  # a Loop of this process that held it is retired
    _remove_stale_temp_files(directory)
    return lock
