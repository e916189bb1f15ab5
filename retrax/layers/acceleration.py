"""``Accelerate``: run a layer compiled and data-parallel over the local devices (Trax's).

``tl.Accelerate(layer)`` splits the batch (first axis) of its inputs over
``n_devices`` devices and runs ``layer`` as one compiled program; with one
device it just compiles it. A batch that does not divide evenly is padded with
zeros and the padding cut from the outputs (layers that mix rows, such as
``BatchNorm`` in train mode, then see the padding, as in Trax). Inside a
model, or inside a ``Loop`` (which compiles and shards the whole step
itself), it is the identity around ``layer``. Its weights and state are
``layer``'s, in a one-entry tuple.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> dense = tl.Dense(2)
>>> _ = dense.init(shapes.ShapeDtype((3, 4)))
>>> fast = tl.Accelerate(dense)
>>> np.allclose(fast(np.ones((3, 4), np.float32)), dense(np.ones((3, 4), np.float32)))
True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from retrax.layers.base import Layer, apply_child, init_child
from retrax.layers.pass_context import current_pass

__all__ = ["Accelerate", "mean_or_pmean"]


class Accelerate(Layer):
    """Runs ``layer`` compiled, its batch split over ``n_devices`` (default: all local)."""

    def __init__(self, layer: Layer, n_devices: int | None = None):
        if not isinstance(layer, Layer):
            raise TypeError(f"Accelerate: layer must be a Layer; got {type(layer).__name__}.")
        available = jax.local_device_count()
        n = available if n_devices is None else n_devices
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= available:
            raise ValueError(f"Accelerate: n_devices must be an int in [1, {available}] (the "
                             f"local devices); got {n_devices!r}.")
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, sublayers=[layer])
        self._n_devices = int(n)
        self._compiled = jax.jit(self._run_plain)

    @property
    def sublayer(self) -> Layer:
        """The accelerated layer."""
        return self.sublayers[0]

    def replicate_weights(self, weights: Any) -> None:
        """Sets the sublayer's weights (Trax's name; nothing needs replicating here)."""
        self.sublayer.weights = weights

    def replicate_state(self, state: Any) -> None:
        """Sets the sublayer's state."""
        self.sublayer.state = state

    def init_in_pass(self, input_signature, rng, ctx):
        w, s = init_child(self, 0, self.sublayer, input_signature, rng, ctx)
        return (w,), (s,)

    def forward_in_pass(self, x, weights, state, rng, ctx):
        y, s = apply_child(self, 0, self.sublayer, x, weights[0], state[0], rng, ctx)
        return y, (s,)

    def _run_plain(self, x, weights, state, rng):
        return Layer.pure_fn(self, x, weights, state, rng)

    def pure_fn(self, x: Any, weights: Any, state: Any, rng: Any, use_cache: bool = False):
        """Compiled and split over the devices, unless called inside another layer."""
        if current_pass() is not None:
            return super().pure_fn(x, weights, state, rng, use_cache)
        items = list(x) if isinstance(x, (tuple, list)) else [x]
        batch = int(np.shape(items[0])[0])
        padded_batch = -(-batch // self._n_devices) * self._n_devices
        if padded_batch != batch:
            items = [jnp.pad(jnp.asarray(z), [(0, padded_batch - batch)]
                             + [(0, 0)] * (np.ndim(z) - 1)) for z in items]
        if self._n_devices > 1:
            mesh = Mesh(np.array(jax.local_devices()[:self._n_devices]), ("data",))
            items = [jax.device_put(z, NamedSharding(mesh, PartitionSpec("data")))
                     for z in items]
        inputs = tuple(items) if isinstance(x, (tuple, list)) else items[0]
        y, new_state = self._compiled(inputs, weights, state, rng)
        if padded_batch != batch:
            y = (tuple(z[:batch] for z in y) if isinstance(y, (tuple, list)) else y[:batch])
        return y, new_state


def mean_or_pmean(n_devices: int, x: Any, axis: Any = None) -> Any:
    """The mean of ``x`` over ``axis`` (Trax's name: across devices too, which a
    ``jax.sharding`` program does by itself)."""
    del n_devices
    return jnp.mean(x, axis=axis)
