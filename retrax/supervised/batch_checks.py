"""The Loop's checks of each batch before it reaches a compiled step.

A batch that does not fit the model would otherwise fail deep inside a
compiled step, or train silently on wrong data (an out-of-range token id).
:class:`BatchChecks` says instead which item of which batch is wrong and how
to fix it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrax.layers import base, core

__all__ = ["BatchChecks", "find_embedding_vocab", "last_dim"]


class BatchChecks:
    """Checks batches against the first batch and the model they feed.

    Args:
      model: the model; its ``n_in`` says where the targets and weights are,
        and its first ``Embedding`` (if any) the range of input token ids.
      out_sig: the model's output signature; its last dimension bounds the
        target ids.
    """

    def __init__(self, model: base.Layer, out_sig: Any):
        self.n_in = model.n_in
        self.vocab = find_embedding_vocab(model)
        self.out_dim = last_dim(out_sig)

    def check(self, batch: tuple, ref: Any, where: str) -> None:
        """Raises if ``batch`` does not match ``ref`` (the first batch's signature) or the model."""
        if len(batch) != len(ref):
            raise ValueError(
                f"{where}: a batch has {len(batch)} items but the first batch had {len(ref)} "
                f"(inputs..., targets, weights). Yield batches of one structure."
            )
        # Once per train step: attributes of NumPy arrays instead of np.shape/np.ndim
        # (Python-level dispatch), one ufunc reduce per bound (not ndarray.min/max).
        shapes = []
        for i, (x, r) in enumerate(zip(batch, ref)):
            if isinstance(x, np.ndarray):
                x_shape, x_dtype = x.shape, x.dtype
            else:
                x_shape = tuple(np.shape(x))
                x_dtype = np.asarray(x).dtype if not hasattr(x, "dtype") else np.dtype(x.dtype)
            shapes.append(x_shape)
            if len(x_shape) != len(r.shape):
                raise ValueError(
                    f"{where}: batch item {i} has shape {x_shape} (rank {len(x_shape)}) but "
                    f"the model was set up for rank {len(r.shape)} (first batch: {r.shape}). "
                    f"Yield arrays of the same rank in every batch."
                )
            r_kind = np.dtype(r.dtype).kind
            if x_dtype.kind != r_kind and not (x_dtype.kind in "iu" and r_kind in "iu"):
                raise TypeError(
                    f"{where}: batch item {i} has dtype {x_dtype} but the first batch had "
                    f"{np.dtype(r.dtype)}. Cast it (e.g. .astype(np.int32))."
                )
        leading = {shape[:1] for shape in shapes if shape}
        if len(leading) > 1:
            raise ValueError(
                f"{where}: the items of a batch must share their first (batch) dimension; got "
                f"shapes {shapes}. Yield (inputs, targets, weights) for the same examples."
            )
        n_in = self.n_in
        if len(batch) > n_in + 1 and shapes[n_in + 1] != shapes[n_in]:
            raise ValueError(
                f"{where}: loss weights have shape {shapes[n_in + 1]} but the "
                f"targets have shape {shapes[n_in]}; give one weight per target."
            )
        if self.vocab is not None:
            ids = np.asarray(batch[0])
            if ids.dtype.kind in "iu" and ids.size and (
                    np.minimum.reduce(ids, axis=None) < 0
                    or np.maximum.reduce(ids, axis=None) >= self.vocab):
                raise ValueError(
                    f"{where}: input token ids must be in [0, {self.vocab}) (the model's "
                    f"vocab_size) but range from {ids.min()} to {ids.max()}. Build the model "
                    f"with a larger vocab_size or fix the data."
                )
        if len(batch) > n_in and self.out_dim is not None:
            targets = np.asarray(batch[n_in])
            if targets.dtype.kind in "iu" and targets.size and (
                    np.maximum.reduce(targets, axis=None) >= self.out_dim):
                raise ValueError(
                    f"{where}: target ids must be below {self.out_dim} (the model's output "
                    f"size) but the largest is {targets.max()}. Fix the data or the model size."
                )


def find_embedding_vocab(model: base.Layer) -> int | None:
    """The ``vocab_size`` of the first ``Embedding`` in ``model`` (depth first), or None."""
    return next((layer.vocab_size for layer in base.walk_layers(model)
                 if isinstance(layer, core.Embedding)), None)


def last_dim(sig: Any) -> int | None:
    """The last dimension of the (first) output of a signature, or None for a scalar."""
    first = sig[0] if isinstance(sig, tuple) else sig
    shape = getattr(first, "shape", None)
    return int(shape[-1]) if shape else None

