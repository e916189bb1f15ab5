"""The persistent compilation cache: a second process's first compile is read from disk.

Each check runs in a fresh Python process (the cache is process-wide JAX
state; this suite itself runs with it off, see tests/conftest.py), with the
cache in a tmp folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compiles one program that no other part of retrax compiles, and reports
# what JAX's cache did (its monitoring events) and where the cache is.
PROGRAM = textwrap.dedent("""
    import json, sys
    import jax
    events = []
    jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
    import jax.numpy as jnp
    import retrax
    from retrax import compilation_cache
    where = compilation_cache.cache_dir()
    f = jax.jit(lambda x: jnp.tanh(x @ x.T) * 3.0 + 0.25)
    y = f(jnp.arange(12.0).reshape(3, 4))
    hits = events.count('/jax/compilation_cache/cache_hits')
    misses = events.count('/jax/compilation_cache/cache_misses')
    extra = {}
    if sys.argv[1:] == ['toggle']:
        compilation_cache.disable()
        extra['after_disable'] = compilation_cache.cache_dir()
        extra['after_enable'] = compilation_cache.enable(sys.argv[0] + '.other')
    print(json.dumps(dict(where=where, hits=hits, misses=misses, y=float(y.sum()), **extra)))
""")


def run(tmp_path, env_updates, *args):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RETRAX_", "JAX_"))}
    env.update(env_updates)
    proc = subprocess.run([sys.executable, "-W", "always", str(script), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def program_entries(folder):
    """Cache entries of the test program (jit of a lambda: 'jit__lambda-<key>-cache')."""
    return sorted(n for n in os.listdir(folder) if n.startswith("jit__lambda") and
                  n.endswith("-cache"))


@pytest.mark.slow  # two fresh processes
def test_a_second_process_reads_the_first_ones_program_from_the_cache(tmp_path):
    folder = tmp_path / "cache"
    env = {"RETRAX_COMPILATION_CACHE_DIR": str(folder)}
    first, _ = run(tmp_path, env)
    assert first["where"] == str(folder)
    assert first["hits"] == 0 and first["misses"] >= 1
    entries = program_entries(folder)
    assert len(entries) == 1          # cached although it compiles in far under a second
    second, _ = run(tmp_path, env, "toggle")
    assert second["hits"] >= 1 and second["misses"] == 0
    assert second["y"] == first["y"]
    assert program_entries(folder) == entries      # read, not written again
    # Run-time switches: off, then on in another folder.
    assert second["after_disable"] is None
    assert second["after_enable"] == str(tmp_path / "program.py.other")


@pytest.mark.slow  # a fresh process; the suite itself also runs with the switch off
def test_off_with_the_environment_switch(tmp_path):
    folder = tmp_path / "cache"
    off, _ = run(tmp_path, {"RETRAX_COMPILATION_CACHE": "0",
                            "RETRAX_COMPILATION_CACHE_DIR": str(folder)})
    assert off["where"] is None and off["hits"] == 0
    assert not folder.exists()


def test_a_folder_that_cannot_be_written_warns_once_and_changes_nothing(tmp_path, monkeypatch):
    import jax

    from retrax import compilation_cache as cc

    monkeypatch.setattr(cc, "_warned", False)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    before = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir)
    with pytest.warns(RuntimeWarning, match="cannot be written.*RETRAX_COMPILATION_CACHE=0"):
        assert cc.enable(str(blocker / "cache")) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cc.enable(str(blocker / "other")) is None       # no second warning
    assert (jax.config.jax_enable_compilation_cache,
            jax.config.jax_compilation_cache_dir) == before


def test_the_default_folder_and_the_switch_values():
    from retrax import compilation_cache as cc

    assert cc.default_dir({"XDG_CACHE_HOME": "/x"}) == os.path.join("/x", "retrax", "jax")
    assert cc.default_dir({"HOME": "/h"}).endswith(os.path.join(".cache", "retrax", "jax"))
    assert cc.default_dir({"RETRAX_COMPILATION_CACHE_DIR": "/c", "XDG_CACHE_HOME": "/x"}) == "/c"
    for value in ("0", "false", "OFF", " no "):
        assert cc.env_disabled({"RETRAX_COMPILATION_CACHE": value})
    for env in ({}, {"RETRAX_COMPILATION_CACHE": "1"}, {"RETRAX_COMPILATION_CACHE": "on"}):
        assert not cc.env_disabled(env)


def test_this_test_suite_runs_with_the_cache_off():
    from retrax import compilation_cache as cc

    assert os.environ.get("RETRAX_COMPILATION_CACHE") == "0"
    assert cc.cache_dir() != cc.default_dir()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-n", "0"]))
