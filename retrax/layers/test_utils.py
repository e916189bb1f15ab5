"""Helpers for users' own model tests, at Trax's path (``trax.layers.test_utils``).

- ``test_eval_is_deterministic(inp, model_fn)``: two eval-mode models with the
  same weights give the same outputs for the same key.
- ``test_eval_equals_predict(inp, model_fn, ...)``: a predict-mode model fed
  the sequence piece by piece (first ``init_tokens`` positions, then one at a
  time) gives the eval-mode model's outputs at those positions.
- ``test_eval_equals_predict_configs``: the same for several configurations.
- ``test_eval_equals_predict_discrete(model_fn, vocab_size, ...)``: the same
  for a language model fed its own random tokens.

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

import numpy as np

from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.layers.base import Layer

__all__ = ["test_eval_is_deterministic", "test_eval_equals_predict",
           "test_eval_equals_predict_configs", "test_eval_equals_predict_discrete"]


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


for _helper in (test_eval_is_deterministic, test_eval_equals_predict,
                test_eval_equals_predict_configs, test_eval_equals_predict_discrete):
    _helper.__test__ = False  # type: ignore[attr-defined]
