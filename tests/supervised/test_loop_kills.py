"""SIGKILL at random moments of a run that checkpoints every step leaves a consistent directory.

After every kill: ``model.pkl.gz`` is readable and holds exactly the weights of
the native checkpoint of its step (so no reader can see weights of one step
with the metadata of another), at most the one temporary file that was being
written is left (the next start removes it), and a new Loop resumes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from retrax import checkpoints
from retrax.compat.trax_pickle import read_trax_checkpoint

TESTS = Path(__file__).resolve().parents[1]

RUN_FOREVER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from supervised.test_loop_faults import loop_in
    loop = loop_in(sys.argv[1], steps_per_ckpt=1, eval_tasks=False, keep_checkpoints=2)
    print('started', loop.step, flush=True)
    loop.run(100000)
""")


def _temp_files(run: Path) -> list[str]:
    return [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def _check_consistent(run: Path) -> int:
    """The resume point's files agree; returns its step (0 before the first checkpoint)."""
    pkl = run / "model.pkl.gz"
    if not pkl.exists():
        assert not list(run.glob("checkpoint_*.safetensors"))[1:], sorted(os.listdir(run))
        return 0
    saved = read_trax_checkpoint(pkl)
    assert not (run / "model.weights.npy.gz").exists()  # the weights live in the .pkl.gz
    native = run / f"checkpoint_{saved.step:08d}.safetensors"
    ckpt = checkpoints.read_native(checkpoints.read_bytes(native), str(native))
    assert len(saved.flat_weights) == len(ckpt["flat_weights"])
    for a, b in zip(saved.flat_weights, ckpt["flat_weights"]):
        np.testing.assert_array_equal(a, b)
    return saved.step


def _wait_for_step_after(run: Path, step: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(int(p.stem.split("_")[1]) > step for p in run.glob("checkpoint_*.safetensors")):
            return
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint after step {step} within {timeout} s: {os.listdir(run)}")


def _kill_randomly(tmp_path: Path, n_kills: int) -> None:
    script = tmp_path / "forever.py"
    script.write_text(RUN_FOREVER.format(tests=str(TESTS)))
    run = tmp_path / "run"
    rng = random.Random(1234)
    steps, left = [], []
    for _ in range(n_kills):
        child = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        line = child.stdout.readline().split()
        assert line[:1] == ["started"], child.stderr.read()
        assert int(line[1]) == (steps[-1] if steps else 0)  # resumed where the last kill left
        # The start removed what the last kill left (the running child may be writing new ones).
        assert not any((run / name).exists() for name in left), left
        if len(steps) == n_kills - 1:
            # The last kill comes after progress, however loaded the machine is.
            _wait_for_step_after(run, steps[-1] if steps else 0)
        time.sleep(rng.uniform(0.0, 1.5))
        child.send_signal(signal.SIGKILL)
        child.wait()
        left = _temp_files(run)
        assert len(left) <= 1, left
        steps.append(_check_consistent(run))
    assert steps == sorted(steps) and steps[-1] > 0, steps


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_a_few_random_kills(tmp_path):
    _kill_randomly(tmp_path, 3)


@pytest.mark.slow
def test_twenty_random_kills(tmp_path):
    _kill_randomly(tmp_path, 20)
