"""The compiled steps of a Loop's tasks: one train step per TrainTask, one eval
step per EvalTask, each with its loss or metric layers initialized.

Every end layer (a loss or a metric) is initialized on the model's outputs for
*its own* task's sample batch followed by the rest of that batch (targets,
weights): an eval task whose batches have another sequence length than the
training batches gets metrics of its own shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrax import shapes
from retrax.layers import base
from retrax.layers.function_layers import Fn
from retrax.supervised import train_step as ts
from retrax.supervised.loss_chunking import LossChunkedModel

__all__ = ["TaskSteps", "build_task_steps", "model_signature", "init_end", "evaluate"]


def model_signature(model: base.Layer, batch: Sequence[Any]) -> Any:
    """The input signature of ``model`` for a batch ``(inputs..., targets, weights)``."""
    if len(batch) < model.n_in:
        raise ValueError(
            f"Loop: the model takes {model.n_in} inputs but a batch has only "
            f"{len(batch)} items; batches are (inputs..., targets, weights)."
        )
    sig = shapes.signature(tuple(batch[:model.n_in]))
    return sig[0] if model.n_in == 1 else sig


def init_end(layer: base.Layer, out_sig: Any, sample_batch: Sequence[Any], n_in: int):
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


@dataclass
class TaskSteps:
    """Per train task: its step function, optimizer slots and params; per eval task, its step."""

    train_fns: list
    slots: list
    opt_params: list
    eval_fns: list


def build_task_steps(model: base.Layer, eval_model: base.Layer, tasks: Sequence[Any],
                     eval_tasks: Sequence[Any], weights: Any, placement: ts.Placement,
                     base_key: Any, compute_dtype: str = "float32",
                     loss_chunk_size: int = 0) -> TaskSteps:
    """Initializes every task's end layers and optimizer and compiles (lazily) their steps.

    ``weights`` are the (placed) model weights the optimizers' slots are shaped after;
    slots get the placement's layout. ``compute_dtype``: see ``train_step.make_train_step``.
    ``loss_chunk_size > 0``: the train steps compute the model's output layer and the
    loss over chunks of that many positions (``loss_chunking.LossChunkedModel``).
    """
    steps = TaskSteps([], [], [], [])
    for task in tasks:
        train_model, loss_layer = model, task.loss_layer
        if loss_chunk_size:
            train_model = LossChunkedModel(model, task.loss_layer, loss_chunk_size)
            loss_layer = Fn("ChunkedLoss", lambda loss: loss)  # the view gives the loss
            out_sig = shapes.ShapeDtype((), np.float32)
        else:
            out_sig = model.output_signature(model_signature(model, task.sample_batch))
        lw, ls = init_end(loss_layer, out_sig, task.sample_batch, train_model.n_in)
        steps.train_fns.append(ts.make_train_step(
            train_model, loss_layer, lw, ls, task.optimizer, base_key, placement=placement,
            compute_dtype=compute_dtype))
        slots, opt_params = task.optimizer.tree_init(weights)
        steps.slots.append(placement.place_weights(slots))
        steps.opt_params.append(opt_params)
    eval_key = base.init_rng_split(base_key, 2)[1]
    for task in eval_tasks:
        out_sig = eval_model.output_signature(model_signature(eval_model, task.sample_batch))
        ends = [init_end(m, out_sig, task.sample_batch, model.n_in) for m in task.metrics]
        steps.eval_fns.append(ts.make_eval_step(
            eval_model, task.metrics, [e[0] for e in ends], [e[1] for e in ends], eval_key,
            compute_dtype=compute_dtype))
    return steps


def evaluate(index: int, task: Any, eval_fn: Any, stream: Any, batch_checks: Any,
             placement: ts.Placement, weights: Any, state: Any, step: int) -> Any:
    """Eval task ``index``'s metric values averaged over its ``n_eval_batches`` next batches."""
    if not task.metrics:  # A task only holding data (e.g. for a callback): nothing to compute.
        return []
    totals = None
    for j in range(task.n_eval_batches):
        try:
            batch = stream.next()
        except StopIteration:
            raise ValueError(
                f"Eval data of eval task {index} ran out after {stream.consumed} batches; "
                f"it must yield at least n_eval_batches={task.n_eval_batches} per eval."
            ) from None
        where = f"Loop eval at step {step}, eval task {index}"
        batch_checks.check(batch, shapes.signature(task.sample_batch), where)
        values = eval_fn(weights, state, placement.put_batch(batch, where), step * 1000 + j)
        totals = values if totals is None else totals + values
    return np.asarray(totals) / task.n_eval_batches
