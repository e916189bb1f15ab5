"""Test helper: run a script in a child process that sees 8 host (CPU) devices."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_with_eight_devices(script_text: str, folder, timeout: float) -> dict:
    """Writes ``script_text`` into ``folder``, runs it with 8 host devices, returns its last JSON line.

    The script gets ``folder`` as its one argument and must print one JSON
    object as its last line of output.
    """
    script = folder / "eight_devices.py"
    script.write_text(script_text)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True,
                       text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])
