"""A persistent compilation cache: a second run's first compiled step is read from disk.

``import retrax`` turns JAX's persistent compilation cache on, in
``$XDG_CACHE_HOME/retrax/jax`` (``~/.cache/retrax/jax`` without
``XDG_CACHE_HOME``), for programs of every size (JAX's own default skips
those that compile in under a second). Settings:

- ``RETRAX_COMPILATION_CACHE=0`` (or ``false``, ``off``, ``no``) in the
  environment: retrax leaves the cache off.
- ``RETRAX_COMPILATION_CACHE_DIR=/some/folder``: the cache lives there.
- A cache folder you gave JAX yourself (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update('jax_compilation_cache_dir', ...)`` before importing
  retrax) is kept, with JAX's thresholds and size limit: retrax changes
  nothing then, and never prunes that folder.
- At run time: :func:`disable` and :func:`enable` (before the programs you
  want cached are compiled); :func:`cache_dir` says where it is, ``None``
  when off.

**Size.** Retrax bounds its folder itself (:data:`MAX_BYTES`, 4 GiB, or
``enable(max_bytes=...)``) and leaves JAX's own eviction off
(``jax_compilation_cache_max_size=-1``). JAX's eviction keeps an ``-atime``
file beside every entry and, on every write, lists and reads the whole folder
(a cost that grows with the folder); one entry whose ``-atime`` file is
missing (a process killed between its two writes) made every later write fail
with a warning, so the cache silently stopped growing. Without it a write is
one file and costs the same at any folder size. Instead, at most once a day
per folder (the stamp file ``.retrax-pruned``, touched when a prune
completes, says when), :func:`enable` starts a background (daemon) thread
that removes the least recently used entries (by the later of a file's
modification and access times; the access time counts where the file system
records it, e.g. Linux's ``relatime``, to about a day) until the entries
fit, so ``import retrax`` only pays one ``stat`` of the stamp; a prune cut
short by the program's exit is done again by the next one. It only ever
deletes JAX cache entries (``<name>-<64 hex digits>-cache``) and the
``-atime`` files JAX's eviction left (stale without it), tolerates files
another process removes meanwhile, and never raises. :func:`prune` does the same at once.

A folder that cannot be created or written gives one warning and no cache;
nothing else changes. The cache only holds compiled programs (keyed by the
program, the JAX version and the machine), so deleting the folder is always
safe. As JAX warns, only point it at a folder nobody else can write to, and
do not share retrax's folder with a program that sets JAX's own size limit.

>>> from retrax import compilation_cache
>>> compilation_cache.env_disabled({'RETRAX_COMPILATION_CACHE': 'off'})
True
>>> compilation_cache.default_dir({'XDG_CACHE_HOME': '/xdg'})
'/xdg/retrax/jax'
>>> compilation_cache.is_cache_file('jit_f-' + '0' * 64 + '-cache')
True
>>> compilation_cache.is_cache_file('notes.txt')
False
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

__all__ = ["MAX_BYTES", "PRUNE_EVERY_S", "STAMP", "PruneResult", "cache_dir",
           "configure_from_env", "default_dir", "disable", "enable", "env_disabled",
           "is_cache_file", "prune", "prune_due", "prune_in_background", "wait_for_prune"]

ENV_SWITCH = "RETRAX_COMPILATION_CACHE"
ENV_DIR = "RETRAX_COMPILATION_CACHE_DIR"
_OFF = ("0", "false", "off", "no")
# The folder's bound: entries beyond it are pruned, least recently used first.
MAX_BYTES = 4 << 30
# Prune a folder at most this often; the stamp file's modification time says when it last was.
PRUNE_EVERY_S = 24 * 3600.0
STAMP = ".retrax-pruned"
# A JAX cache entry ('<module name>-<sha256 hex>-cache') or the access-time
# file JAX's own eviction keeps beside it ('...-atime').
_ENTRY = re.compile(r".+-[0-9a-f]{64}-(cache|atime)")

_warned = False
_pruner: threading.Thread | None = None      # the last background prune enable() started


def env_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``RETRAX_COMPILATION_CACHE`` in ``environ`` (default ``os.environ``) says off."""
    env = os.environ if environ is None else environ
    return env.get(ENV_SWITCH, "").strip().lower() in _OFF


