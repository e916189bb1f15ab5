"""``Loop(..., loss_chunk_size=n)``: the output layer and the loss computed in chunks.

A language model's last layer turns every position's activation (width ``D``)
into ``V`` logits; for long sequences or large vocabularies these ``B * L * V``
numbers (and, for the gradient, their softmax) are the largest arrays of a
training step. With a loss chunk size the train step never makes them whole:
the model runs up to its final ``Dense`` (and ``LogSoftmax``), and the rest
runs position-chunk by position-chunk in a ``lax.scan`` whose body is
rematerialized, each chunk adding its weighted cross-entropy to a running sum.
The loss is the same weighted mean as the task's loss layer (up to the order
of the float additions).

This is Trax's chunked loss (which it built only for its memory-efficient
trainer) for any model of the form ``Serial(..., Dense(V))`` or
``Serial(..., Dense(V), LogSoftmax())`` (``TransformerLM``, ``ReformerLM``) and
a weighted-mean cross-entropy loss (``CrossEntropyLoss``,
``CrossEntropyLossWithLogSoftmax``, ``WeightedCategoryCrossEntropy``). The
training view shares the model's layers, so its weights and state are the
model's; evaluation runs the whole model as before.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp

from retrax.layers import base
from retrax.layers.core import Dense
from retrax.layers.losses import cross_entropy_settings
from retrax.layers.pass_context import Pass, new_pass
from retrax.layers.stack_combinators import Serial

__all__ = ["LossChunkedModel", "CHUNKABLE_LOSSES"]

CHUNKABLE_LOSSES = ("CrossEntropyLoss", "CrossEntropyLossWithLogSoftmax",
                    "WeightedCategoryCrossEntropy")
_POSITIONWISE_TAIL = ("LogSoftmax",)


def _loss_settings(loss_layer: base.Layer) -> tuple[float | None, float]:
    """``(label_smoothing, cutoff)`` of a chunkable loss layer, or ValueError."""
    settings = cross_entropy_settings(loss_layer)
    if settings is None:
        raise ValueError(
            f"Loop: loss_chunk_size works with the cross-entropy losses {CHUNKABLE_LOSSES}; "
            f"this task's loss is {loss_layer.name}. Use one of them or loss_chunk_size=0.")
    return settings


class LossChunkedModel(base.Layer):
    """The training view of ``model`` with its output layer and loss computed in chunks.

      - inputs: the model's inputs, targets, weights
      - outputs: the weighted mean cross-entropy (a scalar)
      - weights and state: those of ``model`` (the same sublayers)

    ``model`` must be a ``Serial`` ending in ``Dense`` (optionally followed by
    ``LogSoftmax``) with one output; ``chunk_size`` positions (over batch and
    length together) are computed at a time.
    """

    def __init__(self, model: base.Layer, loss_layer: base.Layer, chunk_size: int):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral) \
                or chunk_size < 1:
            raise ValueError(f"Loop: loss_chunk_size must be an int >= 0; got {chunk_size!r}.")
        self._label_smoothing, self._cutoff = _loss_settings(loss_layer)
        layers = list(model.sublayers)
        names = [layer.name for layer in layers]
        k = 1
        while k <= len(layers) and names[-k] in _POSITIONWISE_TAIL:
            k += 1
        if not isinstance(model, Serial) or model.n_out != 1 or k >= len(layers) \
                or not isinstance(layers[-k], Dense):
            raise ValueError(
                f"Loop: loss_chunk_size needs a model that is a Serial ending in Dense "
                f"(optionally followed by LogSoftmax) with one output, as TransformerLM and "
                f"ReformerLM are; {model.name_with_arity} ends in {names[-3:]}. Use "
                f"loss_chunk_size=0 for this model.")
        self._n_tail = k
        self._chunk = int(chunk_size)
        self._model_n_in = model.n_in
        self._head = Serial(*layers[:-k])
        super().__init__(n_in=model.n_in + 2, n_out=1, name=f"LossChunked{model.name}",
                         sublayers=layers)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        items = base.as_stack(xs)
        inputs, targets, loss_weights = items[:-2], items[-2], items[-1]
        k = self._n_tail
        # The head's leaves draw the same keys as in the whole model (they come first).
        hidden, head_new_state = ctx.apply_layer(self._head, base.pack(inputs),
                                                 tuple(weights[:-k]), tuple(state[:-k]), rng)
        loss = self._chunked_loss(hidden, targets, loss_weights, tuple(weights[-k:]),
                                  tuple(state[-k:]))
        return loss, tuple(head_new_state) + tuple(state[-k:])

    def _chunked_loss(self, hidden, targets, loss_weights, tail_weights, tail_state):
        targets = jnp.asarray(targets)
        if jnp.shape(hidden)[:-1] != targets.shape:
            raise ValueError(
                f"{self.name}: the model's activations have shape {tuple(jnp.shape(hidden))} "
                f"but the targets {tuple(targets.shape)}; pass one integer target per "
                f"position.")
        loss_weights = jnp.broadcast_to(jnp.asarray(loss_weights, jnp.float32), targets.shape)
        n, chunk = targets.size, self._chunk
        n_chunks = -(-n // chunk)
        pad = n_chunks * chunk - n
        h = jnp.reshape(hidden, (n, hidden.shape[-1]))
        t = jnp.reshape(targets, (n,))
        w = jnp.reshape(loss_weights, (n,))
        if pad:  # padded positions get weight 0
            h = jnp.pad(h, ((0, pad), (0, 0)))
            t = jnp.pad(t, (0, pad))
            w = jnp.pad(w, (0, pad))
        h = h.reshape(n_chunks, chunk, h.shape[-1])
        t = t.reshape(n_chunks, chunk)
        w = w.reshape(n_chunks, chunk)
        tail = self.sublayers[-self._n_tail:]
        ls, cutoff = self._label_smoothing, self._cutoff

        @jax.checkpoint
        def chunk_sum(h_c, t_c, w_c):
            with new_pass() as inner:
                y = h_c
                for layer, lw, lst in zip(tail, tail_weights, tail_state):
                    y, _ = inner.apply_layer(layer, y, lw, lst, None)
            logp = jax.nn.log_softmax(y.astype(jnp.float32), axis=-1)
            dist = jax.nn.one_hot(t_c, logp.shape[-1], dtype=logp.dtype)
            if ls:
                dist = dist * (1.0 - ls) + ls / logp.shape[-1]
            ce = -jnp.sum(dist * logp, axis=-1)
            if cutoff > 0.0:
                ce = jnp.maximum(ce, cutoff) - cutoff
            return jnp.sum(jnp.where(w_c == 0, 0.0, ce * w_c))

        def body(total, xs):
            return total + chunk_sum(*xs), None

        total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (h, t, w))
        denominator = jnp.sum(w)
        return jnp.where(denominator == 0, 0.0, total / jnp.where(denominator == 0, 1.0,
                                                                  denominator))
