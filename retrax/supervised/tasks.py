"""``TrainTask`` and ``EvalTask``: what the Loop trains on and evaluates (Trax's API).

A task pairs a stream of labeled batches ``(inputs..., targets, weights)``
with what to do on it: a loss layer and an optimizer (``TrainTask``) or metric
layers (``EvalTask``). :class:`retrax.supervised.training.Loop` runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from retrax.layers import base
from retrax.optimizers.base import Optimizer, check_nonnegative

__all__ = ["TrainTask", "EvalTask"]


def _as_iterator(data: Any, owner: str) -> Any:
    if hasattr(data, "__next__"):
        return data
    if isinstance(data, Iterable):
        return iter(data)
    raise TypeError(
        f"{owner}: labeled_data must be an iterator or iterable of batches "
        f"(inputs..., targets, weights); got {type(data).__name__}."
    )


def _first_batch(it: Any, owner: str) -> tuple:
    try:
        return tuple(next(it))
    except StopIteration:
        raise ValueError(f"{owner}: labeled_data is empty; it must yield batches.") from None


class TrainTask:
    """A labeled data stream, a loss layer and an optimizer (Trax's signature).

    Args:
      labeled_data: iterator of batches ``(inputs..., targets, weights)``.
      loss_layer: layer mapping ``(model_outputs, targets, weights)`` to a scalar.
      optimizer: a :class:`retrax.optimizers.Optimizer` instance (a class is
        instantiated with its defaults, as Trax's legacy API allowed).
      lr_schedule: ``step -> learning rate``; default: the optimizer's rate.
      n_steps_per_checkpoint: evals and checkpoints run at step 1 and every
        this many steps (unless the Loop gets ``eval_at``/``checkpoint_at``).
      n_steps_per_permanent_checkpoint: also keep ``model_<step>`` files.
      loss_name: the loss's name in logs; default ``loss_layer.name``.
      sample_batch: a batch used for shapes; default: the first batch of
        ``labeled_data`` (consumed, as in Trax).
      export_prefix: sub-directory name for this task's summaries.
    """

    def __init__(self, labeled_data: Any, loss_layer: base.Layer, optimizer: Any,
                 lr_schedule: Callable[[int], float] | None = None,
                 n_steps_per_checkpoint: int = 100,
                 n_steps_per_permanent_checkpoint: int | None = None,
                 loss_name: str | None = None, sample_batch: Any = None,
                 export_prefix: str | None = None):
        if not isinstance(loss_layer, base.Layer):
            raise TypeError(f"TrainTask: loss_layer must be a Layer; got {type(loss_layer).__name__}.")
        if isinstance(optimizer, type) and issubclass(optimizer, Optimizer):
            optimizer = optimizer()
        if not isinstance(optimizer, Optimizer):
            raise TypeError(
                f"TrainTask: optimizer must be a retrax optimizer such as "
                f"trax.optimizers.Adam(0.01); got {type(optimizer).__name__}."
            )
        for arg, value in (("n_steps_per_checkpoint", n_steps_per_checkpoint),
                           ("n_steps_per_permanent_checkpoint", n_steps_per_permanent_checkpoint)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"TrainTask: {arg} must be a positive int; got {value!r}.")
        self._labeled_data = _as_iterator(labeled_data, "TrainTask")
        self._loss_layer = loss_layer
        self._optimizer = optimizer
        self._lr_schedule = lr_schedule
        self._default_lr: float | None = None
        self._n_steps_per_checkpoint = n_steps_per_checkpoint
        self._n_steps_per_permanent_checkpoint = n_steps_per_permanent_checkpoint
        self._loss_name = loss_name or loss_layer.name
        self._sample_batch = (tuple(sample_batch) if sample_batch is not None
                              else _first_batch(self._labeled_data, "TrainTask"))
        self._export_prefix = export_prefix

    labeled_data = property(lambda self: self._labeled_data)
    sample_batch = property(lambda self: self._sample_batch)
    loss_layer = property(lambda self: self._loss_layer)
    loss_name = property(lambda self: self._loss_name)
    optimizer = property(lambda self: self._optimizer)
    lr_schedule = property(lambda self: self._lr_schedule)
    n_steps_per_checkpoint = property(lambda self: self._n_steps_per_checkpoint)
    n_steps_per_permanent_checkpoint = property(
        lambda self: self._n_steps_per_permanent_checkpoint)
    export_prefix = property(lambda self: self._export_prefix)

    def next_batch(self) -> tuple:
        return tuple(next(self._labeled_data))

    def learning_rate(self, step: int) -> float:
        if self._lr_schedule is not None:
            value = self._lr_schedule(step)
            # The same check as the optimizer's learning_rate: a rate that is NaN,
            # negative or beyond float32 (1e39 becomes inf) would poison the weights.
            check_nonnegative(f"TrainTask: lr_schedule({step})", "the learning rate", value)
            return float(value)
        if self._default_lr is None:  # read once: a device read-back per step stalls the Loop
            self._default_lr = float(self._optimizer.opt_params["learning_rate"])
        return self._default_lr


class EvalTask:
    """A labeled data stream and metric layers to evaluate on it.

    Args:
      labeled_data: iterator of batches ``(inputs..., targets, weights)``.
      metrics: layers mapping ``(model_outputs, targets, weights)`` to scalars.
      metric_names: names in logs; default each metric's ``name``.
      n_eval_batches: batches averaged per evaluation.
    """

    def __init__(self, labeled_data: Any, metrics: Sequence[base.Layer],
                 metric_names: Sequence[str] | None = None, n_eval_batches: int = 1,
                 sample_batch: Any = None, export_prefix: str | None = None):
        metrics = list(metrics)  # May be empty: a task holding data for a callback (as Trax).
        for i, m in enumerate(metrics):
            if not isinstance(m, base.Layer):
                raise TypeError(f"EvalTask: metrics[{i}] must be a Layer; got {type(m).__name__}.")
        names = list(metric_names) if metric_names is not None else [m.name for m in metrics]
        if len(names) != len(metrics):
            raise ValueError(
                f"Number of metrics ({len(metrics)}) does not equal number of metric names "
                f"({len(names)})."
            )
        if not isinstance(n_eval_batches, int) or n_eval_batches < 1:
            raise ValueError(f"EvalTask: n_eval_batches must be a positive int; got {n_eval_batches!r}.")
        self._labeled_data = _as_iterator(labeled_data, "EvalTask")
        self._metrics = metrics
        self._metric_names = names
        self._n_eval_batches = n_eval_batches
        self._sample_batch = (tuple(sample_batch) if sample_batch is not None
                              else _first_batch(self._labeled_data, "EvalTask"))
        self._export_prefix = export_prefix

    labeled_data = property(lambda self: self._labeled_data)
    sample_batch = property(lambda self: self._sample_batch)
    metrics = property(lambda self: self._metrics)
    metric_names = property(lambda self: self._metric_names)
    n_eval_batches = property(lambda self: self._n_eval_batches)
    export_prefix = property(lambda self: self._export_prefix)

    def next_batch(self) -> tuple:
        return tuple(next(self._labeled_data))
