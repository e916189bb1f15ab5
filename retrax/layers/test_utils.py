"""Helpers for users' own model tests, at Trax's path (``trax.layers.test_utils``).

- ``test_eval_is_deterministic(inp, model_fn)``: two eval-mode models with the
  same weights give the same outputs for the same key.
- ``test_eval_equals_predict(inp, model_fn, ...)``: a predict-mode model fed
  the sequence piece by piece (first ``init_tokens`` positions, then one at a
  time) gives the eval-mode model's outputs at those positions.
- ``test_eval_equals_predict_configs``: the same for several configurations.
- ``test_eval_equals_predict_discrete(model_fn, vocab_size, ...)``: the same
  for a language model fed its own random tokens.
- ``MockTransformerLM(sequence_fn, mode, vocab_size)``: a stand-in for a
  perfectly trained language model, for testing code that decodes.

Each raises ``AssertionError`` on a mismatch (5 decimals, as in Trax). The
weights travel through a checkpoint in a temporary directory (Trax used a
fixed ``/tmp`` file). They are helpers, not tests: pytest does not collect them.

>>> import numpy as np
>>> from retrax import layers as tl
>>> from retrax.layers import test_utils
>>> test_utils.test_eval_is_deterministic(np.ones((2, 3), np.float32),
...                                       lambda mode: tl.Serial(tl.Dense(4), tl.Dropout(0.5, mode=mode)))
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.layers.base import Layer

__all__ = ["test_eval_is_deterministic", "test_eval_equals_predict",
           "test_eval_equals_predict_configs", "test_eval_equals_predict_discrete",
           "MockTransformerLM"]


def _as_list(outputs: Any) -> list[np.ndarray]:
    items = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    return [np.asarray(x) for x in items]


def _same_weights(source: Layer, target: Layer, signature: Any) -> None:
    """Gives ``target`` the weights of ``source`` through a checkpoint, as users load them."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "weights")
        source.save_to_file(path)
        target.init_from_file(path, weights_only=True, input_signature=signature)


def test_eval_is_deterministic(inp: Any, model_fn: Callable[..., Layer],
                               message: str = "") -> None:
    """Checks that eval mode is deterministic: two copies, one key, equal outputs."""
    signature = shapes.signature(inp)
    first, second = model_fn(mode="eval"), model_fn(mode="eval")
    first.init(signature)
    second.init(signature)
    _same_weights(first, second, signature)
    rng = fastmath_random.get_prng(0)
    outs1, outs2 = _as_list(first(inp, rng=rng)), _as_list(second(inp, rng=rng))
    assert len(outs1) == len(outs2), f"Different numbers of outputs.{message}"
    for a, b in zip(outs1, outs2):
        np.testing.assert_array_almost_equal(a, b, decimal=5,
                                             err_msg=f"Non-deterministic.{message}")


def test_eval_equals_predict(inp: Any, model_fn: Callable[..., Layer], seq_axis: int = 1,
                             seq_tensor: int | None = None, init_tokens: int = 3,
                             message: str = "") -> None:
    """Checks that predict mode, fed piece by piece, reproduces eval mode's outputs.

    ``seq_tensor`` picks the input that is fed in pieces when ``inp`` is a
    tuple; the others are fed whole at every call.
    """
    signature = shapes.signature(inp)
    evaluator, predictor = model_fn(mode="eval"), model_fn(mode="predict")
    evaluator.init(signature)
    predictor.init(signature)
    _same_weights(evaluator, predictor, signature)
    rng = fastmath_random.get_prng(0)
    expected = _as_list(evaluator(inp, rng=rng))
    sequence = np.asarray(inp if seq_tensor is None else inp[seq_tensor])
    length = sequence.shape[seq_axis]
    if length < init_tokens + 2:
        raise ValueError(f"test_eval_equals_predict: the sequence axis has {length} positions; "
                         f"it needs at least init_tokens + 2 = {init_tokens + 2}.")
    spans = [(0, init_tokens)] + [(i, i + 1) for i in range(init_tokens, length)]
    for start, end in spans:
        piece = np.take(sequence, np.arange(start, end), axis=seq_axis)
        if seq_tensor is None:
            step_inp = piece
        else:
            step_inp = list(inp)
            step_inp[seq_tensor] = piece
            step_inp = tuple(step_inp)
        got = _as_list(predictor(step_inp, rng=rng))
        assert len(got) == len(expected), f"Different numbers of outputs.{message}"
        for want, have in zip(expected, got):
            np.testing.assert_array_almost_equal(
                np.take(want, np.arange(start, end), axis=seq_axis),
                np.take(have, np.arange(0, end - start), axis=seq_axis), decimal=5,
                err_msg=f"Error on positions {start}:{end} of {length}.{message}")


