"""Trax's synthetic toy inputs: copying, addition, sinusoids and random batches.

Each function returns an :class:`~retrax.data.bundle.Inputs` whose
``train_stream(n_devices)`` / ``eval_stream(n_devices)`` make endless batch
generators, with Trax's signatures, layouts and padding. Every generator is
seeded (keyword-only ``seed``, default 0; training and evaluation use
different streams of it): calling ``train_stream`` twice gives the same
batches. Token batches are int32 and loss weights float32 (Trax: int64 and
float64 or int).

>>> inputs = sequence_copy_inputs(vocab_size=10, batch_size=2, train_length=4,
...                               eval_min_length=2, eval_max_length=4, pad_to_multiple=8)
>>> x, y, w = next(inputs.train_stream(1))
>>> x.shape[0], x.shape[1] % 8, (x == y).all()
(2, 0, np.True_)
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from retrax.data.batching import pad_to_max_dims
from retrax.data.bundle import Inputs

__all__ = [
    "random_inputs", "sequence_copy_inputs", "simple_sequence_copy_inputs",
    "addition_input_stream", "addition_inputs", "sine_inputs", "lower_endian_to_number",
    "number_to_lower_endian", "random_number_lower_endian",
]

Batch = tuple[np.ndarray, ...]


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}; got {value!r}.")
    return int(value)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one stream (0 train, 1 eval) of ``seed``."""
    return np.random.default_rng([_int(seed, "seed", 0), stream])


def _pad_to_multiple_of(x: np.ndarray, multiple: int, axis: int) -> np.ndarray:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, -x.shape[axis] % multiple)
    return np.pad(x, widths)


# --------------------------------------------------------------------------
# Copy tasks
# --------------------------------------------------------------------------


def _copy_batches(lengths: list[int], vocab_size: int, batch_size: int, reverse: bool,
                  pad_to_multiple: int, rng: np.random.Generator) -> Iterator[Batch]:
    zero = np.zeros((batch_size, 1), np.int32)
    while True:
        w_length = int(rng.choice(lengths))
        w = rng.integers(1, vocab_size - 1, (batch_size, w_length), dtype=np.int32)
        answer = np.flip(w, axis=1) if reverse else w
        x = np.concatenate([zero, w, zero, answer], axis=1)
        weights = np.concatenate([np.zeros((batch_size, w_length + 2), np.float32),
                                  np.ones((batch_size, w_length), np.float32)], axis=1)
        x = _pad_to_multiple_of(x, pad_to_multiple, 1)
        yield x, x, _pad_to_multiple_of(weights, pad_to_multiple, 1)


def sequence_copy_inputs(vocab_size: int, batch_size: int, train_length: int,
                         eval_min_length: int, eval_max_length: int, reverse: bool = False,
                         pad_to_multiple: int = 32, *, seed: int = 0) -> Inputs:
    """Copying ``w``: rows ``0 w 0 w`` (``0 w 0 reversed(w)`` with ``reverse``).

    ``w`` has tokens in ``[1, vocab_size - 2]``; its length is drawn per batch
    from ``1 .. train_length - 1`` for training and ``eval_min_length ..
    eval_max_length - 1`` for evaluation (Trax's ranges). Loss weights are 1 on
    the second ``w``; rows are zero-padded to a multiple of ``pad_to_multiple``.
    """
    vocab_size = _int(vocab_size, "sequence_copy_inputs: vocab_size", 3)
    batch_size = _int(batch_size, "sequence_copy_inputs: batch_size", 1)
    train_length = _int(train_length, "sequence_copy_inputs: train_length", 2)
    eval_min_length = _int(eval_min_length, "sequence_copy_inputs: eval_min_length", 0)
    eval_max_length = _int(eval_max_length, "sequence_copy_inputs: eval_max_length",
                           eval_min_length + 1)
    pad_to_multiple = _int(pad_to_multiple, "sequence_copy_inputs: pad_to_multiple", 1)
    train_lengths = list(range(1, train_length))
    eval_lengths = list(range(eval_min_length, eval_max_length))

    def stream(lengths: list[int], which: int) -> Any:
        return lambda _: _copy_batches(lengths, vocab_size, batch_size, reverse,
                                       pad_to_multiple, _rng(seed, which))

    return Inputs(train_stream=stream(train_lengths, 0), eval_stream=stream(eval_lengths, 1))


def _plain_copy_batches(lengths: list[int], vocab_size: int, batch_size: int,
                        pad_to_multiple: int, rng: np.random.Generator) -> Iterator[Batch]:
    while True:
        length = int(rng.choice(lengths))
        x = rng.integers(1, vocab_size - 1, (batch_size, length), dtype=np.int32)
        weights = np.ones((batch_size, length), np.float32)
        x = _pad_to_multiple_of(x, pad_to_multiple, 1)
        yield x, x, _pad_to_multiple_of(weights, pad_to_multiple, 1)


