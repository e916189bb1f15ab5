"""Starts a few Python processes as one ``jax.distributed`` run on this machine, for tests.

Every process gets its own session (process group); when one fails, the time
runs out or the test is interrupted, all of them are killed and reaped, so no
process outlives the call. ``@COORDINATOR@`` in any argument becomes the
coordinator's ``127.0.0.1:<free port>``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COORDINATOR = "@COORDINATOR@"
LAST_PIDS: list[int] = []  # the processes of the latest call (all reaped when it returns)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(n_devices: int) -> dict[str, str]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n_devices}")
    env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _tail(path: str, n: int = 3000) -> str:
    with open(path, errors="replace") as f:
        return f.read()[-n:]


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # its session: it and anything it started
            except ProcessLookupError:
                pass
    for p in procs:
        p.wait()


def launch(commands: list[list[str]], *, n_devices: int = 4, timeout: float = 600,
           envs: list[dict[str, str]] | None = None) -> list[str]:
    """Runs ``python <command>`` for each command at once; returns their stdouts.

    ``envs``: more environment variables for each process.

    Raises AssertionError (naming the process, its exit code and its stderr's
    end) as soon as one exits non-zero, or when ``timeout`` seconds pass; the
    other processes are then killed.
    """
    address = f"127.0.0.1:{free_port()}"
    procs: list[subprocess.Popen] = []
    logs: list[tuple[str, str]] = []
    LAST_PIDS.clear()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i, command in enumerate(commands):
                out, err = os.path.join(tmp, f"{i}.out"), os.path.join(tmp, f"{i}.err")
                logs.append((out, err))
                with open(out, "w") as fo, open(err, "w") as fe:
                    procs.append(subprocess.Popen(
                        [sys.executable, *[a.replace(COORDINATOR, address) for a in command]],
                        stdout=fo, stderr=fe, cwd=REPO,
                        env={**_env(n_devices), **(envs[i] if envs else {})},
                        start_new_session=True))
                LAST_PIDS.append(procs[-1].pid)
            deadline = time.monotonic() + timeout
            while True:
                codes = [p.poll() for p in procs]
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed:
                    i = failed[0]
                    _kill(procs)
                    raise AssertionError(f"process {i} exited with {codes[i]}:\n"
                                         f"{_tail(logs[i][1])}")
                if all(c == 0 for c in codes):
                    return [_tail(out, 10**7) for out, _ in logs]
                if time.monotonic() > deadline:
                    _kill(procs)
                    raise AssertionError(
                        f"timed out after {timeout} s; stderr of process 0:\n{_tail(logs[0][1])}")
                time.sleep(0.1)
        finally:
            _kill(procs)


def run_one(command: list[str], *, n_devices: int = 8, timeout: float = 600) -> str:
    """One process (no coordinator) with ``n_devices`` host devices; returns its stdout."""
    return launch([command], n_devices=n_devices, timeout=timeout)[0]