def test_eval_equals_predict_configs(inp: Any, model_fn: Callable[..., Layer],
                                     configs: Sequence[dict], seq_axis: int = 1,
                                     seq_tensor: int | None = None, message: str = "") -> None:
    """``test_eval_equals_predict`` for each keyword configuration in ``configs``."""
    for config in configs:
        test_eval_equals_predict(inp, functools.partial(model_fn, **config), seq_axis=seq_axis,
                                 seq_tensor=seq_tensor, message=f" Config: {config}.{message}")


def test_eval_equals_predict_discrete(model_fn: Callable[..., Layer], vocab_size: int = 10,
                                      length: int = 5, batch_size: int = 3,
                                      seed: int = 0) -> None:
    """A language model in predict mode, fed random tokens one by one, gives the eval
    model's logits on the growing buffer (both initialized with the same key)."""
    slow = model_fn(mode="eval", vocab_size=vocab_size)
    fast = model_fn(mode="predict", vocab_size=vocab_size)
    rng = fastmath_random.get_prng(0)
    signature = shapes.ShapeDtype((batch_size, 1), np.int32)
    slow.init(signature, rng)
    fast.init(signature, rng)
    tokens = np.random.default_rng(seed)
    buf = np.zeros((batch_size, length), np.int32)
    next_tokens = np.zeros((batch_size, 1), np.int32)
    for index in range(length):
        want = np.asarray(slow(buf, rng=rng))[:, index, :]
        have = np.asarray(fast(next_tokens, rng=rng))[:, 0, :]
        np.testing.assert_array_almost_equal(want, have, decimal=5,
                                             err_msg=f"Error at position {index}.")
        next_tokens = tokens.integers(vocab_size, size=(batch_size, 1)).astype(np.int32)
        buf[:, index] = next_tokens[:, 0]


