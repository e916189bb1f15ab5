"""Layers that turn observation/action sequences into one token sequence, and back.

Trax's ``trax.rl.serialization_utils`` (the serialized world model; Trax's
policy wrappers are not part of retrax). Shapes: ``B`` batch, ``L`` time
steps, ``R`` tokens per element (a serializer's ``representation_length``).

- ``Serialize(srl)``: ``(B, L, *element)`` -> ``(B, L, R)`` tokens.
- ``Interleave()``: ``(B, L1, R1), (B, L2, R2)`` with ``L1 in (L2, L2 + 1)`` ->
  ``(B, L1*R1 + L2*R2)``: element 1 of x, element 1 of y, element 2 of x, ...;
  the extra x element (an observation after the last action) last.
- ``Deinterleave(x_size, y_size)``: its inverse, also for logits
  ``(B, N, V)`` -> ``(B, L1, x_size, V), (B, L2, y_size, V)``.
- ``RepresentationMask(srl)``: a per-step mask ``(B, L, ...)`` -> ``(B, L, R)``
  (a step counts when any of its entries does).
- ``SignificanceWeights(srl, decay)``: ``(B, L, R)`` mask -> the mask times
  ``decay ** significance`` of each token.
- ``SerializedModel``: a token sequence model wrapped as
  ``(obs, act, obs, mask) -> (obs_logits, obs_tokens, weights)``, ready for a
  weighted cross-entropy loss.

>>> import numpy as np
>>> from retrax.rl import serialization_utils as su, space_serializer, spaces
>>> srl = space_serializer.create(spaces.MultiDiscrete([3, 3]), vocab_size=3)
>>> obs = su.Serialize(srl)(np.array([[[0, 1], [2, 2], [1, 0]]]))
>>> act = su.Serialize(srl)(np.array([[[1, 1], [0, 2]]]))
>>> mixed = su.Interleave()((obs, act))
>>> mixed.tolist()
[[0, 1, 1, 1, 2, 2, 0, 2, 1, 0]]
>>> [a.shape for a in su.Deinterleave(2, 2)(mixed)]
[(1, 3, 2), (1, 2, 2)]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from retrax.layers import base
from retrax.layers.stack_combinators import Drop, Parallel, Serial
from retrax.rl import space_serializer, spaces

__all__ = ["Serialize", "Interleave", "Deinterleave", "RepresentationMask",
           "SignificanceWeights", "SerializedModel", "TimeSeriesModel"]


def Serialize(serializer: space_serializer.SpaceSerializer) -> base.Layer:  # noqa: N802
    """``(B, L, *element)`` -> int32 tokens ``(B, L, R)``, one element at a time."""

    def serialize(x):
        if x.ndim < 2:
            raise ValueError(f"Serialize: expected a batch of sequences (B, L, ...); got shape "
                             f"{tuple(x.shape)}.")
        batch, length = x.shape[:2]
        tokens = serializer.serialize(jnp.reshape(x, (batch * length,) + tuple(x.shape[2:])))
        return jnp.reshape(tokens, (batch, length, serializer.representation_length))

    return base.Fn("Serialize", serialize)


def Interleave() -> base.Layer:  # noqa: N802
    """Two token sequences ``(B, L1, R1), (B, L2, R2)`` -> one ``(B, L1*R1 + L2*R2)``.

    ``L1`` is ``L2`` or ``L2 + 1`` (observations may have one more step than
    actions). Stack: ``(x, y) -> (xy,)``.
    """

    def interleave(x, y):
        if x.ndim != 3 or y.ndim != 3 or x.shape[0] != y.shape[0] \
                or x.shape[1] not in (y.shape[1], y.shape[1] + 1):
            raise ValueError(
                f"Interleave: expected (B, L1, R1) and (B, L2, R2) with L1 == L2 or "
                f"L1 == L2 + 1; got {tuple(x.shape)} and {tuple(y.shape)}.")
        batch, steps = x.shape[0], y.shape[1]
        pairs = jnp.concatenate([x[:, :steps], y.astype(x.dtype)], axis=2)
        tail = jnp.reshape(x[:, steps:], (batch, -1))
        return jnp.concatenate([jnp.reshape(pairs, (batch, -1)), tail], axis=1)

    return base.Fn("Interleave", interleave)


def Deinterleave(x_size: int, y_size: int) -> base.Layer:  # noqa: N802
    """Inverse of ``Interleave``: ``(B, N, ...)`` -> ``(B, L1, x_size, ...), (B, L2, y_size, ...)``.

    ``N`` is ``L2 * (x_size + y_size)`` plus, when ``L1 == L2 + 1``, ``x_size``.
    Stack: ``(xy,) -> (x, y)``.
    """
    period = x_size + y_size

    def deinterleave(xy):
        batch, n = xy.shape[:2]
        rest = tuple(xy.shape[2:])
        extra = n % period
        if extra not in (0, x_size):
            raise ValueError(
                f"Deinterleave({x_size}, {y_size}): a length of {n} is not a whole number of "
                f"({x_size} + {y_size})-token steps, optionally plus one {x_size}-token x.")
        whole = n - extra
        steps = jnp.reshape(xy[:, :whole], (batch, whole // period, period) + rest)
        x, y = steps[:, :, :x_size], steps[:, :, x_size:]
        if extra:
            x = jnp.concatenate([x, xy[:, None, whole:]], axis=1)
        return x, y

    return base.Fn("Deinterleave", deinterleave, n_out=2)


def RepresentationMask(serializer: space_serializer.SpaceSerializer) -> base.Layer:  # noqa: N802
    """A per-step mask ``(B, L, ...)`` -> ``(B, L, R)``: each step's value on all its tokens."""
    length = serializer.representation_length

    def representation_mask(mask):
        per_step = jnp.max(mask, axis=tuple(range(2, mask.ndim))) if mask.ndim > 2 else mask
        return jnp.broadcast_to(per_step[:, :, None], per_step.shape + (length,))

    return base.Fn("RepresentationMask", representation_mask)


