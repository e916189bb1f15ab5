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
from retrax.supervised import mixed_precision, tensor_parallel
from retrax.supervised import sharding as sharding_rules

__all__ = ["Placement", "check_batch_rows", "make_train_step", "make_eval_step", "apply_model_and_ends"]


class Placement:
    """Data (and tensor) parallelism over the local (or global) devices with ``jax.sharding``.

    Batches are split along their first axis over the mesh axis ``'data'``.
    Weights and optimizer slots are laid out as ``sharding`` says (see
    :mod:`retrax.supervised.sharding`): ``'replicated'`` (every device holds
    them all), ``'fsdp'`` (large ones split over the same ``'data'`` axis) or
    ``'tensor:K'`` (a ``'data'`` x ``'model'`` mesh, ``K`` devices on
    ``'model'``; ``model``'s attention, feed-forward, embedding and output
    weights split over ``'model'`` as :mod:`retrax.supervised.tensor_parallel`
    plans from its layers, once they are initialized). The model state is
    always replicated. With one device everything stays on the default device.
    """

    def __init__(self, n_devices: int | None = None, sharding: str | None = None,
                 model: base.Layer | None = None):
        devices = jax.devices()
        if n_devices is None:
            n_devices = len(devices)
        if not 1 <= n_devices <= len(devices):
            raise ValueError(
                f"Loop: n_devices={n_devices} but JAX sees {len(devices)} device(s) "
                f"({devices[0].platform}). Pass n_devices between 1 and {len(devices)}."
            )
        self.n_devices = n_devices
        self.sharding = sharding_rules.check_sharding(sharding)
        self.model_axis = sharding_rules.model_axis_size(self.sharding)
        self._model = model
        self._plan: Any = None
        if self.model_axis > 1:
            self._check_model_axis(devices[:n_devices])
            grid = np.array(devices[:n_devices]).reshape(n_devices // self.model_axis,
                                                        self.model_axis)
            self.mesh = Mesh(grid, ("data", "model"))
        else:
            self.mesh = Mesh(np.array(devices[:n_devices]), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self._local_devices: int | None = None
        self._data_devices: int | None = None
        self._n_processes = jax.process_count()

    def _check_model_axis(self, devices: list) -> None:
        k, n = self.model_axis, len(devices)
        if self._model is None:
            raise ValueError(f"Placement: sharding='{self.sharding}' needs the model "
                             f"(Placement(..., model=model)) to plan its weights' layout.")
        if n % k:
            divisors = ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)
            raise ValueError(
                f"Loop: sharding='{self.sharding}' puts {k} devices on the 'model' mesh axis, "
                f"which must divide the {n} device(s) in use (n_devices={n}); choose "
                f"'tensor:K' with K one of {divisors} (the divisors of {n}), or pass another "
                f"n_devices.")
        mine = sum(1 for d in devices if d.process_index == jax.process_index())
        if mine % k:
            raise ValueError(
                f"Loop: sharding='{self.sharding}' puts {k} devices on the 'model' mesh axis, "
                f"but this process has {mine} of the devices; each process must hold whole "
                f"groups of {k}. Choose a K that divides {mine}.")

    @property
    def plan(self) -> Any:
        """The tensor-parallel plan (``'tensor:K'`` only, else None), made on first use."""
        if self._plan is None and self.model_axis > 1:
            self._plan = tensor_parallel.plan_model(self._model, self.model_axis)
            if not self._plan.splits_anything:  # plain data parallelism over every device
                self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(("data", "model")))
        return self._plan

    @property
    def note(self) -> str | None:
        """A line for the log about the tensor-parallel layout, or None."""
        plan = self.plan
        if plan is None:
            return None
        skipped = (f"; left replicated: {'; '.join(plan.skipped)}" if plan.skipped else "")
        if not plan.splits_anything:
            return (f"Note: sharding='{self.sharding}' found no attention block, feed-forward "
                    f"pair, Embedding or output Dense it could split in this model{skipped}; "
                    f"training data parallel over all {self.n_devices} devices (weights "
                    f"replicated).")
        return f"Tensor parallel ({self.sharding}): {plan.summary}{skipped}."

    @property
    def data_devices(self) -> int:
        """How many of this process's devices the batch rows are split over."""
        if self._data_devices is None:  # counted once (put_batch asks every step)
            split = self.plan is not None and self.plan.splits_anything
            self._data_devices = (self.local_devices // self.model_axis if split
                                  else self.local_devices)
        return self._data_devices

    @property
    def local_devices(self) -> int:
        """How many of this placement's devices belong to this process (all, in one process)."""
        if self._local_devices is None:  # fixed for the placement's life: counted once
            mine = jax.process_index()
            self._local_devices = sum(1 for d in self.mesh.devices.flat if d.process_index == mine)
        return self._local_devices

    def put_batch(self, batch: Sequence[Any], where: str) -> tuple[Any, ...]:
        """``batch`` ready for a compiled step: on the devices, split along its first axis.

        In a multi-process run each process passes its own rows (its share of
        the global batch), split over this process's devices. With one device
        NumPy arrays stay as they are: the compiled step's own (C++) dispatch
        moves them to the device, which costs about a tenth of the host time
        of a ``jax.device_put`` from Python (on config S, a few hundred Python
        calls per step). With several devices, one transfer for the whole batch.
        """
        arrays = [x if isinstance(x, jax.Array) else np.asarray(x) for x in batch]
        if self.n_devices == 1:
            return tuple(arrays)
        n_local, n_processes = self.data_devices, self._n_processes
        for i, x in enumerate(arrays):
            check_batch_rows(x.shape, i, n_local, where, n_processes)
        if n_processes > 1:
            # Multi-host: each process yields its own slice of the global batch.
            return tuple(jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x))
                         for x in arrays)
        return tuple(jax.device_put(arrays, self.batch_sharding))

    def replicate(self, tree: Any) -> Any:
        if self.n_devices == 1:
            return jax.device_put(tree)
        return jax.device_put(tree, self.replicated)

    def place_weights(self, tree: Any) -> Any:
        """Places weights or optimizer slots in this placement's layout (``sharding``)."""
        if self.n_devices == 1 or self.sharding == "replicated":
            return self.replicate(tree)
        if self.plan is not None:
            return self.plan.map(
                lambda x, spec: jax.device_put(x, NamedSharding(self.mesh, spec)), tree)
        return sharding_rules.place(tree, self.mesh, self.sharding)

    def constrain(self, tree: Any) -> Any:
        """Inside the compiled step: keeps weights or slots in this placement's layout."""
        if self.plan is not None and self.plan.splits_anything:
            def pin(x, spec):
                if not (hasattr(x, "shape") and hasattr(x, "dtype")):
                    return x
                return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

            return self.plan.map(pin, tree)
        return sharding_rules.constrain(tree, self.mesh, self.sharding)

    def to_host(self, tree: Any) -> Any:
        """``tree`` as whole NumPy arrays (gathers sharded ones; every process must call)."""
        return sharding_rules.to_host(tree)


