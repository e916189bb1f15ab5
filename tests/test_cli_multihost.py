"""``retrax train`` as several processes: the flags' checks, and two processes training as one.

The slow test runs the README's commands on this machine: two processes with 4
host devices each, first with ``--coordinator/--num-processes/--process-id``,
then resumed with ``--distributed auto`` under a SLURM-like environment (JAX
reads the job's processes from ``SLURM_*`` variables), in one shared output
directory; the checkpoints equal those of one 8-device process.
"""

from __future__ import annotations

import json
import os
import re
import socket

import numpy as np
import pytest
from supervised.multihost_launch import COORDINATOR, launch, run_one

from retrax import cli
from retrax.native_format import read_native

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVERSE_CONFIG = os.path.join(REPO, "examples", "configs", "reverse.json")
# The seed model and task of examples/configs/reverse.json (global batch 16: 8 rows per
# process, 2 per device), no eval, a checkpoint every 3 steps.
ARGS = ["train", REVERSE_CONFIG, "--set", "eval=null", "--set", "n_steps_per_checkpoint=3"]
ATOL = 1e-4  # float32 sums in another order; measured: weights 9.9e-6 after 6 Adam steps


def _usage_error(capsys, *argv: str) -> str:
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("flags, pattern", [
    (["--coordinator", "127.0.0.1:1234"], r"--coordinator also needs --num-processes, "
                                          r"--process-id"),
    (["--num-processes", "2", "--process-id", "0"], r"also needs --coordinator"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"],
     r"--coordinator must be HOST:PORT.*got 'nohost'"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2"],
     r"--process-id must be in \[0, 1\] for --num-processes 2; got 2"),
    (["--distributed", "auto", "--process-id", "0"], r"--distributed auto finds the cluster "
                                                     r"itself; drop --process-id"),
    (["--num-processes", "0"], r"argument --num-processes: expected an integer >= 1, got '0'"),
])
def test_bad_distributed_flags_exit_2_before_any_work(flags, pattern, capsys, tmp_path):
    out = tmp_path / "run"
    line = _usage_error(capsys, *ARGS, "--output-dir", str(out), *flags)
    assert re.search(pattern, line), line
    assert not out.exists()


def test_distributed_auto_outside_a_cluster_is_a_usage_error(capsys, tmp_path, monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM_", "OMPI_", "TPU_", "JAX_COORDINATOR")):
            monkeypatch.delenv(name)
    import jax

    def no_cluster():
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    line = _usage_error(capsys, *ARGS, "--output-dir", str(tmp_path / "r"),
                        "--distributed", "auto")
    assert "--distributed auto found no cluster" in line and "--coordinator HOST:PORT" in line


def test_global_batch_must_split_over_the_processes():
    from retrax.cli.errors import UsageError
    from retrax.cli.train_config import check_batch_splits

    check_batch_splits({"batch_size": 16}, 2, 16)
    with pytest.raises(UsageError, match=r"task.batch_size is 15.*multiple of 2"):
        check_batch_splits({"batch_size": 15}, 2, 16)


def _slurm_port() -> int:
    """A free port that JAX's SLURM detection picks: job id % 4096 + 61440."""
    for port in range(61440 + os.getpid() % 4000, 65536):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 61440..65535")


def _checkpoint(directory, step: int) -> dict:
    with open(os.path.join(directory, f"checkpoint_{step:08d}.safetensors"), "rb") as f:
        return read_native(f.read())


def _assert_same_checkpoint(got: dict, want: dict) -> None:
    assert len(got["flat_weights"]) == len(want["flat_weights"])
    for a, b in zip(got["flat_weights"], want["flat_weights"]):
        np.testing.assert_allclose(a, b, rtol=0, atol=ATOL)
    assert sorted(got["arrays"]) == sorted(want["arrays"])  # Adam's slots
    for name in want["arrays"]:
        np.testing.assert_allclose(got["arrays"][name], want["arrays"][name], rtol=0, atol=ATOL)
    assert got["meta"]["extra"]["step"] == want["meta"]["extra"]["step"]


def _losses(directory) -> list[tuple[int, float]]:
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(r["step"], r["value"]) for r in rows if r["name"] == "metrics/CrossEntropyLoss"]


@pytest.mark.slow
def test_two_processes_from_the_command_line_train_as_one(tmp_path):
    ref, run = tmp_path / "one_process", tmp_path / "two_processes"
    run_one(["-m", "retrax", *ARGS, "--output-dir", str(ref), "--steps", "6"], n_devices=8)

    # Steps 1-3: the explicit form, both processes given the same (shared) directory.
    outs = launch([["-m", "retrax", *ARGS, "--output-dir", str(run), "--steps", "3",
                    "--coordinator", COORDINATOR, "--num-processes", "2", "--process-id", str(i)]
                   for i in range(2)])
    assert all("Trained to step 3" in out for out in outs), outs
    _assert_same_checkpoint(_checkpoint(run, 3), _checkpoint(ref, 3))

    # Steps 4-6: resumed with --distributed auto, the processes found from SLURM's variables.
    port = _slurm_port()
    slurm = [{"SLURM_JOB_ID": str(port - 61440), "SLURM_STEP_NODELIST": "127.0.0.1",
              "SLURM_NTASKS": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
              "SLURM_STEP_NUM_NODES": "1"} for i in range(2)]
    outs = launch([["-m", "retrax", *ARGS, "--output-dir", str(run), "--steps", "6",
                    "--distributed", "auto"] for _ in range(2)], envs=slurm)
    assert all("Resuming from step 3" in out and "Trained to step 6" in out for out in outs), outs
    _assert_same_checkpoint(_checkpoint(run, 6), _checkpoint(ref, 6))
    got, want = _losses(run), _losses(ref)
    assert [s for s, _ in got] == [s for s, _ in want] == [1, 3, 6]  # each logged once
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=1e-5)
    assert sorted(os.listdir(run)) == sorted(os.listdir(ref))