def simple_sequence_copy_inputs(vocab_size: int, batch_size: int, train_length: int,
                                eval_min_length: int, eval_max_length: int,
                                pad_to_multiple: int = 32, *, seed: int = 0) -> Inputs:
    """Rows ``w`` (inputs = targets, weights 1): lengths ``1 .. train_length`` for training,
    ``eval_min_length .. eval_max_length`` for evaluation."""
    vocab_size = _int(vocab_size, "simple_sequence_copy_inputs: vocab_size", 3)
    batch_size = _int(batch_size, "simple_sequence_copy_inputs: batch_size", 1)
    train_length = _int(train_length, "simple_sequence_copy_inputs: train_length", 1)
    eval_min_length = _int(eval_min_length, "simple_sequence_copy_inputs: eval_min_length", 1)
    eval_max_length = _int(eval_max_length, "simple_sequence_copy_inputs: eval_max_length",
                           eval_min_length)
    pad_to_multiple = _int(pad_to_multiple, "simple_sequence_copy_inputs: pad_to_multiple", 1)

    def stream(lengths: list[int], which: int) -> Any:
        return lambda _: _plain_copy_batches(lengths, vocab_size, batch_size, pad_to_multiple,
                                             _rng(seed, which))

    return Inputs(train_stream=stream(list(range(1, train_length + 1)), 0),
                  eval_stream=stream(list(range(eval_min_length, eval_max_length + 1)), 1))


# --------------------------------------------------------------------------
# Addition
# --------------------------------------------------------------------------


def lower_endian_to_number(digits: Sequence[int], base: int) -> int:
    """The number whose base-``base`` digits, least significant first, are ``digits``."""
    return sum(int(d) * base ** i for i, d in enumerate(digits))


def number_to_lower_endian(n: int, base: int) -> list[int]:
    """The base-``base`` digits of ``n >= 0``, least significant first (``[0]`` for 0)."""
    _int(base, "number_to_lower_endian: base", 2)
    digits = [n % base]
    while n >= base:
        n //= base
        digits.append(n % base)
    return digits


def random_number_lower_endian(length: int, base: int,
                               rng: np.random.Generator | None = None) -> list[int]:
    """A random ``length``-digit number as lower-endian digits (its top digit is not 0
    unless ``length`` is 1). Without ``rng`` it draws from fresh OS entropy."""
    rng = np.random.default_rng() if rng is None else rng
    if length == 1:
        return [int(rng.integers(base))]
    return [int(d) for d in rng.integers(base, size=length - 1)] + [int(rng.integers(1, base))]