def check_batch_rows(shape: Sequence[int], index: int, n_local: int, where: str,
                     n_processes: int = 1) -> None:
    """Raises unless a batch item of ``shape`` splits evenly over ``n_local`` devices.

    ``n_local``: the devices of this process (in a multi-process run each
    process feeds only its own rows, so its share, not the global batch, is
    what must divide).

    >>> check_batch_rows((4, 3), 0, 4, 'train')
    >>> check_batch_rows((6, 3), 1, 4, 'train')
    Traceback (most recent call last):
    ...
    ValueError: train: batch item 1 has shape (6, 3); its first (batch) axis must be divisible by the 4 devices used for data parallelism. Use a batch size that is a multiple of 4 or pass n_devices=... to Loop.
    """
    shape = tuple(shape)
    if n_local <= 1 or (shape and shape[0] % n_local == 0):
        return
    if n_processes > 1:
        raise ValueError(
            f"{where}: batch item {index} has shape {shape} (this process's rows of the global "
            f"batch); its first (batch) axis must be divisible by this process's {n_local} "
            f"devices used for data parallelism. Each of the {n_processes} processes feeds "
            f"its own rows: use a global batch size that is a multiple of "
            f"{n_local * n_processes} ({n_local} devices x {n_processes} processes)."
        )
    raise ValueError(
        f"{where}: batch item {index} has shape {shape}; its first (batch) axis must be "
        f"divisible by the {n_local} devices used for data parallelism. Use a batch size that "
        f"is a multiple of {n_local} or pass n_devices=... to Loop."
    )


