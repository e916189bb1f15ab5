"""Retrax bounds its compilation cache folder itself; JAX's per-write eviction stays off.

Every test works in a tmp folder (never the user's cache). The in-process
tests that turn the cache on restore JAX's cache settings afterwards (the
rest of the suite runs with it off, see tests/conftest.py).
"""

from __future__ import annotations

import os
import threading
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import compilation_cache as cc

HEX = "0123456789abcdef" * 4                       # 64 hex digits, as in JAX's keys
DAY = 24 * 3600.0
SETTINGS = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes", "jax_compilation_cache_max_size")


def entry(folder, name, size, used, kind="cache"):
    """Writes a fake cache file ``<name>-<HEX>-<kind>`` of ``size`` bytes last used at ``used``."""
    path = folder / f"{name}-{HEX}-{kind}"
    path.write_bytes(bytes(size))
    os.utime(path, (used, used))
    return path


def entries(folder):
    return sorted(n.split("-")[0] for n in os.listdir(folder) if n.endswith("-cache"))


@pytest.fixture
def jax_cache_settings():
    """Puts JAX's persistent cache settings back as they were after the test."""
    before = {name: getattr(jax.config, name) for name in SETTINGS}
    yield
    for name, value in before.items():
        jax.config.update(name, value)
    cc.jax_cache.reset_cache()


def test_prune_keeps_the_most_recently_used_entries_under_the_bound(tmp_path):
    now = time.time()
    for i, size in enumerate([400, 300, 200, 100, 50]):        # e0 oldest ... e4 newest
        entry(tmp_path, f"jit_e{i}", size, now - 1000 + i)
        entry(tmp_path, f"jit_e{i}", 8, now, kind="atime")      # left by JAX's old eviction
    result = cc.prune(str(tmp_path), max_bytes=360)
    # Newest first: 50 + 100 + 200 = 350 <= 360; adding e1 (300) would not fit.
    assert entries(tmp_path) == ["jit_e2", "jit_e3", "jit_e4"]
    assert result == cc.PruneResult(kept=3, kept_bytes=350, removed=2, removed_bytes=700,
                                    removed_atime_files=5)
    assert not [n for n in os.listdir(tmp_path) if n.endswith("-atime")]
    assert cc.prune(str(tmp_path), max_bytes=360).removed == 0          # already fits
    assert cc.prune(str(tmp_path), max_bytes=0).kept == 0


def test_a_recent_read_counts_as_use(tmp_path):
    old, recent = time.time() - 10 * DAY, time.time()
    read = entry(tmp_path, "jit_read", 100, old)
    os.utime(read, (recent, old))          # written long ago, read recently (access time)
    entry(tmp_path, "jit_written", 100, old + 60)
    cc.prune(str(tmp_path), max_bytes=100)
    assert entries(tmp_path) == ["jit_read"]


