"""Chunk: runs a layer on slices of the batch, one after another, to save memory.

``Chunk(layer, chunk_size)`` cuts each input's batch axis (axis 0) into
chunks of ``chunk_size`` rows, runs ``layer`` on each chunk in turn (one
``lax.scan``, rematerialized: activations of a chunk are recomputed in the
backward pass rather than stored), and joins the results back into one batch.
Peak memory is that of one chunk. It is Trax's construction, so weights and
state are laid out as Trax's are::

    Serial(ReshapeToChunks, Scan(layer, axis=0, n_carry=0, remat=True), ReshapeFromChunks)
    weights: ((), (weights_of_layer,), ())
    state:   ((), (state_of_layer, ()), ())

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> chunked = tl.Chunk(tl.Dense(2), chunk_size=2)
>>> x = np.arange(12, dtype=np.float32).reshape(4, 3)
>>> _ = chunked.init(shapes.signature(x))
>>> chunked(x).shape
(4, 2)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from retrax.layers.base import Layer, PureLayer
from retrax.layers.control_flow import Scan
from retrax.layers.stack_combinators import Serial

__all__ = ["Chunk"]


def Chunk(layer: Layer, chunk_size: int, pass_unchunkable: bool = True) -> Layer:  # noqa: N802
    """Applies ``layer`` to chunks of ``chunk_size`` batch rows; same n_in/n_out as ``layer``.

    Every input of ``layer`` is split along axis 0 and every output joined
    along axis 0, so ``layer`` must treat batch rows independently (as
    ``Dense``, attention over each sequence or a feed-forward block do; a
    ``BatchNorm`` in train mode would see chunk statistics instead).

    A batch that ``chunk_size`` does not divide is run as one chunk when
    ``pass_unchunkable`` (the default); otherwise it raises. ``chunk_size < 1``
    returns ``layer`` itself (no chunking), as in Trax.

    For example, with ``F``: 2 inputs, 1 output, and ``chunk_size=2``,
    ``Chunk(F, 2)`` takes 2 inputs and gives 1 output:

      - inputs: a, b                 (batch 6 each)
      - outputs: [F(a[0:2], b[0:2]); F(a[2:4], b[2:4]); F(a[4:6], b[4:6])]

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> center = tl.Fn('CenterOverBatch', lambda x: x - x.mean(axis=0))
    >>> x = np.array([[1.0], [3.0], [10.0], [20.0]])
    >>> tl.Chunk(center, 2)(x).tolist()   # each chunk of 2 rows on its own
    [[-1.0], [1.0], [-5.0], [5.0]]
    >>> tl.Chunk(center, 3)(x).tolist()   # 3 does not divide 4: one chunk
    [[-7.5], [-5.5], [1.5], [11.5]]
    """
    if not isinstance(layer, Layer):
        raise ValueError(
            f"Chunk: layer must be a layer; got {type(layer).__name__}. Wrap a list of layers "
            f"as tl.Serial(...)."
        )
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise ValueError(f"Chunk: chunk_size must be an int; got {chunk_size!r}.")
    if chunk_size < 1:
        return layer

    def chunk_shape(x: Any) -> tuple[int, int]:
        if len(x.shape) < 1:
            raise ValueError(
                f"Chunk(chunk_size={chunk_size}) cuts inputs along their batch axis (axis 0), "
                f"but got a scalar input. Give {layer.name_with_arity} batched inputs."
            )
        batch = x.shape[0]
        if batch % chunk_size == 0:
            return batch // chunk_size, chunk_size
        if pass_unchunkable:
            return 1, batch
        raise ValueError(
            f"Chunk: chunk_size {chunk_size} must divide the batch size, but an input of "
            f"{layer.name_with_arity} has batch size {batch} (shape {tuple(x.shape)}). Use a "
            f"batch size that is a multiple of {chunk_size}, another chunk_size, or "
            f"pass_unchunkable=True to run such a batch as one chunk."
        )

    def to_chunks(xs: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda x: jnp.reshape(x, chunk_shape(x) + tuple(x.shape[1:])), xs)

    def from_chunks(ys: Any) -> Any:
        return jax.tree_util.tree_map(
            lambda y: jnp.reshape(y, (y.shape[0] * y.shape[1],) + tuple(y.shape[2:])), ys)

    return Serial(
        PureLayer(to_chunks, n_in=layer.n_in, n_out=layer.n_in, name="ReshapeToChunks"),
        Scan(layer, axis=0, n_carry=0, remat=True),
        PureLayer(from_chunks, n_in=layer.n_out, n_out=layer.n_out, name="ReshapeFromChunks"),
    )