class MockTransformerLM(Layer):
    """A language model that predicts ``sequence_fn(tokens so far)`` with certainty.

    For testing code that decodes (samplers, ``SerializedModelEvaluation``)
    without training a model: the logits are ``1000 * one_hot(next)``, where
    ``next = sequence_fn(prefix)`` for the prefix of int tokens up to and
    including the current position (``sequence_fn`` gets a 1-D NumPy array).

    - ``'train'``/``'eval'``: ``(B, L)`` tokens -> ``(B, L, vocab_size)``; as a
      real language model it shifts right, so position ``i`` sees
      ``[0, x_0, ..., x_{i-1}]``.
    - ``'predict'``: the state remembers every token fed (up to ``max_len``
      per row); each call appends its ``(B, L)`` tokens and returns the
      prediction after them, ``(B, 1, vocab_size)``.
      ``assert_prediction_buffers_equal`` checks what was fed.

    ``sequence_fn`` runs on the host (``jax.pure_callback``), so the layer
    also works under ``jax.jit``. Tokens outside ``[0, vocab_size)``, float
    tokens and a full buffer are errors.

    >>> import numpy as np
    >>> last_plus_one = lambda seq: (seq[-1] + 1) % 5
    >>> lm = MockTransformerLM(last_plus_one, mode='predict', vocab_size=5)
    >>> _ = lm.init(shapes.ShapeDtype((1, 1), np.int32))
    >>> np.argmax(lm(np.array([[0, 2]])), axis=-1).tolist()
    [[3]]
    >>> lm.assert_prediction_buffers_equal([[0, 2]])
    >>> eval_lm = MockTransformerLM(last_plus_one, mode='eval', vocab_size=5)
    >>> np.argmax(eval_lm(np.array([[3, 4]])), axis=-1).tolist()
    [[1, 4]]
    """

    def __init__(self, sequence_fn: Callable[[np.ndarray], Any], mode: str = "train",
                 vocab_size: int = 2, *, max_len: int = 1024):
        if mode not in ("train", "eval", "predict"):
            raise ValueError(f"MockTransformerLM: mode must be 'train', 'eval' or 'predict'; "
                             f"got {mode!r}.")
        super().__init__(name="MockTransformerLM")
        self._mode = mode
        self._sequence_fn = sequence_fn
        self._vocab_size = int(vocab_size)
        self._max_len = int(max_len)

    def init_weights_and_state(self, input_signature: Any) -> None:
        if self.mode == "predict":
            batch = input_signature.shape[0]
            self.state = (jnp.zeros((batch, self._max_len), jnp.int32), jnp.zeros((), jnp.int32))

    def forward(self, inputs: Any) -> Any:
        x = jnp.asarray(inputs)
        if x.ndim != 2 or not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"MockTransformerLM: expected int tokens of shape (batch, length); "
                             f"got {x.dtype} of shape {tuple(x.shape)}.")
        x = x.astype(jnp.int32)
        batch, length = x.shape
        if self.mode != "predict":
            nxt = jax.pure_callback(self._next_in_eval, jax.ShapeDtypeStruct((batch, length),
                                                                             jnp.int32), x)
            return self._logits(nxt)
        if not self.state:
            raise ValueError("MockTransformerLM: a predict-mode model needs its state; call "
                             "init(ShapeDtype((batch, 1), np.int32)) first.")
        buffer, count = self.state
        nxt = jax.pure_callback(self._next_in_predict, jax.ShapeDtypeStruct((batch, 1), jnp.int32),
                                buffer, count, x)
        self.state = (jax.lax.dynamic_update_slice(buffer, x, (jnp.int32(0), count)),
                      count + length)
        return self._logits(nxt)

    def _logits(self, tokens: Any) -> Any:
        return jax.nn.one_hot(tokens, self._vocab_size, dtype=jnp.float32) * 1000.0

    def _check_tokens(self, x: np.ndarray) -> None:
        if x.size and (x.min() < 0 or x.max() >= self._vocab_size):
            raise ValueError(f"MockTransformerLM: tokens must be in [0, {self._vocab_size}); "
                             f"got values from {x.min()} to {x.max()}.")

    def _predict_one(self, prefix: np.ndarray) -> int:
        token = int(self._sequence_fn(prefix))
        if not 0 <= token < self._vocab_size:
            raise ValueError(f"MockTransformerLM: sequence_fn returned {token}, outside the "
                             f"vocabulary [0, {self._vocab_size}).")
        return token

    def _next_in_eval(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        self._check_tokens(x)
        shifted = np.concatenate([np.zeros((x.shape[0], 1), x.dtype), x], axis=1)
        return np.array([[self._predict_one(row[:end]) for end in range(1, x.shape[1] + 1)]
                         for row in shifted], np.int32).reshape(x.shape)

    def _next_in_predict(self, buffer: Any, count: Any, x: Any) -> np.ndarray:
        buffer, count, x = np.asarray(buffer), int(count), np.asarray(x)
        self._check_tokens(x)
        if count + x.shape[1] > self._max_len:
            raise ValueError(f"MockTransformerLM: the prediction buffer holds {self._max_len} "
                             f"tokens per row; {count} + {x.shape[1]} do not fit. Build it "
                             f"with a larger max_len.")
        return np.array([[self._predict_one(np.concatenate([row[:count], new]))]
                         for row, new in zip(buffer, x)], np.int32).reshape(x.shape[0], 1)

    @property
    def prediction_buffers(self) -> np.ndarray:
        """Every token fed so far in predict mode, ``(B, n_fed)`` (``(B, 0)`` before any)."""
        if self.mode != "predict" or not self.state:
            return np.zeros((0, 0), np.int32)
        buffer, count = self.state
        return np.asarray(buffer)[:, :int(count)]

    def assert_prediction_buffers_equal(self, expected_buffers: Any) -> None:
        """Asserts that the tokens fed so far (per row) equal ``expected_buffers``."""
        expected = np.asarray(expected_buffers)
        actual = self.prediction_buffers
        if actual.size == 0 and expected.size == 0:
            return
        np.testing.assert_array_equal(actual, expected)


for _helper in (test_eval_is_deterministic, test_eval_equals_predict,
                test_eval_equals_predict_configs, test_eval_equals_predict_discrete):
    _helper.__test__ = False  # type: ignore[attr-defined]
