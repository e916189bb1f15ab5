"""Time-bin position features (Trax's ``TimeBinPositionalEncoding``), no weights.

Positions are cut into bins of ``time_bin_length``. Position ``t`` in bin
``n = t // time_bin_length`` gets three features: ``1 / (1 + n)``, its
fraction of the way through the bin ``(t % time_bin_length) /
time_bin_length`` and the bin's parity ``n % 2``. They *replace* the last
three features of the input (the rest pass unchanged).

>>> import numpy as np
>>> pe = TimeBinPositionalEncoding(time_bin_length=2, mode='eval')
>>> np.asarray(pe(np.full((1, 3, 4), 7.0, np.float32))[0]).tolist()
[[7.0, 1.0, 0.0, 0.0], [7.0, 1.0, 0.5, 0.0], [7.0, 0.5, 0.0, 1.0]]
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from retrax.layers.attention_checks import check_positive_int
from retrax.layers.base import Layer
from retrax.layers.core import check_mode

__all__ = ["TimeBinPositionalEncoding"]

N_FEATURES = 3


def time_bin_features(positions: Any, time_bin_length: int) -> Any:
    """``positions.shape + (3,)``: ``1 / (1 + bin)``, fraction within the bin, bin parity."""
    bin_index, within = jnp.divmod(positions, time_bin_length)
    return jnp.stack([1.0 / (1.0 + bin_index), within / time_bin_length,
                      (bin_index % 2).astype(jnp.float32)], axis=-1).astype(jnp.float32)


class TimeBinPositionalEncoding(Layer):
    """Replaces the last 3 features by time-bin features (1 -> 1): ``(B, L, D) -> (B, L, D)``.

    With ``D < 3`` the output is the last ``D`` features. ``'train'`` and
    ``'eval'`` number the positions ``0 .. L-1``; in ``'predict'`` mode the
    state is each example's next position ``(B,)``; a call of length ``L``
    covers the next ``L`` (Trax's took one token per call).
    ``time_bin_length`` should be the ``bin_length`` of the time-bin
    attention that reads the features.
    """

    num_features = N_FEATURES

    def __init__(self, time_bin_length: int, mode: str = "train"):
        name = type(self).__name__
        super().__init__(n_in=1, n_out=1)
        self._mode = check_mode(name, mode)
        self._time_bin_length = check_positive_int(name, "time_bin_length", time_bin_length)

    def init_weights_and_state(self, input_signature):
        if self._mode == "predict":
            self.state = jnp.zeros((input_signature.shape[0],), jnp.int32)

    def forward(self, x):
        name = self.name
        if jnp.ndim(x) != 3:
            raise ValueError(f"{name}: expected (batch, length, d_model) activations; got "
                             f"shape {tuple(jnp.shape(x))}.")
        if self._mode == "predict":
            if isinstance(self.state, tuple) or jnp.shape(self.state) != (x.shape[0],):
                raise ValueError(
                    f"{name} in 'predict' mode needs a state of one position per example "
                    f"({x.shape[0]}); call init with the batch size used for decoding.")
            positions = self.state[:, None] + jnp.arange(x.shape[1], dtype=jnp.int32)
            features = time_bin_features(positions, self._time_bin_length)
            self.state = self.state + x.shape[1]
        else:
            features = time_bin_features(jnp.arange(x.shape[1]), self._time_bin_length)
            features = jnp.broadcast_to(features[None], x.shape[:2] + (N_FEATURES,))
        # With d_model < 3 only the last d_model features remain (Trax's behaviour).
        y = jnp.concatenate([x[..., :-N_FEATURES], features.astype(x.dtype)], axis=-1)
        return y[..., -x.shape[-1]:]
