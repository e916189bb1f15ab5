"""What the training loop writes: stdout lines, JSON lines, TensorBoard events.

stdout follows Trax's format (``Step      1: train CrossEntropyLoss |  3.85``);
``metrics.jsonl`` in the output directory gets one JSON object per logged
value; TensorBoard event files go to ``train/`` and ``eval/`` when the
``tensorboardX`` package is installed (``pip install retrax[tensorboard]``).
As in Trax, each ``Loop.run`` writes through its own summary writers, opened
when the run logs its first value and closed when it ends: one new event file
per directory per run. ``Loop.open_summary_writer(directory)`` opens them
(override it to write elsewhere, or return None to write no events).
:class:`TrainingLog` decides what a Loop logs and when: the train losses kept
on the device between log steps, the train summaries, the eval results, the
progress bar.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from retrax.layers import base

__all__ = ["MetricWriter", "TrainingLog", "TensorBoardWriter", "open_tensorboard_writer",
           "format_step", "format_metric", "host_array", "STAT_KEYS"]


def format_step(step: int, message: str) -> str:
    return f"Step {step:6d}: {message}"


def format_metric(step: int, prefix: str, name: str, value: float, width: int) -> str:
    return format_step(step, f"{prefix.ljust(5)} {name.rjust(width)} | {value: .8f}")


# The optimizer statistics (of each train step) that the train summaries log.
STAT_KEYS = ("gradients_l2", "weights_l2")

def host_array(values: Sequence[Any]) -> np.ndarray:
    """Device scalars (or arrays of one shape) as one NumPy array, in their dtype.

    >>> import jax.numpy as jnp
    >>> host_array([jnp.float32(1.5), jnp.float32(2.0)])
    array([1.5, 2. ], dtype=float32)
    """
    return np.asarray([np.asarray(v) for v in values])


_file_numbers = itertools.count()  # Distinct event file names for writers opened in one second.


class TensorBoardWriter:
    """A summary writer on ``tensorboardX`` with Trax's (jaxboard's) methods.

    ``scalar(tag, value, step)``, ``text(tag, text, step)``, ``flush()``,
    ``close()``: the interface the Loop uses for every summary writer, so a
    writer of your own (from :meth:`Loop.open_summary_writer`) needs only these.
    Each writer opens a new event file in ``directory``.
    """

    def __init__(self, directory: str):
        from tensorboardX import SummaryWriter

        # tensorboardX names files by the second and the host: a suffix keeps two apart.
        suffix = f".{os.getpid()}.{next(_file_numbers)}"
        self._writer = SummaryWriter(directory, filename_suffix=suffix)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, float(value), int(step))

    def text(self, tag: str, text: str, step: int) -> None:
        self._writer.add_text(tag, text, int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_tensorboard_writer(directory: str) -> TensorBoardWriter | None:
    """A :class:`TensorBoardWriter` on ``directory``, or None without ``tensorboardX``."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return None
    return TensorBoardWriter(directory)


