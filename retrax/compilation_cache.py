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
  retrax) is kept, with JAX's thresholds: retrax changes nothing then.
- At run time: :func:`disable` and :func:`enable` (before the programs you
  want cached are compiled); :func:`cache_dir` says where it is, ``None``
  when off.

A folder that cannot be created or written gives one warning and no cache;
nothing else changes. The cache only holds compiled programs (keyed by the
program, the JAX version and the machine), so deleting the folder is always
safe. As JAX warns, only point it at a folder nobody else can write to.

>>> from retrax import compilation_cache
>>> compilation_cache.env_disabled({'RETRAX_COMPILATION_CACHE': 'off'})
True
>>> compilation_cache.default_dir({'XDG_CACHE_HOME': '/xdg'})
'/xdg/retrax/jax'
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Mapping

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

__all__ = ["cache_dir", "configure_from_env", "default_dir", "disable", "enable",
           "env_disabled"]

ENV_SWITCH = "RETRAX_COMPILATION_CACHE"
ENV_DIR = "RETRAX_COMPILATION_CACHE_DIR"
_OFF = ("0", "false", "off", "no")
# Eviction (least recently used) above this size, when JAX can lock the folder
# (it needs the ``filelock`` package); without it the folder is not capped.
MAX_BYTES = 4 << 30

_warned = False


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


def _writable(path: str) -> str | None:
    """Creates ``path``; ``None`` if it exists and can be written, else the reason."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".retrax-probe-"):
            pass
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None


def _has_filelock() -> bool:
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True


def enable(path: str | None = None) -> str | None:
    """Caches compiled programs in ``path`` (default :func:`default_dir`); returns the folder.

    Programs of any size and compile time are cached. Returns ``None`` (after
    one warning per process) when the folder cannot be written, and leaves
    the cache as it was.
    """
    global _warned
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
    if _has_filelock():
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax_cache.reset_cache()         # a folder set after a first compile takes effect
    return path


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
