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
        n_in = self.n_in
        if len(batch) > n_in + 1 and np.shape(batch[n_in + 1]) != np.shape(batch[n_in]):
            raise ValueError(
                f"{where}: loss weights have shape {tuple(np.shape(batch[n_in + 1]))} but the "
                f"targets have shape {tuple(np.shape(batch[n_in]))}; give one weight per target."
            )
        if self.vocab is not None:
            ids = np.asarray(batch[0])
            if ids.dtype.kind in "iu" and ids.size and (ids.min() < 0 or ids.max() >= self.vocab):
                raise ValueError(
                    f"{where}: input token ids must be in [0, {self.vocab}) (the model's "
                    f"vocab_size) but range from {ids.min()} to {ids.max()}. Build the model "
                    f"with a larger vocab_size or fix the data."
                )
        if len(batch) > n_in and self.out_dim is not None:
            targets = np.asarray(batch[n_in])
            if targets.dtype.kind in "iu" and targets.size and targets.max() >= self.out_dim:
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

