"""Callbacks run by the training ``Loop`` around its steps (Trax's ``trax.supervised.callbacks``).

Pass callback *classes*, factories (``functools.partial(cls, option=...)``) or
instances to ``Loop(..., callbacks=[...])``; the Loop calls each class or
factory with itself as the only argument. At every step ``n``
(counting from 1) the Loop calls ``on_step_begin(n)`` before the train step and
``on_step_end(n)`` after that step's evals and checkpoint, on each callback
whose ``call_at(n)`` is true, in the order given.

>>> import numpy as np
>>> from retrax import layers as tl, optimizers
>>> from retrax.supervised import callbacks, training
>>> class Steps(callbacks.TrainingStepCallback):
...     seen = []
...     def call_at(self, step):
...         return step % 2 == 0
...     def on_step_end(self, step):
...         self.seen.append((step, self.loop.step))
>>> def batches():
...     while True:
...         yield np.ones((2, 3), np.float32), np.zeros((2, 1), np.float32), np.ones((2, 1), np.float32)
>>> task = training.TrainTask(batches(), tl.L2Loss(), optimizers.SGD(0.1))
>>> loop = training.Loop(tl.Dense(1), task, callbacks=[Steps], progress_bar=False,
...                      stdout=open('/dev/null', 'w'))
>>> loop.run(4)
>>> Steps.seen
[(2, 2), (4, 4)]

``SerializedModelEvaluation`` is Trax's callback that scores a
``retrax.rl.serialization_utils.SerializedModel`` by decoding observations
ahead; ``PredictStepper``, what it decodes with, drives a predict-mode model
from an explicit state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax import layers as tl
from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.rl import serialization_utils
from retrax.supervised import sampling

__all__ = ["TrainingStepCallback", "SerializedModelEvaluation", "PredictStepper",
           "consume_sequence"]


class TrainingStepCallback:
    """Base class of Loop callbacks: override ``call_at``, ``on_step_begin``, ``on_step_end``.

    ``loop`` is the ``training.Loop`` running it, also readable as
    ``self.loop``: its public API (``step``, ``history``, ``model``,
    ``eval_model``, ``tasks``, ``output_dir``, ``checkpoint_at``,
    ``save_checkpoint``, ``run_evals``, ...) is what a callback works with.
    By default a callback runs at every step and does nothing.
    """

    def __init__(self, loop: Any):
        self._loop = loop

    @property
    def loop(self) -> Any:
        """The ``training.Loop`` this callback belongs to."""
        return self._loop

    def call_at(self, step: int) -> bool:
        """Whether the hooks run at ``step`` (default: every step)."""
        del step
        return True

    def on_step_begin(self, step: int) -> None:
        """Runs before the train step ``step``."""

    def on_step_end(self, step: int) -> None:
        """Runs after step ``step``, its evals and its checkpoint."""


class SerializedModelEvaluation(TrainingStepCallback):
    """Evaluates a ``SerializedModel`` by decoding observations ahead (Trax's callback).

    A :class:`retrax.rl.serialization_utils.SerializedModel` models a
    trajectory (observations and actions, or a time series) as one token
    sequence. This callback measures how well its predict-mode token model
    forecasts: for each eval batch ``(obs, act, obs, mask)`` and each
    ``context`` in ``context_lengths`` it feeds the first ``context``
    observation/action pairs, then for ``max(horizon_lengths)`` steps samples
    the next observation's tokens, compares the decoded observation with the
    true one, and feeds the sampled tokens and the true action. The metric
    ``pred_error/context_{c}/horizon_{h}`` is the mean squared error of the
    ``h``-th predicted observation over its entries and the unmasked
    examples of ``n_steps`` batches. The values are logged with the Loop's
    ``log_summary`` under mode ``'srl_eval'`` (history, metrics.jsonl,
    TensorBoard, the output).

    Args:
      loop: the ``training.Loop`` (the Loop passes itself when given the class
        through ``functools.partial``), or None; then ``model`` and
        ``eval_task`` are needed and only ``evaluate`` is used.
      model: the ``SerializedModel``; default ``loop.model``.
      eval_at: when to evaluate: an int ``k`` (steps ``1, k + 1, 2k + 1, ...``,
        as in Trax), a collection of steps or a predicate on the step.
      eval_task: the ``EvalTask`` whose batches are used; default the Loop's
        only eval task.
      context_lengths / horizon_lengths: steps of context fed before
        predicting; which future steps are scored.
      n_steps: eval batches per evaluation.
      accelerate_model: run the predict model through ``tl.Accelerate``.
      temperature: keyword-only; sampling temperature (Trax samples at 1.0;
        0.0 is greedy).
      seed: keyword-only; the sampling key of each evaluation is derived from
        it and the step.

    Differences from Trax: the error is averaged over all unmasked entries
    (Trax divided the summed error by the number of *non-zero* errors, which
    ignores exact predictions); sampling uses explicit keys; the model's
    weights are those of the step that just ran.
    """

    def __init__(self, loop: Any, model: Any = None, eval_at: Any = 1000, eval_task: Any = None,
                 context_lengths: Sequence[int] = (1,), horizon_lengths: Sequence[int] = (1,),
                 n_steps: int = 1, accelerate_model: bool = True, *, temperature: float = 1.0,
                 seed: int = 0):
        super().__init__(loop)
        where = "SerializedModelEvaluation"
        if loop is None and (model is None or eval_task is None):
            raise ValueError(f"{where}: without a loop, pass both model= (a SerializedModel) "
                             f"and eval_task= (an EvalTask).")
        model = loop.model if model is None else model
        for attr in ("observation_serializer", "action_serializer", "make_predict_model"):
            if not hasattr(model, attr):
                raise TypeError(f"{where}: model must be a serialization_utils.SerializedModel "
                                f"(it has no {attr}); got {type(model).__name__}.")
        if eval_task is None:
            if len(loop.eval_tasks) != 1:
                raise ValueError(f"{where}: the Loop has {len(loop.eval_tasks)} eval tasks; "
                                 f"pass eval_task= to choose one.")
            eval_task = loop.eval_tasks[0]
        self._eval_at = _step_predicate(eval_at, where)
        self._eval_task = eval_task
        # One of the Loop's eval tasks is read through the Loop's stream: its
        # prefetch thread may be drawing from the task's iterator.
        loop_tasks = [] if loop is None else list(loop.eval_tasks)
        self._loop_task_index = next(
            (i for i, task in enumerate(loop_tasks) if task is eval_task), None)
        self._contexts = _positive_ints(context_lengths, "context_lengths", where)
        self._horizons = _positive_ints(horizon_lengths, "horizon_lengths", where)
        self._n_steps = _positive_ints([n_steps], "n_steps", where)[0]
        self._obs_srl = model.observation_serializer
        self._act_srl = model.action_serializer
        self._batch_size = int(np.shape(eval_task.sample_batch[0])[0])
        self._inner = model.make_predict_model()
        predict_model = tl.Accelerate(self._inner) if accelerate_model else self._inner
        self._predict_model = predict_model
        _, self._init_state = predict_model.init(
            shapes.ShapeDtype((self._batch_size, 1), np.int32))
        self._key = fastmath_random.get_prng(seed)
        self._stepper = PredictStepper(predict_model, temperature, compiled=not accelerate_model)

    @property
    def predict_model(self) -> Any:
        """The predict-mode token model (inside ``tl.Accelerate`` when accelerated)."""
        return self._predict_model

    def call_at(self, step: int) -> bool:
        return bool(self._eval_at(step))

    def on_step_begin(self, step: int) -> None:
        del step

    def on_step_end(self, step: int) -> None:
        self.loop.update_weights_and_state()  # The model objects get this step's weights.
        metrics = self.evaluate(self.loop.eval_model.seq_model_weights, step=step)
        self.loop.log_summary(metrics, None, "", "srl_eval")

    def evaluate(self, weights: Any, step: int = 0) -> dict[str, float]:
        """The metrics for the predict model with ``weights`` (None: keep its weights)."""
        if weights is not None:
            self._inner.weights = weights
        self._stepper.weights = self._predict_model.weights
        sums: dict[tuple[int, int], float] = {}
        counts: dict[tuple[int, int], float] = {}
        key = fastmath_random.hash_fold_in(self._key, step)
        for i in range(self._n_steps):
            batch_key = fastmath_random.hash_fold_in(key, i)
            for pair, (total, count) in self._evaluate_batch(self._next_batch(),
                                                             batch_key).items():
                sums[pair] = sums.get(pair, 0.0) + total
                counts[pair] = counts.get(pair, 0.0) + count
        return {f"pred_error/context_{c}/horizon_{h}": sums[c, h] / max(counts[c, h], 1e-9)
                for (c, h) in sorted(sums)}

    def _next_batch(self) -> tuple:
        if self._loop_task_index is not None:
            return self.loop.next_eval_batch(self._loop_task_index)
        return self._eval_task.next_batch()

    def _evaluate_batch(self, batch: Sequence[Any], key: Any) -> dict:
        """``{(context, horizon): (summed squared error, summed mask)}`` for one batch."""
        if len(batch) < 4:
            raise ValueError(f"SerializedModelEvaluation: expected batches (obs, act, obs, mask); "
                             f"got {len(batch)} arrays.")
        obs, act, mask = np.asarray(batch[0]), np.asarray(batch[1]), np.asarray(batch[3])
        needed = self._contexts[-1] + self._horizons[-1]
        if obs.shape[1] < needed or act.shape[1] < needed - 1:
            raise ValueError(
                f"SerializedModelEvaluation: context {self._contexts[-1]} + horizon "
                f"{self._horizons[-1]} needs {needed} observations and {needed - 1} actions per "
                f"example; the batch has {obs.shape[1]} and {act.shape[1]}.")
        obs_tokens = np.asarray(serialization_utils.Serialize(self._obs_srl)(obs))
        act_tokens = np.asarray(serialization_utils.Serialize(self._act_srl)(act))
        step_mask = mask.reshape(mask.shape[:2] + (-1,)).max(axis=-1).astype(np.float64)
        obs_len = self._obs_srl.representation_length
        stepper = self._stepper
        results = {}
        n_sampled = 0
        # What the context before each context length left: the state and the
        # token not fed yet (at first, the start symbol 0).
        state, pending, fed = self._init_state, np.zeros((self._batch_size, 1), np.int32), 0
        for context in self._contexts:
            if context > fed:
                seq = np.asarray(serialization_utils.Interleave()(
                    (obs_tokens[:, fed:context], act_tokens[:, fed:context])))
                state = stepper.feed(state, np.concatenate([pending, seq[:, :-1]], axis=1))
                pending, fed = seq[:, -1:], context
            run_state, run_pending = state, pending
            for t in range(self._horizons[-1]):
                predicted, run_state = stepper.generate(
                    run_state, run_pending, obs_len, fastmath_random.hash_fold_in(key, n_sampled))
                n_sampled += 1
                if t + 1 in self._horizons:
                    guess = np.asarray(self._obs_srl.deserialize(predicted), np.float64)
                    truth = obs[:, context + t].astype(np.float64)
                    err = ((guess - truth) ** 2).reshape(len(guess), -1).mean(axis=1)
                    weight = step_mask[:, context + t]
                    results[context, t + 1] = (float(np.sum(err * weight)), float(weight.sum()))
                action = act_tokens[:, context + t]
                run_state = stepper.feed(
                    run_state, np.concatenate([predicted[:, -1:], action[:, :-1]], axis=1))
                run_pending = action[:, -1:]
        self._predict_model.state = run_state
        return results


class PredictStepper:
    """Drives a predict-mode model token by token from an explicit state.

    ``weights`` (settable) are the model's weights, read once: set them
    after changing the model's. ``feed(state, tokens)`` runs the model on
    ``(B, L)`` tokens and returns the new state; ``generate(state, first, n, key)`` feeds ``first`` ``(B, 1)``,
    samples ``n`` tokens (each fed before the next is sampled, the last one
    not) and returns ``((B, n) tokens, state)``. With ``compiled`` the model's
    ``pure_fn`` is wrapped in ``jax.jit`` (one program per input length); an
    ``Accelerate`` model compiles itself.
    """

    def __init__(self, model: Any, temperature: float = 1.0, compiled: bool = True):
        if not np.isfinite(temperature) or temperature < 0:
            raise ValueError(f"PredictStepper: temperature must be a finite number >= 0; got "
                             f"{temperature!r}.")
        self.weights = model.weights
        self._run = jax.jit(model.pure_fn) if compiled else model.pure_fn
        temperature = float(temperature)

        def pick(logits, key):
            log_probs = jax.nn.log_softmax(logits[:, -1, :].astype(jnp.float32), axis=-1)
            return sampling.sample(log_probs, key, temperature, None, None)

        self._pick = jax.jit(pick)

    def feed(self, state: Any, tokens: Any) -> Any:
        if tokens.shape[1] == 0:
            return state
        _, state = self._run(jnp.asarray(tokens, jnp.int32), self.weights, state, None)
        return state

    def generate(self, state: Any, first: Any, n: int, key: Any) -> tuple[np.ndarray, Any]:
        tokens, out = jnp.asarray(first, jnp.int32), []
        for i in range(n):
            logits, state = self._run(tokens, self.weights, state, None)
            tokens = self._pick(logits, fastmath_random.hash_fold_in(key, i))[:, None]
            out.append(tokens)
        return np.asarray(jnp.concatenate(out, axis=1)), state


def consume_sequence(model: Any, start_id: Any, sequence: Any) -> None:
    """Feeds ``start_id`` ``(B, 1)`` then ``sequence`` ``(B, L)`` to a predict-mode model.

    Trax's helper: the model's stored state advances past those tokens (its
    weights and state must be set; nothing is sampled). Eager, for a few calls;
    ``PredictStepper`` is the compiled way.
    """
    sequence = np.asarray(sequence, np.int32)
    start = np.broadcast_to(np.asarray(start_id, np.int32), (sequence.shape[0], 1))
    stepper = PredictStepper(model, compiled=False)
    model.state = stepper.feed(model.state, np.concatenate([start, sequence], axis=1))


def _step_predicate(eval_at: Any, where: str) -> Callable[[int], bool]:
    if isinstance(eval_at, (int, np.integer)) and not isinstance(eval_at, bool):
        if eval_at < 1:
            raise ValueError(f"{where}: eval_at must be >= 1; got {eval_at}.")
        return lambda step: step % int(eval_at) == 1 % int(eval_at)
    if callable(eval_at):
        return eval_at
    if hasattr(eval_at, "__contains__"):
        steps = frozenset(int(s) for s in eval_at)
        return lambda step: step in steps
    raise TypeError(f"{where}: eval_at must be an int, a collection of steps or a function "
                    f"step -> bool; got {type(eval_at).__name__}.")


def _positive_ints(values: Any, name: str, where: str) -> list[int]:
    items = list(values)
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1
                        for v in items):
        raise ValueError(f"{where}: {name} must be positive ints (at least one); got {values!r}.")
    return sorted(int(v) for v in items)
