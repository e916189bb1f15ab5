"""Several processes training as one: starting JAX's distributed runtime, feeding it data.

Every process (one per host, or several on one machine) runs the same
program. :func:`initialize` joins them (``jax.distributed.initialize``) before
anything touches a device; the ``Loop`` then sees the global devices and
splits each global batch over all of them. Each process feeds only *its own
rows* of every global batch (``jax.make_array_from_process_local_data``
assembles them): process ``i`` of ``n`` feeds rows ``[i * B / n, (i + 1) * B / n)``,
which :func:`process_rows` gives and :func:`local_batches` cuts out of a
stream of global batches.

Only process 0 writes (checkpoints, ``config.json``, ``metrics.jsonl``,
TensorBoard). Every process *reads* the checkpoint it resumes from, so the
output directory must be one every host can read (a shared file system, or a
copy of the checkpoint on each host); :func:`check_same_checkpoints` refuses to
resume when the processes see different checkpoint files.

>>> process_rows(16, process_id=1, num_processes=2)
slice(8, 16, None)
>>> parse_coordinator("10.0.0.1:1234")
('10.0.0.1', 1234)
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np

__all__ = ["initialize", "parse_coordinator", "process_rows", "local_batches",
           "check_same_checkpoints", "is_chief"]

# What a Loop resumes from (see retrax.supervised.loop_checkpoints).
_RESUME_FILE = re.compile(r"^(checkpoint_(\d{8,})\.safetensors|model\.pkl\.gz)$")


def parse_coordinator(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; a ValueError names what is wrong."""
    host, sep, port = str(address).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"coordinator address must be HOST:PORT (e.g. 10.0.0.1:1234) with a "
                         f"port in 1..65535; got {address!r}.")
    return host, int(port)


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """Joins this process to the others; call it before any JAX computation.

    With no arguments JAX finds the cluster itself (SLURM, Cloud TPU pods,
    Open MPI). Otherwise all three are needed: the coordinator's ``HOST:PORT``
    (process 0 listens there), the number of processes and this one's id.
    On CPU the processes exchange data through gloo (TCP).
    """
    given = [coordinator is not None, num_processes is not None, process_id is not None]
    if any(given) and not all(given):
        raise ValueError("distributed.initialize: pass coordinator, num_processes and "
                         "process_id together, or none of them (auto-detection on SLURM, "
                         "Cloud TPU, Open MPI).")
    if coordinator is not None:
        parse_coordinator(coordinator)
        if not isinstance(num_processes, int) or num_processes < 1:
            raise ValueError(f"distributed.initialize: num_processes must be a positive int; "
                             f"got {num_processes!r}.")
        if not isinstance(process_id, int) or not 0 <= process_id < num_processes:
            raise ValueError(f"distributed.initialize: process_id must be in "
                             f"[0, {num_processes - 1}]; got {process_id!r}.")
    # CPU devices of different processes talk through gloo (JAX's default since 0.4.3x;
    # older versions had no CPU collectives unless this was set).
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # pragma: no cover - a JAX without the option
        pass
    if coordinator is None:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)


def is_chief() -> bool:
    """Whether this is process 0, the one that writes checkpoints and logs."""
    return jax.process_index() == 0


def process_rows(global_batch_size: int, process_id: int | None = None,
                 num_processes: int | None = None) -> slice:
    """The rows of a global batch that process ``process_id`` feeds (default: this one)."""
    process_id = jax.process_index() if process_id is None else process_id
    num_processes = jax.process_count() if num_processes is None else num_processes
    if global_batch_size % num_processes:
        raise ValueError(
            f"the global batch size {global_batch_size} is not divisible by the "
            f"{num_processes} processes; each process feeds an equal share. Use a multiple of "
            f"{num_processes}.")
    share = global_batch_size // num_processes
    return slice(process_id * share, (process_id + 1) * share)


def local_batches(global_batches: Iterable[Any]) -> Iterator[tuple]:
    """Yields this process's rows of each global batch (a tuple of arrays).

    Every process draws the same global batches (same seed) and keeps its own
    rows, so the run sees exactly the batches one process would. Simple and
    exact for data that is cheap to make; a large dataset is better read in
    per-process shards.
    """
    for batch in global_batches:
        arrays = [np.asarray(x) for x in batch]
        rows = process_rows(arrays[0].shape[0])
        yield tuple(x[rows] for x in arrays)


def _checkpoint_files(output_dir: str) -> list[tuple[str, int]]:
    """The files a Loop may resume from in ``output_dir``, with their sizes."""
    try:
        names = sorted(os.listdir(output_dir))
    except OSError:
        return []
    found = []
    for name in names:
        if _RESUME_FILE.match(name):
            try:
                found.append((name, os.path.getsize(os.path.join(output_dir, name))))
            except OSError:
                continue
    return found


def check_same_checkpoints(output_dir: str | None) -> None:
    """Raises unless every process sees the same checkpoints in ``output_dir``.

    Called by each process before it resumes (a collective: all must call it):
    processes that resumed from different files would train different weights
    and then wait for each other forever. Compared: the names and sizes of the
    ``checkpoint_<step>.safetensors`` files and ``model.pkl.gz``.
    """
    if jax.process_count() == 1 or output_dir is None:
        return
    from jax.experimental import multihost_utils

    files = _checkpoint_files(output_dir)
    digest = hashlib.sha256(repr(files).encode("utf-8")).digest()
    steps = [_RESUME_FILE.match(n).group(2) for n, _ in files]
    newest = max([int(s) for s in steps if s is not None], default=0)
    mine = np.array([int.from_bytes(digest[:7], "little"), newest,
                     any(n == "model.pkl.gz" for n, _ in files)], np.int64)
    seen = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1, 3)
    if np.all(seen[:, 0] == seen[0, 0]):
        return
    found = "; ".join(
        f"process {i}: " + (f"newest checkpoint step {int(s[1])}" if s[1] else "no checkpoint")
        + (", model.pkl.gz" if s[2] else "") for i, s in enumerate(seen))
    raise RuntimeError(
        f"Loop: the processes see different checkpoints in output_dir {output_dir!r} "
        f"({found}), so they would resume from different steps. Every process reads the "
        f"checkpoint it resumes from: put output_dir on a file system all hosts share, or copy "
        f"the same checkpoint files to each host.")