class MetricWriter:
    """Fans logged values out to stdout, ``metrics.jsonl`` and summary writers.

    One summary writer per mode (``train``, ``eval``, ...), on
    ``output_dir/<mode>``, opened by ``open_writer(directory)`` (default
    :func:`open_tensorboard_writer`; None from it: no events) when the first
    value of a run arrives; :meth:`end_run` closes them, so the next run
    writes new event files (as Trax's Loop does).
    """

    def __init__(self, output_dir: str | None, stdout: Any = None,
                 open_writer: Callable[[str], Any] | None = None):
        self._output_dir = output_dir
        self._stdout = stdout or sys.stdout
        self._jsonl = None
        self._open_writer = open_writer or open_tensorboard_writer
        self._writers: dict[str, Any] = {}

    def print(self, line: str = "") -> None:
        print(line, file=self._stdout, flush=True)

    def scalar(self, mode: str, tag: str, step: int, value: float) -> None:
        if self._output_dir is not None:
            if self._jsonl is None:  # opened at the first value: a failed setup leaves no file
                self._jsonl = open(os.path.join(self._output_dir, "metrics.jsonl"), "a",
                                   encoding="utf-8")
            record = {"step": int(step), "mode": mode, "name": tag, "value": float(value),
                      "time": round(time.time(), 3)}
            self._jsonl.write(json.dumps(record) + "\n")
        writer = self.summary_writer(mode)
        if writer is not None:
            writer.scalar(tag, float(value), int(step))

    def text(self, mode: str, tag: str, step: int, text: str) -> None:
        writer = self.summary_writer(mode)
        if writer is not None:
            writer.text(tag, text, int(step))

    def summary_writer(self, mode: str) -> Any:
        """This run's summary writer for ``mode`` (opened now if needed), or None."""
        if self._output_dir is None:
            return None
        if mode not in self._writers:
            self._writers[mode] = self._open_writer(os.path.join(self._output_dir, mode))
        return self._writers[mode]

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        for w in self._writers.values():
            if w is not None:
                w.flush()

    def end_run(self) -> None:
        """Flushes everything and closes the summary writers (the next run opens new ones)."""
        self.flush()
        writers, self._writers = self._writers, {}
        for w in writers.values():
            if w is not None:
                w.close()

    def close(self) -> None:
        self.end_run()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None