def apply_model_and_ends(model: base.Layer, ends: Sequence[base.Layer], ends_weights: Sequence[Any],
                         ends_state: Sequence[Any], weights: Any, state: Any, batch: tuple,
                         rng: Any, compute_dtype: str = "float32") -> tuple[list[Any], Any]:
    """Runs ``model`` on the first ``n_in`` batch items, then each end layer.

    Each end (a loss or metric layer) sees the model's outputs on top of the
    rest of the batch, as in Trax's ``Serial(model, Branch(*ends))``. With
    ``compute_dtype='bfloat16'`` the model runs on bfloat16 copies of its float
    weights and inputs and its float outputs are cast back to float32 for the
    ends (see :mod:`retrax.supervised.mixed_precision`).
    """
    n_in = model.n_in
    model_inputs = list(batch[:n_in])
    if compute_dtype != "float32":
        weights = mixed_precision.cast_floats(weights, compute_dtype)
        model_inputs = mixed_precision.cast_floats(model_inputs, compute_dtype)
    outputs, new_state = model.pure_fn(base.pack(model_inputs), weights, state, rng)
    stack = base.as_stack(outputs) if model.n_out != 1 else [outputs]
    if compute_dtype != "float32":
        stack = mixed_precision.cast_floats(list(stack), "float32")
        new_state = mixed_precision.like_dtypes(new_state, state)
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
                    optimizer: Any, base_key: Any, donate: bool = True, *,
                    placement: Placement | None = None,
                    compute_dtype: str = "float32") -> Callable:
    """``step(weights, state, slots, opt_params, batch, step) -> (w, s, slots, loss, stats)``.

    With a ``placement`` the new weights and slots keep its layout (under
    ``'fsdp'``, split over the devices; the gradients too, so XLA
    reduce-scatters them). ``compute_dtype``: see :func:`apply_model_and_ends`.
    """
    compute_dtype = mixed_precision.check_compute_dtype(compute_dtype)
    keep_layout = placement.constrain if placement is not None else (lambda tree: tree)

    def loss_fn(weights, state, batch, rng):
        (loss,), new_state = apply_model_and_ends(
            model, [loss_layer], [loss_weights], [loss_state], weights, state, batch, rng,
            compute_dtype)
        return loss, new_state

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(weights, state, slots, opt_params, batch, step_number):
        rng = fastmath_random.hash_fold_in(base_key, step_number)
        (loss, new_state), grads = grad_fn(weights, state, batch, rng)
        grads = keep_layout(grads)
        new_weights, new_slots, stats = optimizer.tree_update(
            step_number, grads, weights, slots, opt_params)
        return keep_layout(new_weights), new_state, keep_layout(new_slots), loss, stats

    return jax.jit(step, donate_argnums=(0, 1, 2) if donate else ())


def make_eval_step(model: base.Layer, metrics: Sequence[base.Layer], metrics_weights: Sequence[Any],
                   metrics_state: Sequence[Any], base_key: Any, *,
                   compute_dtype: str = "float32") -> Callable:
    """``eval_step(weights, state, batch, step) -> stacked metric values``."""
    compute_dtype = mixed_precision.check_compute_dtype(compute_dtype)

    def eval_step(weights, state, batch, step_number):
        rng = fastmath_random.hash_fold_in(base_key, step_number)
        values, _ = apply_model_and_ends(model, metrics, metrics_weights, metrics_state,
                                         weights, state, batch, rng, compute_dtype)
        return jnp.stack([jnp.asarray(v, jnp.float32) for v in values])

    return jax.jit(eval_step)
