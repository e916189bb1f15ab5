"""Supervised training: ``TrainTask``, ``EvalTask`` and ``Loop`` (Trax's API).

A minimal run, as in the quick-start notebook::

    train_task = training.TrainTask(labeled_data=batches, loss_layer=tl.CrossEntropyLoss(),
                                    optimizer=trax.optimizers.Adam(0.01))
    eval_task = training.EvalTask(labeled_data=batches, metrics=[tl.CrossEntropyLoss(), tl.Accuracy()])
    loop = training.Loop(model, train_task, eval_tasks=[eval_task], output_dir='~/train_dir')
    loop.run(1000)

What happens at each step ``n`` (steps count from 1): one compiled train step
(forward, backward, optimizer update; see :mod:`retrax.supervised.train_step`);
then, if ``eval_at(n)``, the training progress is logged and the eval tasks
run; then, if ``checkpoint_at(n)``, a checkpoint is written. (Trax writes the
checkpoint before the eval of the same step, so its history lacks that eval;
retrax writes it after, so a resumed run continues exactly.)

Checkpoints in ``output_dir``:

* ``checkpoint_<step>.safetensors`` — everything needed to resume exactly:
  weights, state, optimizer slots of every task, step, history, the number of
  batches drawn from each data stream. The last ``keep_checkpoints`` are kept;
  ``model_<step>.safetensors`` (permanent checkpoints) are never removed.
* ``model.pkl.gz`` + ``model.weights.npy.gz`` (+ ``model.opt_slots<i>.npy.gz``)
  in Trax's Loop layout, so ``init_from_file('.../model.pkl.gz')`` works in
  retrax *and* in real Trax (turn off with ``write_trax_checkpoint=False``).
* ``config.json`` (the run's one config: the Loop's settings, the model's
  config, versions, and under ``"run"`` the ``run_config`` the caller built
  the run from, e.g. ``retrax train``'s resolved config) and ``metrics.jsonl``.

Resuming: a ``Loop`` whose ``output_dir`` holds a checkpoint continues from it.
Data position: a Python generator cannot be rewound or restored, so on resume
the Loop draws and discards as many batches from each (new) data iterator as
the interrupted run had consumed. A deterministic (seeded) generator then
continues exactly where it stopped; a generator using unseeded global
randomness continues with fresh random batches. An iterator with
``state_dict()``/``load_state_dict(d)`` methods (a ``retrax.data`` pipeline)
instead has its position saved in each checkpoint (JSON metadata, key
``data_state``) and restored on resume, without re-drawing batches.

Prefetch: by default (``prefetch=True``) each data iterator draws its next
batch in a background thread while the current step runs. Batches are handed
out in the iterator's order (tasks sharing an iterator get the same batches as
without prefetch) and errors, ``StopIteration`` included, surface at the step
that would have received the batch. The iterator is then one batch ahead of
the Loop; the saved position is the one after the last batch the Loop used.

Randomness: every random key of a run comes from ``random_seed`` (default 0),
folded with the step number, so the same seed gives the same run.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import queue
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax import checkpoints, models, shapes
from retrax.compat import trax_pickle
from retrax.fastmath import random as fastmath_random
from retrax.layers import base, core
from retrax.optimizers.base import Optimizer, check_nonnegative, flat_slots, unflat_slots
from retrax.supervised import run_dir
from retrax.supervised import train_step as ts
from retrax.supervised.history import History
from retrax.supervised.loop_io import MetricWriter, format_metric, format_step

__all__ = ["TrainTask", "EvalTask", "Loop"]


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
        metrics = list(metrics)
        if not metrics:
            raise ValueError("EvalTask: metrics must contain at least one metric layer.")
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


# -- Data streams: counts, resumable positions, background prefetch -----------------


class _Prefetcher:
    """Runs ``draw()`` in a background thread, one call ahead of ``take()``, in order.

    An exception of ``draw()`` (``StopIteration`` included) is re-raised by the
    ``take()`` that would have returned its result; nothing is drawn ahead then.
    """

    def __init__(self, draw: Callable[[], Any]):
        self._draw = draw
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self.pending = False

    def _run(self) -> None:
        try:
            result = (True, self._draw())
        except BaseException as err:  # Re-raised in the Loop's thread by take().
            result = (False, err)
        self._results.put(result)

    def request(self) -> None:
        # A short-lived thread per batch: nothing lingers (or holds the data) after the Loop.
        threading.Thread(target=self._run, name="retrax-prefetch", daemon=True).start()
        self.pending = True

    def take(self) -> Any:
        if not self.pending:
            self.request()
        ok, value = self._results.get()
        self.pending = False
        if not ok:
            raise value
        self.request()
        return value

    def cancel(self) -> None:
        """Waits for a draw in flight and discards it."""
        if self.pending:
            self._results.get()
            self.pending = False


class _Stream:
    """The batches of one data iterator (shared by the tasks using it).

    Counts them; for a resumable iterator (``state_dict``/``load_state_dict``)
    knows its position after the last batch handed out; with ``prefetch``
    draws the next batch in a background thread.
    """

    def __init__(self, iterator: Any, prefetch: bool = False):
        self.iterator = iterator
        self.consumed = 0
        self.resumable = (callable(getattr(iterator, "state_dict", None))
                          and callable(getattr(iterator, "load_state_dict", None)))
        self._state: Any = None
        self._prefetcher = _Prefetcher(self._draw) if prefetch else None

    def _draw(self) -> tuple:
        batch = tuple(next(self.iterator))
        # With prefetch the iterator runs one batch ahead: snapshot its position now.
        snapshot = self._prefetcher is not None and self.resumable
        return batch, (self.iterator.state_dict() if snapshot else None)

    def next(self) -> tuple:
        batch, self._state = self._prefetcher.take() if self._prefetcher else self._draw()
        self.consumed += 1
        return batch

    def state(self) -> Any:
        """The iterator's position after the last batch handed out (resumable iterators)."""
        if self._prefetcher is not None and self.consumed > 0:
            return self._state
        return self.iterator.state_dict()

    def restore(self, state: Any, consumed: int) -> None:
        if self._prefetcher is not None:
            self._prefetcher.cancel()
        self.iterator.load_state_dict(state)
        self.consumed, self._state = consumed, state

    def skip(self, n: int, what: str) -> None:
        for i in range(n):
            try:
                self.next()
            except StopIteration:
                raise ValueError(
                    f"Resuming: {what} ran out after {i} batches while skipping the {n} "
                    f"batches the interrupted run had used."
                ) from None