class TrainingLog:
    """What a Loop logs: the losses of its train steps, train summaries, eval results.

    The losses stay on the device until a log step (a read-back per step
    would stall the Loop); :meth:`fetch` brings them to the host and stops
    training on NaN/inf. Lines go to ``stdout`` (above the progress bar while
    one shows); values to the :class:`MetricWriter` and the run's history.

    Args:
      output_dir: where ``metrics.jsonl`` and TensorBoard files go (None: nowhere).
      stdout: a file for the log lines (default ``sys.stdout``).
      progress_bar: show a bar during a run (None: only when stdout is a terminal).
      loss_names: the loss name of each train task.
      metric_names: the metric names of all eval tasks (to align the lines).
      open_summary_writer: opens a summary writer on a directory (see
        :class:`MetricWriter`); default :func:`open_tensorboard_writer`.
    """

    def __init__(self, output_dir: str | None, stdout: Any = None,
                 progress_bar: bool | None = None, loss_names: Sequence[str] = (),
                 metric_names: Sequence[str] = (),
                 open_summary_writer: Callable[[str], Any] | None = None):
        self._stdout = stdout or sys.stdout
        self.writer = MetricWriter(output_dir, self._stdout, open_summary_writer)
        self._progress_bar = progress_bar
        self._bar = None
        self._loss_names = list(loss_names)
        self._width = max((len(n) for n in [*self._loss_names, *metric_names]), default=0)
        self._pending: list[tuple] = []  # (step, task, loss, stats, lr) still on device
        self._fetched: list[tuple] = []  # the same, on the host, not yet logged
        self._last_log_time = time.time()
        self.last_log_step = 0  # the step of the last train summary (or of the resume)
        self._weights_printed = False

    def restart_clock(self) -> None:
        """Times the next summary's "Ran n train steps" from now."""
        self._last_log_time = time.time()

    def add_step(self, step: int, task: int, loss: Any, stats: Any, lr: float) -> None:
        """Keeps a train step's loss and stats (on the device) for the next summary."""
        self._pending.append((step, task, loss, stats, lr))
        if self._bar is not None:
            self._bar.update(1)

    def fetch(self, last_good_checkpoint: str | None) -> None:
        """Brings the losses since the last fetch to the host; stops on NaN/inf."""
        if not self._pending:
            return
        # np.asarray of each array (what jax.device_get does, without its Python work:
        # about thirty calls per array, three arrays per step), then one host array;
        # jnp.stack on the device would compile a program per list length.
        losses = host_array([p[2] for p in self._pending]).astype(np.float32, copy=False)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            step = self._pending[bad[0]][0]
            kept = (f" The last good checkpoint is {last_good_checkpoint}."
                    if last_good_checkpoint else " No checkpoint was written yet.")
            self._pending = []
            raise FloatingPointError(
                f"Loss became {losses[bad[0]]} at step {step}; training stopped and no "
                f"checkpoint was written from these weights.{kept} Lower the learning rate, "
                f"clip gradients (clip_grad_norm=...), or check that step's data."
            )
        # The stats the summaries log, per step on the host: (gradients_l2, weights_l2).
        stats = [host_array([p[3][key] for p in self._pending]) for key in STAT_KEYS]
        self._fetched.extend(
            (p[0], p[1], float(v), (g, w), p[4])
            for p, v, g, w in zip(self._pending, losses, stats[0], stats[1]))
        self._pending = []

    def log_training(self, step: int, weights: Any, history: Any,
                     last_good_checkpoint: str | None) -> None:
        """Logs each train task's mean loss (and training stats) since the last summary."""
        self.fetch(last_good_checkpoint)
        records, self._fetched = self._fetched, []
        elapsed = time.time() - self._last_log_time
        n_steps = step - self.last_log_step
        self.print()
        if not self._weights_printed:
            n_weights = sum(int(np.prod(w.shape)) for w in
                            base.flatten_weights_and_state(weights, ())[0])
            self.print(format_step(step, f"Total number of trainable weights: {n_weights}"))
            self._weights_printed = True
        self.print(format_step(step, f"Ran {n_steps} train steps in {elapsed:0.2f} secs"))
        for index, loss_name in enumerate(self._loss_names):
            mine = [r for r in records if r[1] == index]
            if not mine:
                continue
            loss = float(np.mean([r[2] for r in mine]))
            self.record(history, "train", f"metrics/{loss_name}", step, loss)
            self.record(history, "train", "training/learning_rate", step, mine[-1][4])
            self.record(history, "train", "training/steps per second", step,
                        n_steps / max(elapsed, 1e-9))
            for k, key in enumerate(STAT_KEYS):
                self.record(history, "train", f"training/{key}", step,
                            float(np.mean([r[3][k] for r in mine])))
            self.record(history, "train", "training/loss", step, loss)
            self.print(format_metric(step, "train", loss_name, loss, self._width))
        self._last_log_time = time.time()
        self.last_log_step = step

    def log_eval(self, step: int, prefix: str, metric_names: Sequence[str],
                 values: Sequence[float], history: Any) -> None:
        """Logs an eval task's metric values."""
        for name, value in zip(metric_names, values):
            self.record(history, "eval", f"metrics/{name}", step, float(value))
            self.print(format_metric(step, prefix, name, float(value), self._width))

    def log_summary(self, step: int, values: dict[str, Any], history: Any,
                    summary_writer: Any = None, value_prefix: str = "metrics/",
                    log_prefix: str = "eval", stdout: bool = True) -> None:
        """Logs scalar ``values`` as Trax's ``Loop.log_summary`` does: a line each, the
        history (mode ``log_prefix``, name ``value_prefix + name``), metrics.jsonl,
        TensorBoard, and ``summary_writer.scalar(name, value, step)`` when given."""
        for name, value in values.items():
            value = float(value)
            self.record(history, log_prefix, value_prefix + name, step, value)
            if summary_writer is not None:
                summary_writer.scalar(value_prefix + name, value, step)
            if stdout:
                self.print(format_metric(step, log_prefix, name, value, self._width))

    def record(self, history: Any, mode: str, tag: str, step: int, value: float) -> None:
        history.append(mode, tag, step, value)
        self.writer.scalar(mode, tag, step, value)

    def print(self, line: str = "") -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._stdout)
        else:
            self.writer.print(line)

    def open_bar(self, n_steps: int) -> None:
        show = self._progress_bar
        if show is None:
            show = hasattr(self._stdout, "isatty") and self._stdout.isatty()
        if show and n_steps > 1:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=n_steps, unit="step", file=sys.stderr, leave=False)

    def close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def flush(self) -> None:
        self.writer.flush()

    def end_run(self) -> None:
        """At the end of ``Loop.run``: flushes and closes this run's summary writers."""
        self.writer.end_run()

    def close(self) -> None:
        self.writer.close()