def SignificanceWeights(serializer: space_serializer.SpaceSerializer,  # noqa: N802
                        decay: float) -> base.Layer:
    """A token mask ``(B, L, R)`` times ``decay ** significance`` of each token."""
    factors = np.asarray(decay, np.float64) ** serializer.significance_map

    def significance_weights(mask):
        if mask.ndim != 3 or mask.shape[2] != factors.shape[0]:
            raise ValueError(f"SignificanceWeights: expected a mask (B, L, {factors.shape[0]}); "
                             f"got shape {tuple(mask.shape)}.")
        return mask * jnp.asarray(factors, jnp.result_type(mask.dtype, jnp.float32))

    return base.Fn("SignificanceWeights", significance_weights)


class SerializedModel(Serial):
    """A token sequence model run on serialized, interleaved observations and actions.

    Stack: ``(obs, act, obs, mask) -> (obs_logits, obs_tokens, weights)``;
    ``obs`` ``(B, L + 1, ...)`` or ``(B, L, ...)``, ``act`` ``(B, L, ...)``, the
    second ``obs`` is the target, ``mask`` ``(B, L_obs, ...)`` per step.
    ``obs_logits`` are ``(B, L_obs, R_obs, V)``, ``obs_tokens`` ``(B, L_obs,
    R_obs)`` and ``weights`` the mask on every token times ``significance_decay
    ** significance``. The action logits are dropped.

    Args:
      seq_model: ``seq_model(mode=...)`` builds the token model (a language
        model over ``vocab_size`` tokens, e.g. ``functools.partial(TransformerLM,
        vocab_size=...)``).
      observation_serializer / action_serializer: ``space_serializer`` objects.
      significance_decay: in (0, 1]; weight of a token of significance ``k``
        is ``decay ** k``.
      mode: ``'train'`` or ``'eval'``; ``make_predict_model()`` gives the
        predict-mode token model for decoding.
    """

    def __init__(self, seq_model: Callable[..., base.Layer],
                 observation_serializer: space_serializer.SpaceSerializer,
                 action_serializer: space_serializer.SpaceSerializer,
                 significance_decay: float, mode: str = "train"):
        if mode not in ("train", "eval"):
            raise ValueError(f"SerializedModel: mode must be 'train' or 'eval' (use "
                             f"make_predict_model() for decoding); got {mode!r}.")
        weigh = [RepresentationMask(observation_serializer),
                 SignificanceWeights(observation_serializer, significance_decay)]
        super().__init__(
            # (obs, act, obs, mask)
            Parallel(Serialize(observation_serializer), Serialize(action_serializer),
                     Serialize(observation_serializer)),
            # (obs_tokens, act_tokens, obs_tokens, mask)
            Interleave(),
            # (tokens, obs_tokens, mask)
            seq_model(mode=mode),
            # (logits, obs_tokens, mask)
            Deinterleave(observation_serializer.representation_length,
                         action_serializer.representation_length),
            # (obs_logits, act_logits, obs_tokens, mask)
            Parallel(None, Drop(), None, weigh),
            # (obs_logits, obs_tokens, weights)
            name="SerializedModel",
        )
        self._seq_model = seq_model
        self._observation_serializer = observation_serializer
        self._action_serializer = action_serializer

    @property
    def observation_serializer(self) -> space_serializer.SpaceSerializer:
        return self._observation_serializer

    @property
    def action_serializer(self) -> space_serializer.SpaceSerializer:
        return self._action_serializer

    @property
    def seq_model(self) -> base.Layer:
        """The token model inside (its weights are ``seq_model_weights``)."""
        return self.sublayers[2]

    def make_predict_model(self) -> base.Layer:
        """A new predict-mode token model of the same configuration (no weights yet)."""
        return self._seq_model(mode="predict")

    @property
    def seq_model_weights(self) -> Any:
        """The weights of the token model inside."""
        return self.seq_model.weights

    @property
    def seq_model_state(self) -> Any:
        """The state of the token model inside."""
        return self.seq_model.state


def TimeSeriesModel(seq_model: Callable[..., base.Layer], low: float = 0.0,  # noqa: N802
                    high: float = 1.0, precision: int = 2, vocab_size: int = 64,
                    significance_decay: float = 0.7, mode: str = "train") -> SerializedModel:
    """A ``SerializedModel`` for a scalar time series in ``[low, high]``.

    Each value is ``precision`` tokens; the actions are a dummy one-value space
    (the serialized model needs some).
    """
    observations = space_serializer.BoxSpaceSerializer(
        spaces.Box(low=low, high=high, shape=()), vocab_size=vocab_size, precision=precision)
    actions = space_serializer.DiscreteSpaceSerializer(spaces.Discrete(1), vocab_size=1)
    return SerializedModel(functools.partial(seq_model, vocab_size=vocab_size), observations,
                           actions, significance_decay, mode)
