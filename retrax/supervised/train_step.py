"""Pure, jitted train and eval steps, and how batches and weights are placed.

One train step is one compiled function: forward, backward and the optimizer
update, with the weights, state and optimizer slots donated (their buffers are
reused for the results). The step's random key is derived inside the step from
the run's base key and the step number, so there is no random state to carry
and a resumed run draws exactly the keys an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from retrax.fastmath import random as fastmath_random
from retrax.layers import base

__all__ = ["Placement", "make_train_step", "make_eval_step", "apply_model_and_ends"]


class Placement:
    """Data parallelism over the local (or global) devices with ``jax.sharding``.

    Batches are split along their first axis over a one-axis ``Mesh`` named
    ``'data'``; weights, state and optimizer slots are replicated. With one
    device everything stays on the default device.
    """

    def __init__(self, n_devices: int | None = None):
        devices = jax.devices()
        if n_devices is None:
            n_devices = len(devices)
        if not 1 <= n_devices <= len(devices):
            raise ValueError(
                f"Loop: n_devices={n_devices} but JAX sees {len(devices)} device(s) "
                f"({devices[0].platform}). Pass n_devices between 1 and {len(devices)}."
            )
        self.n_devices = n_devices
        self.mesh = Mesh(np.array(devices[:n_devices]), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))

    def put_batch(self, batch: Sequence[Any], where: str) -> tuple[Any, ...]:
        out = []
        for i, x in enumerate(batch):
            x = np.asarray(x)
            if self.n_devices > 1:
                if x.ndim == 0 or x.shape[0] % self.n_devices:
                    raise ValueError(
                        f"{where}: batch item {i} has shape {x.shape}; its first (batch) axis "
                        f"must be divisible by the {self.n_devices} devices used for data "
                        f"parallelism. Use a batch size that is a multiple of "
                        f"{self.n_devices} or pass n_devices=... to Loop."
                    )
                if jax.process_count() > 1:
                    # Multi-host: each process yields its own slice of the global batch.
                    out.append(jax.make_array_from_process_local_data(self.batch_sharding, x))
                else:
                    out.append(jax.device_put(x, self.batch_sharding))
            else:
                out.append(jax.device_put(x))
        return tuple(out)

    def replicate(self, tree: Any) -> Any:
        if self.n_devices == 1:
            return jax.device_put(tree)
        return jax.device_put(tree, self.replicated)


def apply_model_and_ends(model: base.Layer, ends: Sequence[base.Layer], ends_weights: Sequence[Any],
                         ends_state: Sequence[Any], weights: Any, state: Any, batch: tuple,
                         rng: Any) -> tuple[list[Any], Any]:
    """Runs ``model`` on the first ``n_in`` batch items, then each end layer.

    Each end (a loss or metric layer) sees the model's outputs on top of the
    rest of the batch, as in Trax's ``Serial(model, Branch(*ends))``.
    """
    n_in = model.n_in
    inputs = base.pack(list(batch[:n_in]))
    outputs, new_state = model.pure_fn(inputs, weights, state, rng)
    stack = base.as_stack(outputs) if model.n_out != 1 else [outputs]
    stack = stack + list(batch[n_in:])
    results = []
    for end, w, s in zip(ends, ends_weights, ends_state):
        if end.n_in > len(stack):
            raise ValueError(
                f"{end.name_with_arity} takes {end.n_in} inputs but the model's outputs and "
                f"the rest of the batch give {len(stack)}. A batch must be (inputs..., "
                f"targets, weights)."
            )
        value, _ = end.pure_fn(base.pack(stack[:end.n_in]), w, s, None)
        results.append(value)
    return results, new_state


def make_train_step(model: base.Layer, loss_layer: base.Layer, loss_weights: Any, loss_state: Any,
                    optimizer: Any, base_key: Any, donate: bool = True) -> Callable:
    """``step(weights, state, slots, opt_params, batch, step) -> (w, s, slots, loss, stats)``."""

    def loss_fn(weights, state, batch, rng):
        (loss,), new_state = apply_model_and_ends(
            model, [loss_layer], [loss_weights], [loss_state], weights, state, batch, rng)
        return loss, new_state

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(weights, state, slots, opt_params, batch, step_number):
        rng = fastmath_random.hash_fold_in(base_key, step_number)
        (loss, new_state), grads = grad_fn(weights, state, batch, rng)
        new_weights, new_slots, stats = optimizer.tree_update(
            step_number, grads, weights, slots, opt_params)
        return new_weights, new_state, new_slots, loss, stats

    return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())


def make_eval_step(model: base.Layer, metrics: Sequence[base.Layer], metrics_weights: Sequence[Any],
                   metrics_state: Sequence[Any], base_key: Any) -> Callable:
    """``eval_step(weights, state, batch, step) -> stacked metric values``."""

    def eval_step(weights, state, batch, step_number):
        rng = fastmath_random.hash_fold_in(base_key, step_number)
        values, _ = apply_model_and_ends(model, metrics, metrics_weights, metrics_state,
                                         weights, state, batch, rng)
        return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])

    return jax.jit(eval_step)