def test_prune_never_deletes_what_is_not_a_jax_cache_entry(tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    target = outside / "precious"
    target.write_bytes(bytes(1000))
    keep = ["notes-cache", f"jit_f-{HEX[:-1]}-cache", f"jit_f-{HEX.upper()}-cache",
            f"jit_f-{HEX}-cache.tmp", ".lockfile", "README"]
    for name in keep:
        (tmp_path / name).write_bytes(bytes(1000))
        os.utime(tmp_path / name, (0, 0))
    (tmp_path / f"jit_dir-{HEX}-cache").mkdir()                        # a folder, not a file
    (tmp_path / f"jit_link-{HEX}-cache").symlink_to(target)
    entry(tmp_path, "jit_real", 10, 0)
    result = cc.prune(str(tmp_path), max_bytes=0)
    assert result.removed == 1 and result.kept == 0
    left = set(os.listdir(tmp_path))
    assert left == {*keep, f"jit_dir-{HEX}-cache", f"jit_link-{HEX}-cache", cc.STAMP}
    assert target.read_bytes() == bytes(1000)


def test_files_that_vanish_meanwhile_are_skipped(tmp_path, monkeypatch):
    now = time.time()
    for i in range(6):
        entry(tmp_path, f"jit_v{i}", 100, now - 100 + i)
    real_scandir, real_unlink = os.scandir, os.unlink

    class Listing:
        """Lists the folder, then 'another process' removes jit_v0 before it is stat'ed."""

        def __init__(self, path):
            with real_scandir(path) as it:
                self.items = list(it)
            real_unlink(tmp_path / f"jit_v0-{HEX}-cache")

        def __enter__(self):
            return iter(self.items)

        def __exit__(self, *exc):
            return False

    def unlink(path):                   # ... and removes jit_v1 just before prune does
        if str(path).endswith(f"jit_v1-{HEX}-cache"):
            real_unlink(path)
        real_unlink(path)

    monkeypatch.setattr(os, "scandir", Listing)
    monkeypatch.setattr(os, "unlink", unlink)
    result = cc.prune(str(tmp_path), max_bytes=300)
    monkeypatch.undo()
    # jit_v0 was never seen; jit_v1 (oldest seen) was gone when prune came to it; jit_v2
    # removed, which leaves 300 bytes.
    assert result == cc.PruneResult(kept=3, kept_bytes=300, removed=1, removed_bytes=100,
                                    removed_atime_files=0)
    assert entries(tmp_path) == ["jit_v3", "jit_v4", "jit_v5"]


def test_the_stamp_allows_one_scan_a_day(tmp_path):
    assert cc.prune_due(str(tmp_path))                   # never pruned
    first = cc.prune_in_background(str(tmp_path), max_bytes=100)
    assert first is not None and first.daemon
    first.join(10)
    stamp = tmp_path / cc.STAMP
    assert stamp.is_file()
    entry(tmp_path, "jit_big", 1000, time.time())
    assert not cc.prune_due(str(tmp_path))
    assert cc.prune_in_background(str(tmp_path), max_bytes=100) is None
    assert entries(tmp_path) == ["jit_big"]              # no second scan within the day
    os.utime(stamp, (time.time() - DAY - 60,) * 2)
    again = cc.prune_in_background(str(tmp_path), max_bytes=100)
    again.join(10)
    assert entries(tmp_path) == []
    os.utime(stamp, (time.time() + 2 * DAY,) * 2)       # a stamp from a wrong clock
    assert cc.prune_due(str(tmp_path))
    assert cc.prune_due(str(tmp_path), every_s=3 * DAY) is False


def test_a_prune_cut_short_is_due_again(tmp_path, monkeypatch):
    for i in range(3):
        entry(tmp_path, f"jit_c{i}", 100, i)

    def exits(path):                    # the program ends while the thread prunes
        raise SystemExit

    monkeypatch.setattr(os, "unlink", exits)
    with pytest.raises(SystemExit):
        cc.prune(str(tmp_path), max_bytes=0)
    monkeypatch.undo()
    assert cc.prune_due(str(tmp_path)) and len(entries(tmp_path)) == 3
    assert cc.prune(str(tmp_path), max_bytes=0).removed == 3
    assert not cc.prune_due(str(tmp_path))


def test_a_failing_background_prune_stays_quiet(tmp_path, monkeypatch):
    errors = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    thread = cc.prune_in_background(str(tmp_path / "removed meanwhile"))
    thread.join(10)
    assert errors == [] and not (tmp_path / "removed meanwhile").exists()


def test_an_entry_without_its_atime_file_no_longer_stops_writes(tmp_path, jax_cache_settings):
    # A folder left by the old scheme (JAX's eviction): one entry lost its -atime
    # file. With JAX's eviction on, every later write failed (see the module).
    entry(tmp_path, "jit_orphan", 100, time.time())
    entry(tmp_path, "jit_kept", 100, time.time())
    entry(tmp_path, "jit_kept", 8, time.time(), kind="atime")
    assert cc.enable(str(tmp_path), max_bytes=None) == str(tmp_path)
    assert jax.config.jax_compilation_cache_max_size == -1            # no per-write scan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jax.jit(lambda x: jnp.tanh(x) * 2.75 - 0.125)(np.ones((3, 7), np.float32))
    assert {"jit__lambda", "jit_kept", "jit_orphan"} <= set(entries(tmp_path))
    assert len([n for n in os.listdir(tmp_path) if n.endswith("-atime")]) == 1   # none new
    assert not (tmp_path / cc.STAMP).exists()                          # max_bytes=None


def test_enable_from_the_environment_prunes_its_folder_in_the_background(
        tmp_path, monkeypatch, jax_cache_settings):
    folder = tmp_path / "cache"
    folder.mkdir()
    entry(folder, "jit_old", 8, 0, kind="atime")
    monkeypatch.delenv(cc.ENV_SWITCH)
    monkeypatch.setenv(cc.ENV_DIR, str(folder))
    jax.config.update("jax_compilation_cache_dir", None)
    assert cc.configure_from_env() == str(folder)
    assert cc.cache_dir() == str(folder)
    assert cc.wait_for_prune(10)
    assert os.listdir(folder) == [cc.STAMP]          # the stale -atime file is gone
    monkeypatch.setenv(cc.ENV_SWITCH, "off")
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(cc.ENV_DIR, str(tmp_path / "other"))
    assert cc.configure_from_env() is None
    assert not (tmp_path / "other").exists()


def test_the_users_own_jax_folder_is_left_alone(tmp_path, monkeypatch, jax_cache_settings):
    entry(tmp_path, "jit_theirs", 8, 0, kind="atime")
    monkeypatch.delenv(cc.ENV_SWITCH)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path))
    jax.config.update("jax_compilation_cache_max_size", 1 << 20)
    assert cc.configure_from_env() == str(tmp_path)
    assert cc.wait_for_prune(10)
    assert jax.config.jax_compilation_cache_max_size == 1 << 20
    assert os.listdir(tmp_path) == [f"jit_theirs-{HEX}-atime"]     # no stamp, nothing pruned
