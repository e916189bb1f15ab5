"""``trainer_lib.train``: Trax's one-call training entry point, on a ``training.Loop``.

``train(output_dir, model=..., inputs=...)`` builds a ``TrainTask`` from
``inputs.train_stream(n_devices)``, an ``EvalTask`` from
``inputs.eval_stream(n_devices)`` with Trax's default metrics, a ``Loop``
over them, runs it to ``steps`` (in total: a run resumed from a checkpoint
in ``output_dir`` trains only the rest) and returns the Loop, as Trax 1.4.1
does with ``use_loop=True`` (its default).

Trax's defaults are kept: loss ``WeightedCategoryCrossEntropy``, optimizer
``Adafactor``, learning rate ``lr_schedules.multifactor()``, an eval (and a
checkpoint) every ``eval_frequency=100`` steps averaging ``eval_steps=10``
batches. A batch is ``(inputs..., targets, weights)``.

Not here: Trax's legacy ``Trainer`` class (``use_loop=False``, ``trainer_class``,
``load_trainer_state``...). Use ``training.Loop`` directly (or this function,
which builds one); :meth:`training.Loop.run`, its checkpoints and
``Loop.history`` cover what ``Trainer.train_epoch`` and ``TrainerState`` did.

>>> [name for name, _ in default_metrics()]
['loss', 'accuracy', 'sequence_accuracy', 'neg_log_perplexity', 'weights_per_batch_per_core']
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Any

import jax

from retrax import layers as tl
from retrax import optimizers
from retrax.layers import base
from retrax.supervised import lr_schedules, training

__all__ = ["train", "default_metrics", "NamedStream"]

# An extra eval stream for ``additional_eval_streams``: its metrics are logged under ``name``.
NamedStream = collections.namedtuple("NamedStream", ["name", "stream"])


def default_metrics() -> list[tuple[str, base.Layer]]:
    """Trax's default eval metrics, as fresh layers: ``[(name, layer), ...]``.

    ``loss``, ``accuracy``, ``sequence_accuracy``, ``neg_log_perplexity`` and
    ``weights_per_batch_per_core`` (the sum of the batch's weights).
    """
    return [
        ("loss", tl.WeightedCategoryCrossEntropy()),
        ("accuracy", tl.WeightedCategoryAccuracy()),
        ("sequence_accuracy", tl.MaskedSequenceAccuracy()),
        ("neg_log_perplexity", tl.Serial(tl.WeightedCategoryCrossEntropy(), tl.Negate())),
        ("weights_per_batch_per_core", tl.Serial(tl.Drop(), tl.Drop(), tl.Sum())),
    ]


def _optimizer(optimizer: Any) -> Any:
    if isinstance(optimizer, optimizers.Optimizer):
        return optimizer
    if callable(optimizer):  # a class or factory, as Trax passes it
        return optimizer()
    raise TypeError(f"trainer_lib.train: optimizer must be an Optimizer class or instance "
                    f"(e.g. trax.optimizers.Adafactor); got {type(optimizer).__name__}.")


def _streams(inputs: Any, n_devices: int) -> tuple[Any, Any]:
    if inputs is None:
        raise ValueError("trainer_lib.train: pass inputs=..., a trax.data.Inputs (or a "
                         "function returning one) whose train_stream(n_devices) and "
                         "eval_stream(n_devices) yield (inputs..., targets, weights) batches.")
    if callable(inputs) and not hasattr(inputs, "train_stream"):
        inputs = inputs()  # e.g. functools.partial(make_inputs, batch_size=...), as Trax
    for name in ("train_stream", "eval_stream"):
        if not callable(getattr(inputs, name, None)):
            raise TypeError(f"trainer_lib.train: inputs must have {name}(n_devices) (a "
                            f"trax.data.Inputs); got {type(inputs).__name__}.")
    return inputs.train_stream(n_devices), inputs.eval_stream(n_devices)


def _at(steps: Sequence[int] | None) -> Callable[[int], bool] | None:
    if steps is None:
        return None
    chosen = frozenset(int(s) for s in steps)
    return lambda step: step in chosen


def train(output_dir: str | None, model: Callable[..., base.Layer] | None = None,
          loss_fn: base.Layer | None = None, inputs: Any = None,
          optimizer: Any = optimizers.Adafactor,
          lr_schedule_fn: Callable[[], Callable[[int], float]] = lr_schedules.multifactor,
          trainer_class: Any = None, steps: int = 1000,
          checkpoints_at: Sequence[int] | None = None,
          permanent_checkpoints_at: Sequence[int] | None = None,
          eval_steps: int | None = 10, eval_frequency: int | None = 100,
          permanent_checkpoint_frequency: int | None = None, random_seed: int | None = None,
          save_graphs: bool = True, metrics: dict[str, base.Layer] | None = None,
          checkpoint_highest: str | None = None, checkpoint_lowest: str | None = None,
          use_loop: bool = True, loss_chunk_size: int = 0,
          use_memory_efficient_trainer: bool = False, adasum: bool = False,
          init_checkpoint: str | None = None, callbacks: Sequence[Any] | None = None,
          n_weights_shards: int = 1, additional_train_tasks: Sequence[Any] | None = None,
          additional_eval_tasks: Sequence[Any] | None = None,
          additional_eval_streams: Sequence[NamedStream] | None = None,
          **loop_kwargs: Any) -> training.Loop:
    """Trains ``model(mode='train')`` on ``inputs`` for ``steps`` steps; returns the Loop.

    Trax 1.4.1's arguments and defaults (see the module docstring). ``model``:
    a function (or Layer class) taking ``mode``; the Loop evaluates with
    ``model(mode='eval')``. ``inputs``: a ``trax.data.Inputs``, or a function
    returning one. ``metrics``: ``{name: layer}`` replacing the default eval
    metrics. ``eval_steps`` or ``eval_frequency`` None or 0: no evaluation (and,
    for ``eval_frequency``, no periodic checkpoints). ``save_graphs`` is ignored;
    ``trainer_class`` is only read by Trax's legacy Trainer path
    (``use_loop=False``), which retrax does not have. Further keyword arguments
    go to ``training.Loop`` (e.g. ``sharding='fsdp'``, ``compute_dtype``,
    ``stdout``).
    """
    if not use_loop:
        raise NotImplementedError(
            "trainer_lib.train: use_loop=False selects Trax's legacy Trainer class, which "
            "retrax does not have; leave use_loop=True (a training.Loop) or build "
            "training.TrainTask / EvalTask / Loop yourself.")
    if permanent_checkpoint_frequency is not None and permanent_checkpoints_at is not None:
        raise ValueError("trainer_lib.train: set only one of permanent_checkpoint_frequency "
                         "and permanent_checkpoints_at.")
    if n_weights_shards != 1:
        raise ValueError(f"trainer_lib.train: n_weights_shards={n_weights_shards} is Trax's "
                         f"weight sharding; in retrax pass sharding='fsdp' (weights and "
                         f"optimizer slots split over all devices) and leave n_weights_shards=1.")
    if model is None or not callable(model) or isinstance(model, base.Layer):
        raise TypeError(f"trainer_lib.train: model must be a function of mode returning a Layer "
                        f"(e.g. functools.partial(trax.models.TransformerLM, vocab_size=...)); "
                        f"got {type(model).__name__}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"trainer_lib.train: steps must be an int >= 0; got {steps!r}.")
    del save_graphs, trainer_class  # no graphs written; no legacy Trainer

    train_stream, eval_stream = _streams(inputs, jax.local_device_count())
    train_task = training.TrainTask(
        train_stream, loss_fn if loss_fn is not None else tl.WeightedCategoryCrossEntropy(),
        _optimizer(optimizer), lr_schedule=lr_schedule_fn(),
        n_steps_per_checkpoint=eval_frequency or None,
        n_steps_per_permanent_checkpoint=permanent_checkpoint_frequency)

    named = list(metrics.items()) if metrics is not None else default_metrics()
    names, layers = [n for n, _ in named], [m for _, m in named]
    eval_tasks = []
    if eval_steps and eval_frequency:
        eval_tasks.append(training.EvalTask(eval_stream, layers, metric_names=names,
                                            n_eval_batches=eval_steps))
    eval_tasks += list(additional_eval_tasks or [])
    for stream in additional_eval_streams or []:
        eval_tasks.append(training.EvalTask(stream.stream, layers, metric_names=names,
                                            n_eval_batches=eval_steps or 1,
                                            export_prefix=stream.name))

    model_train, model_eval = model(mode="train"), model(mode="eval")
    if init_checkpoint:
        model_train.init_from_file(init_checkpoint, weights_only=True)
        model_eval.init_from_file(init_checkpoint, weights_only=True)
    loop = training.Loop(
        model_train, [train_task, *(additional_train_tasks or [])], eval_model=model_eval,
        eval_tasks=eval_tasks, output_dir=output_dir, checkpoint_at=_at(checkpoints_at),
        checkpoint_low_metric=checkpoint_lowest, checkpoint_high_metric=checkpoint_highest,
        permanent_checkpoint_at=_at(permanent_checkpoints_at),
        loss_chunk_size=loss_chunk_size, use_memory_efficient_trainer=use_memory_efficient_trainer,
        adasum=adasum, random_seed=random_seed, callbacks=callbacks, **loop_kwargs)
    if steps - loop.step <= 0:
        loop.log_step(f"Stop training, already reached the total training steps {steps}")
        return loop
    loop.run(steps - loop.step)
    return loop
