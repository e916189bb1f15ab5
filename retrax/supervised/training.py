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
that would have received the batch. During a run the iterator is one batch
ahead of the Loop (not after a run's last step); the saved position is the one
after the last batch the Loop used, and ``data.CountAndSkip`` counters count
only the batches training took.

Randomness: every random key of a run comes from ``random_seed`` (default 0),
folded with the step number, so the same seed gives the same run.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.layers import base
from retrax.supervised import (
    distributed,
    loop_arguments,
    loop_checkpoints,
    loop_io,
    loop_settings,
    run_dir,
    task_steps,
)
from retrax.supervised import train_step as ts
from retrax.supervised.batch_checks import BatchChecks
from retrax.supervised.history import History
from retrax.supervised.loop_io import TrainingLog
from retrax.supervised.loop_models import LoopModels
from retrax.supervised.streams import shared_streams
from retrax.supervised.tasks import EvalTask, TrainTask

__all__ = ["TrainTask", "EvalTask", "Loop"]


class Loop:
    """Runs train tasks, evaluates, logs and checkpoints (Trax's signature).

    Keyword-only additions: ``keep_checkpoints`` (native checkpoints kept, default
    3), ``write_trax_checkpoint`` (also write Trax's ``model.pkl.gz`` layout,
    default True), ``progress_bar`` (None: only when stdout is a terminal),
    ``stdout`` (a file for the log lines), ``prefetch`` (draw each next batch in a
    background thread, default True; see the module docstring), ``run_config`` (a
    dict of JSON values saved under ``"run"`` in ``config.json``, the run's one
    config file), ``sharding`` and ``compute_dtype`` (below).

    ``sharding``: how weights and optimizer slots sit on the devices.
    ``'replicated'`` (default): on every device, only the batch is split.
    ``'fsdp'``: fully sharded data parallelism; each weight of at least 1024
    elements, and its optimizer slots, is split along one axis that the device
    count divides, over the same ``'data'`` mesh axis as the batch, so each
    device holds about ``1/n_devices`` of them (see
    :mod:`retrax.supervised.sharding`). The losses are the replicated run's up
    to float summation order; checkpoints hold whole arrays either way, so a
    sharded run's checkpoint resumes unsharded and the other way round.
    ``'tensor:K'``: tensor parallelism on a ``'data'`` x ``'model'`` mesh with
    ``K`` devices on ``'model'`` (``K`` divides the device count): attention,
    feed-forward, embedding and output weights split Megatron-style, found
    from the model's layers (:mod:`retrax.supervised.tensor_parallel`).

    ``compute_dtype``: ``'float32'`` (default) or ``'bfloat16'``: float32 master
    weights and optimizer slots, the model's forward and backward in bfloat16,
    loss and metrics in float32 (see :mod:`retrax.supervised.mixed_precision`).
    Evals use it too; ``model`` itself keeps float32 weights.

    ``loss_chunk_size > 0``: the final ``Dense`` and the loss run over chunks of that many
    positions (:mod:`retrax.supervised.loss_chunking`). ``use_memory_efficient_trainer``
    changes nothing: ``ReversibleSerial`` already recomputes activations in every step.

    Both are saved in ``config.json``. Left at None, a run resuming from a
    checkpoint in ``output_dir`` takes the value its ``config.json`` recorded
    (a fresh run: the default); a value passed explicitly wins, with a note
    when it differs from the recorded one. In a multi-process run every
    process takes process 0's values.

    Extension points for subclasses and callbacks (public, documented): ``log_step``,
    ``log_summary``, ``open_summary_writer``, ``stop`` (early stopping), ``run_evals``,
    ``save_checkpoint``, ``checkpoint_at``, ``n_devices``, ``history``, ``step``; callbacks see
    :mod:`retrax.supervised.callbacks`.

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
                 overwrite: bool = False, run_config: dict | None = None,
                 sharding: str | None = None, compute_dtype: str | None = None):
        tasks, eval_tasks, self._run_config = loop_arguments.checked_arguments(
            model, tasks, eval_tasks, keep_checkpoints, run_config, (adasum, loss_chunk_size))
        self._loss_chunk_size = loss_chunk_size
        self._model = model
        self._tasks = tasks
        self._eval_tasks = eval_tasks
        self._output_dir = None if output_dir is None else os.path.expanduser(os.fspath(output_dir))
        self._keep = keep_checkpoints
        self._write_trax = write_trax_checkpoint
        self._seed = 0 if random_seed is None else int(random_seed)
        self._base_key = fastmath_random.get_prng(self._seed)
        n_tasks = len(tasks)
        self._which_task = which_task or (lambda n: n % n_tasks)
        n_ckpt = tasks[0].n_steps_per_checkpoint
        self._checkpoint_at = checkpoint_at or loop_arguments.every(n_ckpt)
        # Without eval tasks the train metrics are still logged at these steps (as Trax).
        self._eval_at = eval_at or loop_arguments.every(n_ckpt)
        self._permanent_at = permanent_checkpoint_at or loop_arguments.every(
            tasks[0].n_steps_per_permanent_checkpoint)
        self._low_metric = checkpoint_low_metric
        self._high_metric = checkpoint_high_metric
        # None: the resumed run's recorded value, else the default (see the class docstring).
        self._settings, self._settings_note = loop_settings.run_settings(
            self._output_dir, sharding, compute_dtype)
        self._placement = ts.Placement(n_devices, sharding=self._settings["sharding"], model=model)
        self._step = 0
        self._history = History()
        self._prefetch = bool(prefetch)
        # Claim the directory before anything is written (see retrax.supervised.run_dir).
        self._run_token = object()
        self._run_lock = None
        if self._output_dir is not None and self.is_chief:  # only process 0 writes
            self._run_lock = run_dir.claim(self._output_dir, self._run_token, overwrite=overwrite)
            weakref.finalize(self, self._run_lock.release, self._run_token)
        try:
            self._setup(model, tasks, eval_model, eval_tasks, callbacks, stdout, progress_bar)
        except BaseException:
            self.close()
            raise

    def _setup(self, model: base.Layer, tasks: list, eval_model: base.Layer | None,
               eval_tasks: list, callbacks: Sequence[Any] | None, stdout: Any,
               progress_bar: bool | None) -> None:
        self._log = TrainingLog(self._output_dir if self.is_chief else None, stdout, progress_bar,
                                loss_names=[t.loss_name for t in tasks],
                                metric_names=[n for t in eval_tasks for n in t.metric_names],
                                open_summary_writer=self.open_summary_writer)
        if self._settings_note:
            self._log.print(self._settings_note)
        # Streams: tasks sharing one iterator share one counter.
        self._task_streams, self._eval_streams = shared_streams(
            [[t.labeled_data for t in tasks], [t.labeled_data for t in eval_tasks]],
            prefetch=self._prefetch)

        sig = task_steps.model_signature(model, tasks[0].sample_batch)
        if not model.initialized:
            model.init(sig, rng=base.init_rng_split(self._base_key, 1)[0])
        self._models = LoopModels(model, eval_model, sig)
        self._ref_sigs = [shapes.signature(t.sample_batch) for t in tasks]
        self._weights = self._placement.place_weights(model.weights)
        if self._placement.note:  # 'tensor:K': what it split (or that it could not)
            self._log.print(self._placement.note)
        self._state = self._placement.replicate(model.state)
        steps = task_steps.build_task_steps(model, self._models.eval_layer, tasks, eval_tasks,
                                            self._weights, self._placement, self._base_key,
                                            compute_dtype=self._settings["compute_dtype"],
                                            loss_chunk_size=self._loss_chunk_size)
        self._train_fns, self._slots, self._opt_params = steps.train_fns, steps.slots, steps.opt_params
        self._eval_fns = steps.eval_fns
        self._batch_checks = BatchChecks(model, model.output_signature(sig))
        # A class or factory (functools.partial, as Trax's docs use) gets the Loop; an
        # instance (anything with call_at) is used as is.
        self._callbacks = [cb(self) if isinstance(cb, type) or not hasattr(cb, "call_at") else cb
                           for cb in (callbacks or [])]
        self._log.restart_clock()
        self._checkpoints = loop_checkpoints.LoopCheckpoints(
            self._output_dir, model, self._placement,
            input_signature=sig, seed=self._seed,
            keep=self._keep, write_trax=self._write_trax, print_fn=self._log.print)
        if self._output_dir is not None:
            distributed.check_same_checkpoints(self._output_dir)  # every process reads them
            self.load_checkpoint()
        if self._output_dir is not None and self.is_chief:
            self._checkpoints.write_config(tasks=tasks, eval_tasks=eval_tasks,
                                           n_devices=self.n_devices, run_config=self._run_config,
                                           settings=dict(self._settings))

    # -- properties -----------------------------------------------------------

    step = property(lambda self: self._step)
    history = property(lambda self: self._history)
    model = property(lambda self: self._model)
    tasks = property(lambda self: self._tasks)
    eval_tasks = property(lambda self: self._eval_tasks)
    output_dir = property(lambda self: self._output_dir)
    n_devices = property(lambda self: self._placement.n_devices)
    sharding = property(lambda self: self._settings["sharding"])
    compute_dtype = property(lambda self: self._settings["compute_dtype"])
    is_chief = property(lambda self: jax.process_index() == 0)

    def host_weights(self) -> Any:
        """The current weights as whole NumPy arrays, gathered if sharded (every process must call)."""
        return self._placement.to_host(self._weights)

    def checkpoint_at(self, step: int) -> bool:
        """Whether a checkpoint is written after ``step`` (the ``checkpoint_at`` setting).

        Its default: step 1 and every ``n_steps_per_checkpoint`` steps of the
        first task. Callbacks use it to act at the Loop's checkpoint steps.
        """
        return bool(self._checkpoint_at(step))

    def close(self) -> None:
        """Flushes the logs and releases ``output_dir`` for another Loop (idempotent).

        A Loop also releases it when it is garbage-collected and when its
        process ends, however it ends. A closed Loop cannot train or checkpoint.
        """
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()
        if self._run_lock is not None:
            self._run_lock.release(self._run_token)

    # -- extension points for subclasses and callbacks -------------------------------

    def log_step(self, message: str, stdout: bool = True) -> None:
        """Logs ``Step <n>: message`` in the Loop's output (Trax's ``_log_step``)."""
        if stdout:
            self._log.print(loop_io.format_step(self._step, message))

    def log_summary(self, values: dict[str, Any], summary_writer: Any = None,
                    value_prefix: str = "metrics/", log_prefix: str = "eval",
                    stdout: bool = True) -> None:
        """Logs scalar ``values`` at the current step into the output, the history,
        metrics.jsonl and TensorBoard (Trax's signature; ``summary_writer`` optional)."""
        self._log.log_summary(self._step, values, self._history, summary_writer, value_prefix,
                              log_prefix, stdout)

    def open_summary_writer(self, directory: str) -> Any:
        """Opens the summary writer of one ``run`` for ``directory`` (``output_dir/train``,
        ``output_dir/eval``); it is closed when the run ends, so each run writes new
        event files, as in Trax. The default writes TensorBoard events with
        tensorboardX (None without it: no events). Override it to write elsewhere
        or return None; a writer needs ``scalar(tag, value, step)``,
        ``text(tag, text, step)``, ``flush()`` and ``close()``."""
        return loop_io.open_tensorboard_writer(directory)

    def stop(self) -> None:
        """Ends the current ``run`` after this step (its evals and checkpoint still
        happen): early stopping from a callback or an overridden ``run_evals``."""
        self._stop_requested = True

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def new_rng(self) -> Any:
        """A fresh key derived from the seed and the current step."""
        return fastmath_random.hash_fold_in(base.init_rng_split(self._base_key, 3)[2], self._step)

    # -- running ------------------------------------------------------------------

    def run(self, n_steps: int = 1) -> None:
        """Runs ``n_steps`` more training steps (evals and checkpoints as configured)."""
        if not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f"Loop.run: n_steps must be a non-negative int; got {n_steps!r}.")
        if self._run_lock is not None:
            self._run_lock.check_owner(self._run_token, "run")
        self._log.open_bar(n_steps)
        self._stop_requested = False
        try:
            for i in range(n_steps):
                # The last step draws no batch ahead: between runs the data is where training left it.
                self._run_one_step(draw_ahead=i < n_steps - 1)
                if self._stop_requested:
                    self.log_step("Stopped early (Loop.stop() was called).")
                    break
        finally:
            self._log.close_bar()
            # The weights are the model's own tree, updated by the compiled steps.
            self._sync_model_weights(checked=False)
            self._log.end_run()

    def _run_one_step(self, draw_ahead: bool = True) -> None:
        step = self._step + 1
        for cb in self._callbacks:
            if cb.call_at(step):
                cb.on_step_begin(step)
        index = self._which_task(step)
        task = self._tasks[index]
        batch = self._next_train_batch(index, step, draw_ahead)
        lr = task.learning_rate(step)
        opt_params = dict(self._opt_params[index], learning_rate=np.float32(lr))
        self._weights, self._state, self._slots[index], loss, stats = self._train_fns[index](
            self._weights, self._state, self._slots[index], opt_params, batch, step)
        self._step = step
        self._log.add_step(step, index, loss, stats, lr)
        if self._eval_at(step):
            self._log.log_training(step, self._weights, self._history, self._checkpoints.last_good)
            self.run_evals()
        if self._checkpoint_at(step):
            self.save_checkpoint("model")
            for name in loop_checkpoints.metric_checkpoint_names(
                    self._history, self._low_metric, self._high_metric):
                self.save_checkpoint(name)
        if self._permanent_at(step):
            self.save_checkpoint(f"model_{step}")
        for cb in self._callbacks:
            if cb.call_at(step):
                cb.on_step_end(step)

    def _next_train_batch(self, index: int, step: int, draw_ahead: bool = True) -> tuple:
        stream = self._task_streams[index]
        try:
            batch = stream.next(ahead=draw_ahead)
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
        self._batch_checks.check(batch, self._ref_sigs[index], where)
        return self._placement.put_batch(batch, where)

    def run_evals(self, summary_writers: Any = None) -> None:
        """Runs every eval task on ``n_eval_batches`` batches and logs the averages."""
        del summary_writers
        if not self._eval_tasks:
            return
        for i, (task, fn) in enumerate(zip(self._eval_tasks, self._eval_fns)):
            means = task_steps.evaluate(i, task, fn, self._eval_streams[i], self._batch_checks,
                                        self._placement, self._weights, self._state, self._step)
            prefix = "eval" if not task.export_prefix else task.export_prefix
            self._log.log_eval(self._step, prefix, task.metric_names, means, self._history)

    def next_eval_batch(self, index: int = 0) -> tuple:
        """The next batch of eval task ``index`` from the Loop's stream (counted and prefetched
        like its evals; a callback evaluating on that data must draw it here, not from the task)."""
        return self._eval_streams[index].next()

    @property
    def eval_model(self) -> base.Layer:
        return self._models.eval_model(self._weights, self._state)

    def _sync_model_weights(self, checked: bool = True) -> None:
        self._models.sync(self._weights, self._state, checked)

    def update_weights_and_state(self, weights: Any = None, state: Any = None) -> None:
        if weights is not None:
            self._weights = self._placement.place_weights(weights)
        if state is not None:
            self._state = self._placement.replicate(state)
        self._sync_model_weights()

    # -- checkpoints (written and read by retrax.supervised.loop_checkpoints) ------

    def save_checkpoint(self, basename: str = "model") -> None:
        """Writes the native checkpoint (and Trax's layout) for the current step."""
        if self._output_dir is None:
            return
        # Whole arrays on the host; gathering ones split over several processes' devices
        # is a collective, so every process takes part before only the chief writes.
        weights, state, slots = self._placement.to_host((self._weights, self._state, self._slots))
        if not self.is_chief:
            return
        self._run_lock.check_owner(self._run_token, "write a checkpoint")
        # Never checkpoint weights that produced a NaN loss.
        self._log.fetch(self._checkpoints.last_good)
        self._checkpoints.save(basename, step=self._step, weights=weights,
                               state=state, slots=slots, history=self._history,
                               task_streams=self._task_streams, eval_streams=self._eval_streams)

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
        resumed = self._checkpoints.load(
            directory or self._output_dir, filename, slots=self._slots,
            task_streams=self._task_streams, eval_streams=self._eval_streams)
        if resumed is None:
            return False
        self._weights = self._placement.place_weights(resumed.weights)
        if resumed.state is not None:
            self._state = resumed.state
        for t, slots in resumed.slots.items():
            self._slots[t] = self._placement.place_weights(slots)
        self._step = resumed.step
        if resumed.history is not None:
            self._history = resumed.history
        self._log.last_log_step = self._step
        self._sync_model_weights()
        return True