def default_dir(environ: Mapping[str, str] | None = None) -> str:
    """The cache folder: ``RETRAX_COMPILATION_CACHE_DIR``, else the user's cache folder."""
    env = os.environ if environ is None else environ
    if env.get(ENV_DIR):
        return env[ENV_DIR]
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "retrax", "jax")


def cache_dir() -> str | None:
    """The folder JAX's persistent cache uses now, or ``None`` when it is off."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir or None


def is_cache_file(name: str) -> bool:
    """Whether a file name is one JAX's cache writes: an entry or its ``-atime`` file."""
    return _ENTRY.fullmatch(name) is not None


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """What :func:`prune` did: entries (``-cache`` files) kept and removed, with their bytes."""

    kept: int
    kept_bytes: int
    removed: int
    removed_bytes: int
    removed_atime_files: int


def prune_due(path: str, every_s: float = PRUNE_EVERY_S, now: float | None = None) -> bool:
    """Whether ``path``'s stamp is missing or at least ``every_s`` seconds old (one ``stat``).

    A stamp dated in the future by more than ``every_s`` (a clock that was
    wrong) also counts as old. ``False`` when the stamp cannot be read.
    """
    try:
        stamped = os.stat(os.path.join(path, STAMP)).st_mtime
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return abs((time.time() if now is None else now) - stamped) >= every_s


def _touch(path: str) -> None:
    with open(path, "a"):
        pass
    os.utime(path)


def _scan(path: str) -> tuple[list[tuple[float, int, str]], list[str]]:
    """The folder's entries as (last use, bytes, name), and its ``-atime`` files."""
    entries, atime_files = [], []
    with os.scandir(path) as listing:
        found = list(listing)
    for item in found:
        match = _ENTRY.fullmatch(item.name)
        if match is None:
            continue
        try:
            if not item.is_file(follow_symlinks=False):
                continue
            info = item.stat(follow_symlinks=False)
        except FileNotFoundError:   # removed by another process since the listing
            continue
        if match.group(1) == "atime":
            atime_files.append(item.name)
        else:
            entries.append((max(info.st_mtime, info.st_atime), info.st_size, item.name))
    return entries, atime_files