def _every(n: int | None) -> Callable[[int], bool]:
    if n is None:
        return lambda step: False
    return lambda step: step == 1 or step % n == 0


def _find_embedding_vocab(model: base.Layer) -> int | None:
    stack = [model]
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, core.Embedding):
            return layer.vocab_size
        stack = list(layer.sublayers) + stack
    return None


class Loop:
    """Runs train tasks, evaluates, logs and checkpoints (Trax's signature).

    Keyword-only additions: ``keep_checkpoints`` (native checkpoints kept, default
    3), ``write_trax_checkpoint`` (also write Trax's ``model.pkl.gz`` layout,
    default True), ``progress_bar`` (None: only when stdout is a terminal),
    ``stdout`` (a file for the log lines), ``prefetch`` (draw each next batch in a
    background thread, default True; see the module docstring), ``run_config`` (a
    dict of JSON values saved under ``"run"`` in ``config.json``, the run's one
    config file).

    Differences from Trax: ``random_seed=None`` means seed 0 (Trax draws a random
    one); without ``eval_model`` the evaluation uses a copy of ``model`` switched
    to ``'eval'`` mode (Trax evaluates with dropout on); a checkpoint is written
    after the eval of its step; ``n_devices`` defaults to all local devices and
    uses ``jax.sharding`` data parallelism.
    """

    def __init__(self, model: base.Layer, tasks: Any, eval_model: base.Layer | None = None,
                 eval_tasks: Any = None, output_dir: str | None = None,
                 checkpoint_at: Callable[[int], bool] | None = None,
                 checkpoint_low_metric: str | None = None,
                 checkpoint_high_metric: str | None = None,
                 permanent_checkpoint_at: Callable[[int], bool] | None = None,
                 eval_at: Callable[[int], bool] | None = None,
                 which_task: Callable[[int], int] | None = None,
                 n_devices: int | None = None, random_seed: int | None = None,
                 loss_chunk_size: int = 0, use_memory_efficient_trainer: bool = False,
                 adasum: bool = False, callbacks: Sequence[Any] | None = None, *,
                 keep_checkpoints: int = 3, write_trax_checkpoint: bool = True,
                 progress_bar: bool | None = None, stdout: Any = None, prefetch: bool = True,
                 overwrite: bool = False, run_config: dict | None = None):
        if use_memory_efficient_trainer or adasum or loss_chunk_size:
            raise NotImplementedError(
                "Loop: use_memory_efficient_trainer, adasum and loss_chunk_size are not "
                "supported by retrax; leave them at their defaults."
            )
        if not isinstance(model, base.Layer):
            raise TypeError(f"Loop: model must be a Layer; got {type(model).__name__}.")
        tasks = list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
        if not tasks:
            raise ValueError("Loop: tasks must contain at least one TrainTask.")
        eval_tasks = [] if eval_tasks is None else (
            list(eval_tasks) if isinstance(eval_tasks, (list, tuple)) else [eval_tasks])
        if keep_checkpoints < 1:
            raise ValueError(f"Loop: keep_checkpoints must be >= 1; got {keep_checkpoints}.")
        if run_config is not None and not isinstance(run_config, dict):
            raise TypeError(f"Loop: run_config must be a dict; got {type(run_config).__name__}.")
        try:  # A copy, checked before anything is written: config.json must hold it.
            self._run_config = None if run_config is None else json.loads(json.dumps(run_config))
        except (TypeError, ValueError) as err:
            raise TypeError(f"Loop: run_config must hold only JSON values: {err}.") from None
        self._model = model
        self._tasks = tasks
        self._eval_tasks = eval_tasks
        self._output_dir = None if output_dir is None else os.path.expanduser(os.fspath(output_dir))
        self._keep = keep_checkpoints
        self._write_trax = write_trax_checkpoint
        self._seed = 0 if random_seed is None else int(random_seed)
        self._base_key = fastmath_random.get_prng(self._seed)
        self._which_task = which_task or (lambda n: n % len(tasks))
        n_ckpt = tasks[0].n_steps_per_checkpoint
        self._checkpoint_at = checkpoint_at or _every(n_ckpt)
        # Without eval tasks the train metrics are still logged at these steps (as Trax).
        self._eval_at = eval_at or _every(n_ckpt)
        self._permanent_at = permanent_checkpoint_at or _every(
            tasks[0].n_steps_per_permanent_checkpoint)
        self._low_metric = checkpoint_low_metric
        self._high_metric = checkpoint_high_metric
        self._placement = ts.Placement(n_devices)
        self._step = 0
        self._history = History()
        self._stdout = stdout or sys.stdout
        self._progress_bar = progress_bar
        self._bar = None
        self._prefetch = bool(prefetch)
        # Claim the directory before anything is written (see retrax.supervised.run_dir).
        self._run_token = object()
        self._run_lock = None
        if self._output_dir is not None:
            self._run_lock = run_dir.claim(self._output_dir, self._run_token, overwrite=overwrite)
            weakref.finalize(self, self._run_lock.release, self._run_token)
        try:
            self._setup(model, tasks, eval_model, eval_tasks, callbacks)
        except BaseException:
            self.close()
            raise

    def _setup(self, model: base.Layer, tasks: list, eval_model: base.Layer | None,
               eval_tasks: list, callbacks: Sequence[Any] | None) -> None:
        self._writer = MetricWriter(self._output_dir, self._stdout)

        # Streams: tasks sharing one iterator share one counter.
        self._streams: dict[int, _Stream] = {}
        self._task_streams = [self._stream_for(t.labeled_data) for t in tasks]
        self._eval_streams = [self._stream_for(t.labeled_data) for t in eval_tasks]

        self._init_model(model, tasks[0].sample_batch)
        self._eval_model = eval_model if eval_model is not None else base.with_mode(model, "eval")
        if eval_model is not None and not eval_model.initialized:
            eval_model.init(self._model_sig(tasks[0].sample_batch))
        self._vocab = _find_embedding_vocab(model)
        self._ref_sigs = [shapes.signature(t.sample_batch) for t in tasks]

        self._weights = self._placement.replicate(model.weights)
        self._state = self._placement.replicate(model.state)
        self._train_fns, self._slots, self._opt_params = [], [], []
        out_sig = model.output_signature(self._model_sig(tasks[0].sample_batch))
        self._out_dim = _last_dim(out_sig)
        for task in tasks:
            lw, ls = _init_end(task.loss_layer, out_sig, task.sample_batch, model.n_in)
            self._train_fns.append(ts.make_train_step(
                model, task.loss_layer, lw, ls, task.optimizer, self._base_key))
            slots, opt_params = task.optimizer.tree_init(self._weights)
            self._slots.append(self._placement.replicate(slots))
            self._opt_params.append(opt_params)
        self._eval_fns = []
        for task in eval_tasks:
            ends = [_init_end(m, out_sig, task.sample_batch, model.n_in) for m in task.metrics]
            self._eval_fns.append(ts.make_eval_step(
                self._eval_model, task.metrics, [e[0] for e in ends], [e[1] for e in ends],
                base.init_rng_split(self._base_key, 2)[1]))
        self._callbacks = [cb(self) if isinstance(cb, type) else cb for cb in (callbacks or [])]
        self._pending: list[tuple] = []  # (step, task, loss, stats, lr) still on device
        self._fetched: list[tuple] = []  # the same, on the host, not yet logged
        self._last_log_time = time.time()
        self._last_log_step = 0
        self._weights_printed = False
        self._last_good_checkpoint: str | None = None
        if self._output_dir is not None:
            self.load_checkpoint()
            self._write_config()

    # -- properties -----------------------------------------------------------

    step = property(lambda self: self._step)
    history = property(lambda self: self._history)
    model = property(lambda self: self._model)
    eval_model = property(lambda self: self._eval_model)
    tasks = property(lambda self: self._tasks)
    eval_tasks = property(lambda self: self._eval_tasks)
    output_dir = property(lambda self: self._output_dir)
    n_devices = property(lambda self: self._placement.n_devices)
    is_chief = property(lambda self: jax.process_index() == 0)

    def close(self) -> None:
        """Flushes the logs and releases ``output_dir`` for another Loop (idempotent).

        A Loop also releases it when it is garbage-collected and when its
        process ends, however it ends. A closed Loop cannot train or checkpoint.
        """
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.close()
        if self._run_lock is not None:
            self._run_lock.release(self._run_token)

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def new_rng(self) -> Any:
        """A fresh key derived from the seed and the current step."""
        return fastmath_random.hash_fold_in(base.init_rng_split(self._base_key, 3)[2], self._step)

    # -- setup helpers ------------------------------------------------------------

    def _stream_for(self, iterator: Any) -> _Stream:
        key = id(iterator)
        if key not in self._streams:
            self._streams[key] = _Stream(iterator, prefetch=self._prefetch)
        return self._streams[key]

    def _model_sig(self, batch: Sequence[Any]) -> Any:
        n = self._model.n_in
        sig = shapes.signature(tuple(batch[:n]))
        return sig[0] if n == 1 else sig

    def _init_model(self, model: base.Layer, sample_batch: Sequence[Any]) -> None:
        if len(sample_batch) < model.n_in:
            raise ValueError(
                f"Loop: the model takes {model.n_in} inputs but a batch has only "
                f"{len(sample_batch)} items; batches are (inputs..., targets, weights)."
            )
        if not model.initialized:
            model.init(self._model_sig(sample_batch), rng=base.init_rng_split(self._base_key, 1)[0])

    # -- running ------------------------------------------------------------------

    def run(self, n_steps: int = 1) -> None:
        """Runs ``n_steps`` more training steps (evals and checkpoints as configured)."""
        if not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"Loop.run: n_steps must be a non-negative int; got {n_steps!r}.")
        if self._run_lock is not None:
            self._run_lock.check_owner(self._run_token, "run")
        self._open_bar(n_steps)
        try:
            for _ in range(n_steps):
                self._run_one_step()
        finally:
            self._close_bar()
            self._sync_model_weights()
            self._writer.flush()

    def _run_one_step(self) -> None:
        step = self._step + 1
        for cb in self._callbacks:
            if cb.call_at(step):
                cb.on_step_begin(step)
        index = self._which_task(step)
        task = self._tasks[index]
        batch = self._next_train_batch(index, step)
        lr = task.learning_rate(step)
        opt_params = dict(self._opt_params[index])
        opt_params["learning_rate"] = np.float32(lr)
        self._weights, self._state, self._slots[index], loss, stats = self._train_fns[index](
            self._weights, self._state, self._slots[index], opt_params, batch, step)
        self._step = step
        self._pending.append((step, index, loss, stats, lr))
        if self._bar is not None:
            self._bar.update(1)
        if self._eval_at(step):
            self._log_training(step)
            self.run_evals()
        if self._checkpoint_at(step):
            self.save_checkpoint("model")
            self._save_metric_checkpoints()
        if self._permanent_at(step):
            self.save_checkpoint(f"model_{step}")
        for cb in self._callbacks:
            if cb.call_at(step):
                cb.on_step_end(step)

    def _next_train_batch(self, index: int, step: int) -> tuple:
        stream = self._task_streams[index]
        try:
            batch = stream.next()
        except StopIteration:
            saved = ""
            if self._output_dir is not None and self._step > 0:
                self.save_checkpoint("model")
                saved = f" A checkpoint of step {self._step} was saved in {self._output_dir}."
            raise ValueError(
                f"Training data of task {index} ran out at step {step} after "
                f"{stream.consumed} batches.{saved} Make labeled_data an endless generator "
                f"(e.g. `while True: yield ...`) or run fewer steps."
            ) from None
        where = f"Loop step {step}, task {index}"
        self._check_batch(batch, self._ref_sigs[index], where)
        return self._placement.put_batch(batch, where)

    def _check_batch(self, batch: tuple, ref: Any, where: str) -> None:
        if len(batch) != len(ref):
            raise ValueError(
                f"{where}: a batch has {len(batch)} items but the first batch had {len(ref)} "
                f"(inputs..., targets, weights). Yield batches of one structure."
            )
        for i, (x, r) in enumerate(zip(batch, ref)):
            x_shape = tuple(np.shape(x))
            x_dtype = np.asarray(x).dtype if not hasattr(x, "dtype") else np.dtype(x.dtype)
            if len(x_shape) != len(r.shape):
                raise ValueError(
                    f"{where}: batch item {i} has shape {x_shape} (rank {len(x_shape)}) but "
                    f"the model was set up for rank {len(r.shape)} (first batch: {r.shape}). "
                    f"Yield arrays of the same rank in every batch."
                )
            if x_dtype.kind != np.dtype(r.dtype).kind and not (
                    x_dtype.kind in "iu" and np.dtype(r.dtype).kind in "iu"):
                raise TypeError(
                    f"{where}: batch item {i} has dtype {x_dtype} but the first batch had "
                    f"{np.dtype(r.dtype)}. Cast it (e.g. .astype(np.int32))."
                )
        leading = {tuple(np.shape(x))[:1] for x in batch if np.ndim(x) > 0}
        if len(leading) > 1:
            raise ValueError(
                f"{where}: the items of a batch must share their first (batch) dimension; got "
                f"shapes {[tuple(np.shape(x)) for x in batch]}. Yield (inputs, targets, "
                f"weights) for the same examples."
            )
        n_in = self._model.n_in
        if len(batch) > n_in + 1 and np.shape(batch[n_in + 1]) != np.shape(batch[n_in]):
            raise ValueError(
                f"{where}: loss weights have shape {tuple(np.shape(batch[n_in + 1]))} but the "
                f"targets have shape {tuple(np.shape(batch[n_in]))}; give one weight per target."
            )
        if self._vocab is not None:
            ids = np.asarray(batch[0])
            if ids.dtype.kind in "iu" and ids.size and (ids.min() < 0 or ids.max() >= self._vocab):
                raise ValueError(
                    f"{where}: input token ids must be in [0, {self._vocab}) (the model's "
                    f"vocab_size) but range from {ids.min()} to {ids.max()}. Build the model "
                    f"with a larger vocab_size or fix the data."
                )
        if len(batch) > n_in and self._out_dim is not None:
            targets = np.asarray(batch[n_in])
            if targets.dtype.kind in "iu" and targets.size and targets.max() >= self._out_dim:
                raise ValueError(
                    f"{where}: target ids must be below {self._out_dim} (the model's output "
                    f"size) but the largest is {targets.max()}. Fix the data or the model size."
                )

    def run_evals(self, summary_writers: Any = None) -> None:
        """Runs every eval task on ``n_eval_batches`` batches and logs the averages."""
        del summary_writers
        if not self._eval_tasks:
            return
        width = self._name_width()
        for i, (task, fn) in enumerate(zip(self._eval_tasks, self._eval_fns)):
            totals = None
            for j in range(task.n_eval_batches):
                stream = self._eval_streams[i]
                try:
                    batch = stream.next()
                except StopIteration:
                    raise ValueError(
                        f"Eval data of eval task {i} ran out after {stream.consumed} batches; "
                        f"it must yield at least n_eval_batches={task.n_eval_batches} per eval."
                    ) from None
                where = f"Loop eval at step {self._step}, eval task {i}"
                self._check_batch(batch, shapes.signature(task.sample_batch), where)
                values = fn(self._weights, self._state, self._placement.put_batch(batch, where),
                            self._step * 1000 + j)
                totals = values if totals is None else totals + values
            means = np.asarray(totals) / task.n_eval_batches
            prefix = "eval" if not task.export_prefix else task.export_prefix
            for name, value in zip(task.metric_names, means):
                self._history.append("eval", f"metrics/{name}", self._step, float(value))
                self._writer.scalar("eval", f"metrics/{name}", self._step, float(value))
                self._print(format_metric(self._step, prefix, name, float(value), width))

    def _name_width(self) -> int:
        names = [t.loss_name for t in self._tasks]
        names += [n for t in self._eval_tasks for n in t.metric_names]
        return max(len(n) for n in names)

    def _fetch_pending(self) -> None:
        """Brings the losses since the last fetch to the host; stops on NaN/inf."""
        if not self._pending:
            return
        # device_get of the list: no compilation per list length (jnp.stack would).
        losses = np.asarray(jax.device_get([p[2] for p in self._pending]), np.float32)
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            step = self._pending[bad[0]][0]
            kept = (f" The last good checkpoint is {self._last_good_checkpoint}."
                    if self._last_good_checkpoint else " No checkpoint was written yet.")
            self._pending = []
            raise FloatingPointError(
                f"Loss became {losses[bad[0]]} at step {step}; training stopped and no "
                f"checkpoint was written from these weights.{kept} Lower the learning rate, "
                f"clip gradients (clip_grad_norm=...), or check that step's data."
            )
        stats = jax.device_get([p[3] for p in self._pending])
        self._fetched.extend(
            (p[0], p[1], float(v), st, p[4]) for p, v, st in zip(self._pending, losses, stats))
        self._pending = []

    def _log_training(self, step: int) -> None:
        self._fetch_pending()
        records, self._fetched = self._fetched, []
        elapsed = time.time() - self._last_log_time
        n_steps = step - self._last_log_step
        self._print()
        if not self._weights_printed:
            n_weights = sum(int(np.prod(w.shape)) for w in
                            base.flatten_weights_and_state(self._weights, ())[0])
            self._print(format_step(step, f"Total number of trainable weights: {n_weights}"))
            self._weights_printed = True
        self._print(format_step(step, f"Ran {n_steps} train steps in {elapsed:0.2f} secs"))
        width = self._name_width()
        for index, task in enumerate(self._tasks):
            mine = [r for r in records if r[1] == index]
            if not mine:
                continue
            loss = float(np.mean([r[2] for r in mine]))
            self._record("train", f"metrics/{task.loss_name}", step, loss)
            self._record("train", "training/learning_rate", step, mine[-1][4])
            self._record("train", "training/steps per second", step,
                         n_steps / max(elapsed, 1e-9))
            for key in ("gradients_l2", "weights_l2"):
                self._record("train", f"training/{key}", step,
                             float(np.mean([r[3][key] for r in mine])))
            self._record("train", "training/loss", step, loss)
            self._print(format_metric(step, "train", task.loss_name, loss, width))
        self._last_log_time = time.time()
        self._last_log_step = step

    def _record(self, mode: str, tag: str, step: int, value: float) -> None:
        self._history.append(mode, tag, step, value)
        self._writer.scalar(mode, tag, step, value)

    def _print(self, line: str = "") -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._stdout)
        else:
            self._writer.print(line)

    def _open_bar(self, n_steps: int) -> None:
        show = self._progress_bar
        if show is None:
            show = hasattr(self._stdout, "isatty") and self._stdout.isatty()
        if show and n_steps > 1:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=n_steps, unit="step", file=sys.stderr, leave=False)

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _sync_model_weights(self) -> None:
        self._model.weights = self._weights
        self._model.state = self._state
        if self._eval_model is not self._model:
            self._eval_model.weights = self._weights

    def update_weights_and_state(self, weights: Any = None, state: Any = None) -> None:
        if weights is not None:
            self._weights = self._placement.replicate(weights)
        if state is not None:
            self._state = self._placement.replicate(state)
        self._sync_model_weights()

    # -- checkpoints --------------------------------------------------------------

    def save_checkpoint(self, basename: str = "model") -> None:
        """Writes the native checkpoint (and Trax's layout) for the current step."""
        if self._output_dir is None or not self.is_chief:
            return
        self._run_lock.check_owner(self._run_token, "write a checkpoint")
        self._fetch_pending()  # Never checkpoint weights that produced a NaN loss.
        weights = jax.device_get(self._weights)
        state = jax.device_get(self._state)
        slots = [jax.device_get(s) for s in self._slots]
        self._check_finite(weights, state, slots)
        arrays: dict[str, Any] = {}
        for t, task_slots in enumerate(slots):
            for j, leaf in enumerate(jax.tree_util.tree_leaves(task_slots)):
                arrays[f"slots{t}/{j:05d}"] = leaf
        extra = {
            "step": self._step,
            "history": self._history.to_dict(),
            "consumed": {str(i): self._task_streams[i].consumed for i in range(len(self._tasks))},
            "eval_consumed": {str(i): s.consumed for i, s in enumerate(self._eval_streams)},
            "data_state": {str(i): s.state() for i, s in enumerate(self._task_streams)
                           if s.resumable},
            "eval_data_state": {str(i): s.state() for i, s in enumerate(self._eval_streams)
                                if s.resumable},
            "n_tasks": len(self._tasks),
            "seed": self._seed,
        }
        sig = self._model_sig(self._tasks[0].sample_batch)
        if basename == "model":
            path = os.path.join(self._output_dir, f"checkpoint_{self._step:08d}.safetensors")
        else:
            path = os.path.join(self._output_dir, f"{basename}.safetensors")
        checkpoints.save_native(path, weights, state, input_signature=sig,
                                model_config=models.config_of(self._model),
                                extra=extra, arrays=arrays)
        if self._write_trax:
            self._write_trax_layout(basename, weights, state, sig)
        if basename == "model":
            self._last_good_checkpoint = path
            self._prune_checkpoints()

    def _check_finite(self, weights: Any, state: Any, slots: list) -> None:
        """Refuses to checkpoint a NaN or inf anywhere: the last good checkpoint stays good."""
        trees = [("weights", weights), ("state", state)]
        trees += [(f"optimizer slots of task {t}", s) for t, s in enumerate(slots)]
        for what, tree in trees:
            if what == "weights":  # the order checkpoints.leaf_names names
                leaves = base.flatten_weights_and_state(tree, ())[0]
            elif what == "state":
                leaves = base.flatten_weights_and_state((), tree)[1]
            else:
                leaves = jax.tree_util.tree_leaves(tree)
            bad = [i for i, leaf in enumerate(leaves)
                   if np.asarray(leaf).dtype.kind in "fc" and not np.isfinite(leaf).all()]
            if not bad:
                continue
            arr = np.asarray(leaves[bad[0]])
            value = arr[~np.isfinite(arr)].flat[0]
            if what in ("weights", "state"):  # named by layer: Serial[0] > Dense_4, weights[0]
                where = checkpoints.leaf_names(self._model, tree, what)[bad[0]]
            else:
                paths = [jax.tree_util.keystr(p) for p, _ in
                         jax.tree_util.tree_flatten_with_path(tree)[0]]
                where = f"{what}{paths[bad[0]]}"
            kept = (f"The last good checkpoint is {self._last_good_checkpoint}."
                    if self._last_good_checkpoint else "No checkpoint was written yet.")
            raise FloatingPointError(
                f"Loop: at step {self._step}, {where} (shape {arr.shape}) holds {value}"
                f"{f' ({len(bad)} arrays in all)' if len(bad) > 1 else ''}; training diverged "
                f"and no checkpoint was written from it. {kept} Lower the learning rate, clip "
                f"gradients (clip_grad_norm=...), or check the data."
            )

    def _write_trax_layout(self, basename: str, weights: Any, state: Any, sig: Any) -> None:
        flat_w, flat_s = base.flatten_weights_and_state(weights, state)
        slots = None
        try:
            slots = [flat_slots(self._slots[0])]
        except Exception:  # An optimizer without a Trax slot order: weights only.
            slots = None
        trax_pickle.write_trax_loop_checkpoint(
            os.path.join(self._output_dir, basename), flat_w, flat_state=flat_s,
            step=self._step, history=self._history.to_dict(),
            input_signature=sig if isinstance(sig, tuple) else (sig,),
            flat_slots=slots[0] if slots else None, inline=True)

    def _prune_checkpoints(self) -> None:
        for _, path in _native_checkpoints(self._output_dir)[:-self._keep]:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def _save_metric_checkpoints(self) -> None:
        for metric, best in ((self._low_metric, min), (self._high_metric, max)):
            if metric is None:
                continue
            tag = f"metrics/{metric}"
            if tag not in self._history.metrics_for_mode("eval"):
                continue
            values = [v for _, v in self._history.get("eval", tag)]
            if values[-1] == best(values):
                prefix = "lowest" if best is min else "highest"
                self.save_checkpoint(f"{prefix}_{metric}")

    def load_checkpoint(self, directory: str | None = None, filename: str | None = None) -> bool:
        """Restores the checkpoint in ``directory`` (default: output_dir); returns if one was.

        With Trax's layout enabled (the default), ``model.pkl.gz`` marks the
        resume point, as in Trax: deleting it starts a fresh run. Its step's
        native checkpoint is loaded when present (exact resume: optimizer
        state, history, data position); otherwise the Trax file itself
        (weights, step, history, and Adam/Momentum/RMSProp slots when present).
        With ``write_trax_checkpoint=False`` the newest native checkpoint is used.

        A file that cannot be read (truncated, corrupt) does not block the
        resume: the Loop says so and falls back to the next candidate, then to
        the newest intact native checkpoint. When none can be read it raises
        rather than start afresh over them.
        """
        directory = directory or self._output_dir
        if directory is None:
            return False
        natives = dict(_native_checkpoints(directory))
        newest_first = [natives[s] for s in sorted(natives, reverse=True)]
        if filename is not None:
            candidates = [os.path.join(directory, filename)]
        elif self._write_trax:
            trax_path = os.path.join(directory, "model.pkl.gz")
            if not os.path.exists(trax_path):
                return False
            try:
                step = int(trax_pickle.read_trax_checkpoint(trax_path).step or -1)
                candidates = [natives[step], trax_path] if step in natives else [trax_path]
            except _UNREADABLE as err:
                self._print(f"Note: {trax_path} cannot be read ({_first_line(err)}); resuming "
                            f"from the newest intact native checkpoint instead.")
                candidates = newest_first
        else:
            candidates = newest_first
        if not candidates:
            return False
        failures = []
        for path in candidates:
            try:
                loaded = (trax_pickle.read_trax_checkpoint(path) if path.endswith(".pkl.gz")
                          else checkpoints.read_native(checkpoints.read_bytes(path), path))
            except _UNREADABLE as err:
                failures.append(f"{path} ({_first_line(err)})")
                self._print(f"Note: skipping {path}, which cannot be read ({_first_line(err)}).")
                continue
            if path.endswith(".pkl.gz"):
                self._load_trax_checkpoint(path, loaded)
            else:
                self._load_native_checkpoint(path, loaded)
            if failures:
                self._print(f"Note: resumed from {path} (step {self._step}).")
            self._sync_model_weights()
            return True
        raise ValueError(
            f"Loop: no checkpoint in {directory} can be read: {'; '.join(failures)}. Move the "
            f"damaged files away to resume from an older one, or use a new output_dir."
        )

    def _load_native_checkpoint(self, path: str, ckpt: dict) -> None:
        extra = ckpt["meta"].get("extra", {})
        # Same shapes are not enough: a run resumes only into the model it saved.
        checkpoints.check_model_config(self._model, ckpt["meta"].get("model"), path)
        checkpoints.assign_flat_weights(self._model, ckpt["flat_weights"], source=path)
        if ckpt["flat_state"] is not None:
            checkpoints.assign_flat_state(self._model, ckpt["flat_state"], source=path)
        self._weights = self._placement.replicate(self._model.weights)
        self._state = self._placement.replicate(self._model.state)
        for t in range(len(self._tasks)):
            leaves, treedef = jax.tree_util.tree_flatten(self._slots[t])
            saved = [ckpt["arrays"].get(f"slots{t}/{j:05d}") for j in range(len(leaves))]
            if any(s is None for s in saved) or any(
                    np.shape(s) != np.shape(x) for s, x in zip(saved, leaves)):
                raise ValueError(
                    f"{path}: the optimizer state of task {t} does not match this Loop's "
                    f"optimizer. Resume with the same tasks and optimizers, or use a new output_dir."
                )
            restored = [jnp.asarray(s, dtype=x.dtype) for s, x in zip(saved, leaves)]
            self._slots[t] = self._placement.replicate(jax.tree_util.tree_unflatten(treedef, restored))
        self._step = int(extra.get("step", 0))
        self._history = History.from_dict(extra.get("history", {}))
        self._last_log_step = self._step
        self._last_good_checkpoint = path
        states = extra.get("data_state", {})
        for i, n in extra.get("consumed", {}).items():
            stream = self._task_streams[int(i)]
            if stream.resumable and i in states:
                stream.restore(states[i], n)
            elif stream.consumed < n:
                stream.skip(n - stream.consumed, f"the data of task {i}")
        states = extra.get("eval_data_state", {})
        for i, n in extra.get("eval_consumed", {}).items():
            if int(i) < len(self._eval_streams):
                stream = self._eval_streams[int(i)]
                if stream.resumable and i in states:
                    stream.restore(states[i], n)
                elif stream.consumed < n:
                    stream.skip(n - stream.consumed, f"the data of eval task {i}")

    def _load_trax_checkpoint(self, path: str, ckpt: Any) -> None:
        checkpoints.assign_flat_weights(self._model, ckpt.flat_weights, source=path)
        self._weights = self._placement.replicate(self._model.weights)
        self._step = int(ckpt.step or 0)
        if ckpt.history:
            self._history = History.from_dict({"_values": ckpt.history})
        if ckpt.slots:
            try:
                self._slots[0] = self._placement.replicate(
                    unflat_slots(ckpt.slots[0], self._slots[0], count=self._step))
            except Exception as err:  # Different optimizer: fresh slots, but say so.
                self._print(f"Note: optimizer slots in {path} not used ({err}).")
        self._last_log_step = self._step

    def _write_config(self) -> None:
        config = {
            "retrax_version": _version(),
            "jax_version": jax.__version__,
            "devices": [str(d) for d in jax.devices()[: self.n_devices]],
            "random_seed": self._seed,
            "model": models.config_of(self._model) or {"name": self._model.name},
            "input_signature": str(self._model_sig(self._tasks[0].sample_batch)),
            "tasks": [{
                "loss": t.loss_name,
                "optimizer": type(t.optimizer).__name__,
                "opt_params": {k: float(v) for k, v in t.optimizer.opt_params.items()},
                "lr_schedule": repr(t.lr_schedule),
                "n_steps_per_checkpoint": t.n_steps_per_checkpoint,
                "n_steps_per_permanent_checkpoint": t.n_steps_per_permanent_checkpoint,
            } for t in self._tasks],
            "eval_tasks": [{"metrics": t.metric_names, "n_eval_batches": t.n_eval_batches}
                           for t in self._eval_tasks],
            "keep_checkpoints": self._keep,
            "write_trax_checkpoint": self._write_trax,
            "run": self._run_config,
        }
        checkpoints.write_bytes_atomic(os.path.join(self._output_dir, "config.json"),
                                       json.dumps(config, indent=2).encode("utf-8"))


