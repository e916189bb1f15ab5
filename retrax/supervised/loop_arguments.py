"""The Loop's constructor arguments: their checks and the default step schedules.

``Loop.__init__`` calls :func:`checked_arguments` before it touches anything
(no directory is claimed, nothing is written when an argument is wrong), and
takes its default ``checkpoint_at`` / ``eval_at`` / ``permanent_checkpoint_at``
from :func:`every`.

>>> at = every(100)
>>> [n for n in range(1, 301) if at(n)]
[1, 100, 200, 300]
>>> every(None)(1)
False
>>> as_list(None), as_list('task'), as_list(('a', 'b'))
([], ['task'], ['a', 'b'])
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from retrax.layers import base

__all__ = ["every", "as_list", "checked_arguments"]


def every(n: int | None) -> Callable[[int], bool]:
    """Step 1 and every ``n``-th step (never for ``n=None``): Trax's default schedules."""
    return (lambda step: False) if n is None else (lambda step: step == 1 or step % n == 0)


def as_list(tasks: Any) -> list:
    """``tasks`` as a list: None is empty, one task a list of one, a list or tuple a copy."""
    if tasks is None:
        return []
    return list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]


def checked_arguments(model: Any, tasks: Any, eval_tasks: Any, keep_checkpoints: int,
                      run_config: Any, unsupported: Any) -> tuple[list, list, dict | None]:
    """The Loop's arguments checked: ``(tasks, eval_tasks, a JSON copy of run_config)``.

    ``unsupported``: ``(adasum, loss_chunk_size)``; adasum is refused, a chunk
    size must be an int >= 0.
    """
    adasum, loss_chunk_size = unsupported
    if adasum:
        raise NotImplementedError(
            "Loop: adasum is not supported by retrax (its step is compiled and sharded with "
            "jax.sharding, which averages gradients exactly); leave adasum=False.")
    if isinstance(loss_chunk_size, bool) or not isinstance(loss_chunk_size, int) \
            or loss_chunk_size < 0:
        raise ValueError(f"Loop: loss_chunk_size must be an int >= 0; got {loss_chunk_size!r}.")
    if not isinstance(model, base.Layer):
        raise TypeError(f"Loop: model must be a Layer; got {type(model).__name__}.")
    tasks = as_list(tasks)
    if not tasks:
        raise ValueError("Loop: tasks must contain at least one TrainTask.")
    if keep_checkpoints < 1:
        raise ValueError(f"Loop: keep_checkpoints must be >= 1; got {keep_checkpoints}.")
    if run_config is not None and not isinstance(run_config, dict):
        raise TypeError(f"Loop: run_config must be a dict; got {type(run_config).__name__}.")
    try:  # A copy, checked before anything is written: config.json must hold it.
        run_config = None if run_config is None else json.loads(json.dumps(run_config))
    except (TypeError, ValueError) as err:
        raise TypeError(f"Loop: run_config must hold only JSON values: {err}.") from None
    return tasks, as_list(eval_tasks), run_config
