"""What the training loop writes: stdout lines, JSON lines, TensorBoard events.

stdout follows Trax's format (``Step      1: train CrossEntropyLoss |  3.85``);
``metrics.jsonl`` in the output directory gets one JSON object per logged
value; TensorBoard event files go to ``train/`` and ``eval/`` when the
``tensorboardX`` package is installed (``pip install retrax[tensorboard]``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

__all__ = ["MetricWriter", "format_step", "format_metric"]


def format_step(step: int, message: str) -> str:
    return f"Step {step:6d}: {message}"


def format_metric(step: int, prefix: str, name: str, value: float, width: int) -> str:
    return format_step(step, f"{prefix.ljust(5)} {name.rjust(width)} | {value: .8f}")


class MetricWriter:
    """Fans logged values out to stdout, ``metrics.jsonl`` and TensorBoard."""

    def __init__(self, output_dir: str | None, stdout: Any = None):
        self._output_dir = output_dir
        self._stdout = stdout or sys.stdout
        self._jsonl = None
        self._tb: dict[str, Any] = {}
        self._tb_available: bool | None = None

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
        writer = self._tb_writer(mode)
        if writer is not None:
            writer.add_scalar(tag, float(value), int(step))

    def text(self, mode: str, tag: str, step: int, text: str) -> None:
        writer = self._tb_writer(mode)
        if writer is not None:
            writer.add_text(tag, text, int(step))

    def _tb_writer(self, mode: str) -> Any:
        if self._output_dir is None:
            return None
        if mode in self._tb:
            return self._tb[mode]
        if self._tb_available is None:
            try:
                import tensorboardX  # noqa: F401

                self._tb_available = True
            except ImportError:
                self._tb_available = False
        if not self._tb_available:
            self._tb[mode] = None
            return None
        from tensorboardX import SummaryWriter

        self._tb[mode] = SummaryWriter(os.path.join(self._output_dir, mode))
        return self._tb[mode]

    def flush(self) -> None:
        if self._jsonl is not None:
            self._jsonl.flush()
        for w in self._tb.values():
            if w is not None:
                w.flush()

    def close(self) -> None:
        self.flush()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        for w in self._tb.values():
            if w is not None:
                w.close()
        self._tb = {}