def _remove(path: str) -> bool:
    """Deletes a file; ``False`` when another process already had."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def prune(path: str | None = None, max_bytes: int = MAX_BYTES) -> PruneResult:
    """Removes the least recently used entries until the rest fit in ``max_bytes``; now.

    Also removes every ``-atime`` file (written only by JAX's own eviction,
    which retrax leaves off), then stamps the folder (see :func:`prune_due`).
    Anything that is not a JAX cache file is left alone; files that vanish
    meanwhile (another process pruning or clearing) are skipped.

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for i, name in enumerate(['jit_a', 'jit_b', 'jit_c']):
    ...     path = os.path.join(folder, f'{name}-{"0" * 64}-cache')
    ...     with open(path, 'wb') as f:
    ...         _ = f.write(bytes(100))
    ...     os.utime(path, (1000 + i, 1000 + i))      # jit_a oldest
    >>> prune(folder, max_bytes=250)
    PruneResult(kept=2, kept_bytes=200, removed=1, removed_bytes=100, removed_atime_files=0)
    >>> sorted(name.split('-')[0] for name in os.listdir(folder))
    ['.retrax', 'jit_b', 'jit_c']
    >>> import shutil; shutil.rmtree(folder)
    """
    path = os.path.abspath(os.path.expanduser(path or default_dir()))
    entries, atime_files = _scan(path)
    entries.sort()                        # least recently used first
    total = sum(size for _, size, _ in entries)
    gone = removed = removed_bytes = 0
    for _, size, name in entries:
        if total <= max_bytes:
            break
        total -= size                     # gone either way
        gone += 1
        if _remove(os.path.join(path, name)):
            removed, removed_bytes = removed + 1, removed_bytes + size
    removed_atime = sum(_remove(os.path.join(path, name)) for name in atime_files)
    # Last: a prune cut short (a daemon thread dies with its program) is due again.
    # Two processes pruning at once cost a second scan, nothing else.
    _touch(os.path.join(path, STAMP))
    return PruneResult(kept=len(entries) - gone, kept_bytes=total, removed=removed,
                       removed_bytes=removed_bytes, removed_atime_files=removed_atime)


def _prune_quietly(path: str, max_bytes: int) -> None:
    try:
        prune(path, max_bytes)
    except Exception:  # noqa: BLE001 (a background clean-up must never disturb the program)
        pass


def prune_in_background(path: str, max_bytes: int = MAX_BYTES,
                        every_s: float = PRUNE_EVERY_S) -> threading.Thread | None:
    """Starts :func:`prune` on a daemon thread if :func:`prune_due`; returns the thread or ``None``.

    Errors in the thread are swallowed (the folder may be cleared meanwhile).
    """
    if not prune_due(path, every_s):
        return None
    thread = threading.Thread(target=_prune_quietly, args=(path, max_bytes),
                              name="retrax-compilation-cache-prune", daemon=True)
    thread.start()
    return thread


def _writable(path: str) -> str | None:
    """Creates ``path``; ``None`` if it exists and can be written, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".retrax-probe-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def enable(path: str | None = None, *, max_bytes: int | None = MAX_BYTES) -> str | None:
    """Caches compiled programs in ``path`` (default :func:`default_dir`); returns the folder.

    Programs of any size and compile time are cached. The folder is kept
    under ``max_bytes`` (``None``: unbounded) by a background :func:`prune`
    at most once a day. Returns ``None`` (after one warning per process) when
    the folder cannot be written, and leaves the cache as it was.
    """
    global _warned, _pruner
    path = os.path.abspath(os.path.expanduser(path or default_dir()))
    problem = _writable(path)
    if problem is not None:
        if not _warned:
            _warned = True
            warnings.warn(
                f"retrax: the compilation cache folder {path!r} cannot be written ({problem}); "
                f"compiling without a persistent cache. Set {ENV_DIR} to a writable folder, "
                f"or {ENV_SWITCH}=0 to silence this.", RuntimeWarning, stacklevel=2)
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    jax.config.update("jax_compilation_cache_max_size", -1)   # bounded by prune instead
    jax_cache.reset_cache()         # a folder set after a first compile takes effect
    if max_bytes is not None:
        _pruner = prune_in_background(path, max_bytes) or _pruner
    return path


def wait_for_prune(timeout: float | None = None) -> bool:
    """Waits for the background prune :func:`enable` started, if any; ``True`` once none runs."""
    if _pruner is not None:
        _pruner.join(timeout)
        return not _pruner.is_alive()
    return True


def disable() -> None:
    """Turns JAX's persistent compilation cache off (whoever turned it on)."""
    jax.config.update("jax_enable_compilation_cache", False)
    jax_cache.reset_cache()


def configure_from_env() -> str | None:
    """What ``import retrax`` does: :func:`enable` unless the environment says otherwise.

    Never raises: a failure to set the cache up is a warning.
    """
    if env_disabled():
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir     # the user's own; left as it is
    try:
        return enable()
    except Exception as err:  # noqa: BLE001 (the cache must never break import)
        warnings.warn(f"retrax: compilation cache not set up ({type(err).__name__}: {err}).",
                      RuntimeWarning, stacklevel=2)
        return None
