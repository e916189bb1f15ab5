"""How a Loop lays out weights and optimizer slots over its devices.

Three layouts, chosen with ``Loop(..., sharding=...)``:

* ``'replicated'`` (the default): every device holds all weights and slots;
  only the batch is split (data parallelism).
* ``'fsdp'`` (fully sharded data parallelism): each large weight, and each
  optimizer slot of its shape, is split along one axis over the same
  ``'data'`` mesh axis the batch is split over; each device holds about
  ``1 / n_devices`` of them. Small arrays (fewer than :data:`MIN_SHARDED_SIZE`
  elements, or with no axis the device count divides) stay replicated. XLA
  inserts the all-gathers before a weight is used and reduce-scatters its
  gradient; the result is the replicated run's, up to float summation order.
* ``'tensor:K'`` (tensor parallelism): a ``'data'`` x ``'model'`` mesh with
  ``K`` devices on ``'model'``; attention, feed-forward, embedding and output
  weights are split Megatron-style over ``'model'`` by rules read from the
  model's layers (:mod:`retrax.supervised.tensor_parallel`), batches over
  ``'data'``. ``K`` must divide the device count.

The layout is a function of an array's shape only (:func:`fsdp_spec`), so the
same rule places concrete arrays (:func:`place`) and constrains traced ones
inside a compiled step (:func:`constrain`).

>>> tuple(fsdp_spec((32, 128), 8))
(None, 'data')
>>> tuple(fsdp_spec((30, 7), 8))  # no axis divisible by 8: replicated
()
>>> tuple(fsdp_spec((8,), 8))  # too small to be worth it
()
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["SHARDINGS", "MIN_SHARDED_SIZE", "check_sharding", "model_axis_size", "fsdp_spec",
           "place",
           "constrain", "bytes_per_device", "to_host"]

SHARDINGS = ("replicated", "fsdp")

# Arrays with fewer elements stay replicated under 'fsdp': gathering them costs
# more in latency than their copies cost in memory (biases, norms, counters).
MIN_SHARDED_SIZE = 1024


def check_sharding(value: Any) -> str:
    """``value`` as one of :data:`SHARDINGS` or ``'tensor:K'`` (None means ``'replicated'``).

    >>> check_sharding(None), check_sharding('fsdp'), check_sharding('tensor:2')
    ('replicated', 'fsdp', 'tensor:2')
    >>> check_sharding('tp')
    Traceback (most recent call last):
    ...
    ValueError: Loop: sharding='tp' is not supported; choose one of 'replicated' (weights on every device, the default), 'fsdp' (weights and optimizer slots split over the devices) or 'tensor:K' with K a positive integer, e.g. 'tensor:2' (attention and feed-forward weights split Megatron-style over K devices, batches over the rest; K must divide the device count).
    """
    if value is None:
        return "replicated"
    if isinstance(value, str) and value in SHARDINGS:
        return value
    if isinstance(value, str) and value.startswith("tensor:"):
        k = value[len("tensor:"):]
        if k.isdigit() and k.isascii() and int(k) >= 1:
            return f"tensor:{int(k)}"
    raise ValueError(
        f"Loop: sharding={value!r} is not supported; choose one of 'replicated' (weights on "
        f"every device, the default), 'fsdp' (weights and optimizer slots split over the "
        f"devices) or 'tensor:K' with K a positive integer, e.g. 'tensor:2' (attention and "
        f"feed-forward weights split Megatron-style over K devices, batches over the rest; "
        f"K must divide the device count)."
    )


def model_axis_size(sharding: str) -> int:
    """The devices on the ``'model'`` mesh axis: ``K`` for ``'tensor:K'``, else 1.

    >>> model_axis_size('tensor:4'), model_axis_size('fsdp')
    (4, 1)
    """
    sharding = check_sharding(sharding)
    return int(sharding[len("tensor:"):]) if sharding.startswith("tensor:") else 1


def fsdp_spec(shape: Sequence[int], n_devices: int,
              min_size: int = MIN_SHARDED_SIZE) -> PartitionSpec:
    """The ``'fsdp'`` layout of an array of ``shape`` over ``n_devices``.

    The largest axis that ``n_devices`` divides is split over ``'data'`` (the
    last such axis on a tie); arrays under ``min_size`` elements, or without
    such an axis, are replicated (``PartitionSpec()``).
    """
    shape = tuple(int(d) for d in shape)
    if n_devices <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return PartitionSpec()
    best = None
    for axis, d in enumerate(shape):
        if d % n_devices == 0 and (best is None or d >= shape[best]):
            best = axis
    if best is None:
        return PartitionSpec()
    return PartitionSpec(*([None] * best + ["data"]))


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def place(tree: Any, mesh: Mesh, sharding: str) -> Any:
    """Puts every array of ``tree`` on ``mesh`` in the ``sharding`` layout."""
    n = mesh.devices.size

    def put(x):
        spec = fsdp_spec(np.shape(x), n) if sharding == "fsdp" else PartitionSpec()
        return jax.device_put(x, NamedSharding(mesh, spec))

    return jax.tree_util.tree_map(put, tree)


def constrain(tree: Any, mesh: Mesh, sharding: str) -> Any:
    """Inside a compiled function: asks XLA to keep ``tree``'s arrays in ``sharding``'s layout."""
    if sharding != "fsdp" or mesh.devices.size == 1:
        return tree
    n = mesh.devices.size

    def pin(x):
        if not _is_array(x):
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, fsdp_spec(x.shape, n)))

    return jax.tree_util.tree_map(pin, tree)


def bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of ``tree``'s arrays held by each (addressable) device, from their shards."""
    held: dict[Any, int] = {}
    for leaf in jax.tree_util.tree_leaves(tree):
        if not isinstance(leaf, jax.Array):
            continue
        for shard in leaf.addressable_shards:
            held[shard.device] = held.get(shard.device, 0) + shard.data.nbytes
    return held


def to_host(tree: Any) -> Any:
    """``tree`` as NumPy arrays, whole, in every process.

    Arrays split over the devices of several processes are first gathered
    (a collective: every process must call this together); the rest are
    copied as they are.
    """
    def split_over_processes(x):
        return isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated

    if not any(split_over_processes(x) for x in jax.tree_util.tree_leaves(tree)):
        return jax.device_get(tree)  # one batched transfer

    def fetch(x):
        if split_over_processes(x):
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x)) if _is_array(x) else x

    return jax.tree_util.tree_map(fetch, tree)