# What reading a damaged checkpoint file raises (a CheckpointError is a ValueError;
# OSError covers gzip's BadGzipFile and a file removed under us).
_UNREADABLE = (ValueError, OSError, EOFError, KeyError, pickle.UnpicklingError)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _native_checkpoints(directory: str) -> list[tuple[int, str]]:
    """``(step, path)`` of the ``checkpoint_<step>.safetensors`` files, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "checkpoint_*.safetensors")):
        m = re.search(r"checkpoint_(\d+)\.safetensors$", path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def _init_end(layer: base.Layer, out_sig: Any, sample_batch: Sequence[Any], n_in: int):
    """Initializes a loss/metric layer on the model's outputs plus the batch rest."""
    stack = (list(out_sig) if isinstance(out_sig, tuple) else [out_sig])
    stack += [shapes.signature(x) for x in sample_batch[n_in:]]
    if layer.n_in > len(stack):
        raise ValueError(
            f"{layer.name_with_arity} takes {layer.n_in} inputs but the model's outputs and the "
            f"rest of a batch give {len(stack)}. Batches must be (inputs..., targets, weights)."
        )
    sig = base.pack(stack[:layer.n_in])
    return layer.init(sig)


def _last_dim(sig: Any) -> int | None:
    first = sig[0] if isinstance(sig, tuple) else sig
    shape = getattr(first, "shape", None)
    return int(shape[-1]) if shape else None


def _version() -> str:
    from retrax.version import __version__

    return __version__