def _addition_example(base: int, min_length: int, max_length: int, encdec: bool,
                      rng: np.random.Generator) -> Batch:
    half_min = (min_length - 1) // 2
    while True:
        l1 = int(rng.integers((max_length - half_min + 1) // 2)) + half_min
        l2 = int(rng.integers(max_length - l1 - 1)) + 1
        n1 = random_number_lower_endian(l1, base, rng)
        n2 = random_number_lower_endian(l2, base, rng)
        total = lower_endian_to_number(n1, base) + lower_endian_to_number(n2, base)
        question = n1 + [base] + n2  # `base` is "+"; tokens are digits + 1 (0 pads).
        answer = number_to_lower_endian(total, base)
        if encdec:
            x = np.array(question, np.int32) + 1
            y = np.array(answer, np.int32) + 1
            if max(len(x), len(y)) > max_length:
                continue  # Too long for the encoder-decoder layout: draw again (as Trax).
            return x, y, np.ones(len(y), np.float32)
        start = base + 2  # <S>
        x = np.array([start] + [d + 1 for d in question] + [start] + [d + 1 for d in answer],
                     np.int32)
        weights = np.concatenate([np.zeros(len(question) + 2, np.float32),
                                  np.ones(len(answer), np.float32)])
        return x, x, weights


def addition_input_stream(vocab_size: int, batch_size: int, min_length: int, max_length: int,
                          pad_to_multiple: int = 32, encdec: bool = False, *,
                          seed: int = 0, stream: int = 0) -> Iterator[Batch]:
    """Endless batches of the addition task ``<S> x + y <S> (x + y)``, digits lower-endian.

    Digits are in base ``vocab_size - 3``: token 0 pads, ``1 .. base`` are
    digits + 1, ``base + 1`` is "+" and ``base + 2`` is <S>. Language-model
    layout: ``(x, x, weights)`` with weights 1 on the sum; ``encdec=True``:
    ``(question, sum, ones)``. Each component is zero-padded per batch to a
    multiple of ``pad_to_multiple``. ``min_length`` and ``max_length`` (>= 3)
    bound the question's length as in Trax. ``stream`` picks one of the
    seed's independent streams.
    """
    vocab_size = _int(vocab_size, "addition_input_stream: vocab_size (base 2 and up, plus pad, "
                                  "'+' and <S>)", 5)
    batch_size = _int(batch_size, "addition_input_stream: batch_size", 1)
    if not isinstance(min_length, (int, np.integer)) or not isinstance(
            max_length, (int, np.integer)) or min_length < 3 or max_length < 3:
        raise ValueError(f"Maximum/minimum length must be at least 3; got min_length="
                         f"{min_length!r}, max_length={max_length!r}.")
    if min_length > max_length:
        raise ValueError(f"addition_input_stream: min_length={min_length} is above "
                         f"max_length={max_length}.")
    pad_to_multiple = _int(pad_to_multiple, "addition_input_stream: pad_to_multiple", 1)
    rng, base = _rng(seed, stream), vocab_size - 3

    def batches() -> Iterator[Batch]:
        while True:
            examples = [_addition_example(base, min_length, max_length, encdec, rng)
                        for _ in range(batch_size)]
            yield tuple(pad_to_max_dims(list(parts), boundary=pad_to_multiple,
                                        strict_pad_on_len=True) for parts in zip(*examples))

    return batches()


def addition_inputs(vocab_size: int, batch_size: int, train_length: int, eval_min_length: int,
                    eval_max_length: int, pad_to_multiple: int = 32, encdec: bool = False, *,
                    seed: int = 0) -> Inputs:
    """The addition task (:func:`addition_input_stream`): questions of length 3 to
    ``train_length`` for training, ``eval_min_length`` to ``eval_max_length`` for
    evaluation. Both ranges are checked here (Trax checks at the first batch)."""
    for lo, hi in ((3, train_length), (eval_min_length, eval_max_length)):
        addition_input_stream(vocab_size, batch_size, lo, hi, pad_to_multiple, encdec, seed=seed)

    def stream(lo: int, hi: int, which: int) -> Any:
        return lambda _: addition_input_stream(vocab_size, batch_size, lo, hi, pad_to_multiple,
                                               encdec, seed=seed, stream=which)

    return Inputs(train_stream=stream(3, train_length, 0),
                  eval_stream=stream(eval_min_length, eval_max_length, 1))


# --------------------------------------------------------------------------
# Sinusoids and random batches
# --------------------------------------------------------------------------


def _sine_batches(batch_size: int, length: int, max_phase: float, min_period: float,
                  max_period: float, rng: np.random.Generator) -> Iterator[Batch]:
    t = np.arange(length)
    while True:
        phase = rng.uniform(0, max_phase, (batch_size, 1))
        period = np.exp(rng.uniform(np.log(min_period), np.log(max_period), (batch_size, 1)))
        obs = np.sin((t - phase) / period).astype(np.float32)
        yield obs, np.zeros(obs.shape, np.int32), obs, np.ones(obs.shape, np.float32)


def sine_inputs(batch_size: int, length: int, max_phase: float = 2 * math.pi,
                min_period: float = 0.1, max_period: float = 10.0, *, seed: int = 0) -> Inputs:
    """Sinusoids ``sin((t - phase) / period)``, phase uniform in ``[0, max_phase)`` and
    period log-uniform in ``[min_period, max_period)``; batches ``(observations,
    actions, observations, mask)`` of shape ``(batch_size, length)``, actions 0 and mask 1."""
    batch_size = _int(batch_size, "sine_inputs: batch_size", 1)
    length = _int(length, "sine_inputs: length", 1)
    if not 0 < min_period <= max_period:
        raise ValueError(f"sine_inputs: need 0 < min_period <= max_period; got {min_period!r}, "
                         f"{max_period!r}.")

    def stream(which: int) -> Any:
        return lambda _: _sine_batches(batch_size, length, max_phase, min_period, max_period,
                                       _rng(seed, which))

    return Inputs(train_stream=stream(0), eval_stream=stream(1))


def _random_array(rng: np.random.Generator, shape: Sequence[int], dtype: Any,
                  value_range: Sequence[Any]) -> np.ndarray:
    low, high = value_range
    if np.issubdtype(np.dtype(dtype), np.floating):
        return rng.uniform(low, high, shape).astype(dtype)
    return rng.integers(low, high, shape, endpoint=True).astype(dtype)  # Both ends, as Trax.


def random_inputs(input_shape: Sequence[int] | None = None, input_dtype: Any = np.int32,
                  input_range: Sequence[Any] = (0, 255), output_shape: Sequence[int] | None = None,
                  output_dtype: Any = np.int32, output_range: Sequence[Any] = (0, 9), *,
                  seed: int = 0) -> Inputs:
    """Random batches ``(inputs, targets)`` for debugging; the shapes include the batch axis.

    Integers are uniform in ``[low, high]`` (both included, as Trax), floats in
    ``[low, high)``.
    """
    if input_shape is None or output_shape is None:
        raise ValueError("random_inputs: give input_shape and output_shape (with the batch axis).")

    def stream(which: int) -> Any:
        def batches(_: int) -> Iterator[Batch]:
            rng = _rng(seed, which)
            while True:
                yield (_random_array(rng, input_shape, input_dtype, input_range),
                       _random_array(rng, output_shape, output_dtype, output_range))
        return batches

    return Inputs(train_stream=stream(0), eval_stream=stream(1))
