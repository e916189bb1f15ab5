"""Trax's ``Inputs`` bundle: train/eval stream functions plus example shapes.

Trax's ``Trainer`` and its toy input functions (``data.sequence_copy_inputs``,
``addition_inputs``, ``sine_inputs``, ...) hand data around as an ``Inputs``:
functions ``n_devices -> iterator of batches`` for training, evaluation and
evaluation on training data, and the shapes and dtypes of a training batch.
With ``training.Loop`` pass ``inputs.train_stream(1)`` as a task's
``labeled_data``.

>>> import numpy as np
>>> batches = lambda n_devices: iter([(np.zeros((4, 3), np.int32), np.ones((4,), np.int32))] * 2)
>>> inputs = Inputs(batches)
>>> inputs.input_shape, inputs.target_shape, inputs.input_dtype
((3,), (), dtype('int32'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from retrax.data.mixing import Parallel
from retrax.data.stream import Serial

__all__ = ["Inputs", "make_inputs", "make_additional_stream", "make_parallel_stream"]

StreamFn = Callable[[int], Iterator[Any]]


class Inputs:
    """Stream functions for training and evaluation, with a training batch's shapes.

    Args:
      train_stream: ``n_devices -> iterator`` of training batches (tuples of
        arrays with a leading batch axis).
      eval_stream: the same for evaluation; default ``train_stream``.
      train_eval_stream: the same for evaluation on training data; default
        ``train_stream``. (Trax's ``train_eval_stream()`` ignores it and
        returns the training stream; here it is used.)

    Building it draws one batch from ``train_stream(1)`` for the shapes.
    """

    def __init__(self, train_stream: StreamFn, eval_stream: StreamFn | None = None,
                 train_eval_stream: StreamFn | None = None):
        if not callable(train_stream):
            raise ValueError(
                "Trax Inputs should be initialized with a function. Did you forget the "
                "n_devices argument? If your inputs do not use it, try lambda _: [your-inputs]."
            )
        for what, fn in (("eval_stream", eval_stream), ("train_eval_stream", train_eval_stream)):
            if fn is not None and not callable(fn):
                raise ValueError(f"Inputs: {what} must be a function n_devices -> iterator; got "
                                 f"{type(fn).__name__}.")
        self._train_stream = train_stream
        self._eval_stream = eval_stream or train_stream
        self._train_eval_stream = train_eval_stream or train_stream
        try:
            example = next(iter(train_stream(1)))
        except StopIteration:
            raise ValueError("Inputs: train_stream(1) yielded no batch.") from None
        parts = example if isinstance(example, (tuple, list)) else (example,)
        arrays = [np.asarray(x) for x in parts]
        self._input_shape = tuple(arrays[0].shape)[1:]
        self._input_dtype = arrays[0].dtype
        self._target_shape = tuple(arrays[-1].shape)[1:]
        self._target_dtype = arrays[-1].dtype
        self._example_shape = [x.shape for x in arrays]
        self._example_dtype = [x.dtype for x in arrays]

    def train_stream(self, n_devices: int) -> Iterator[Any]:
        return self._train_stream(n_devices)

    def eval_stream(self, n_devices: int) -> Iterator[Any]:
        return self._eval_stream(n_devices)

    def train_eval_stream(self, n_devices: int) -> Iterator[Any]:
        return self._train_eval_stream(n_devices)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """A training batch's input shape without the batch axis."""
        return self._input_shape

    @property
    def target_shape(self) -> tuple[int, ...]:
        """A training batch's target (last component) shape without the batch axis."""
        return self._target_shape

    @property
    def input_dtype(self) -> np.dtype:
        return self._input_dtype

    @property
    def target_dtype(self) -> np.dtype:
        return self._target_dtype

    @property
    def example_shape_dtype(self) -> tuple[list[tuple[int, ...]], list[np.dtype]]:
        """The shapes and dtypes of every component of a training batch."""
        return self._example_shape, self._example_dtype


def make_inputs(train_stream: Any, eval_stream: Any = None) -> Inputs:
    """``Inputs`` from two streams (lists of stream functions are chained with ``data.Serial``)."""
    if isinstance(train_stream, (list, tuple)):
        train_stream = Serial(*train_stream)()
    if isinstance(eval_stream, (list, tuple)):
        eval_stream = Serial(*eval_stream)()
    eval_fn = None if eval_stream is None else (lambda _: eval_stream)
    return Inputs(train_stream=lambda _: train_stream, eval_stream=eval_fn)


def make_additional_stream(stream: Sequence[Any]) -> Any:
    """The stream of ``data.Serial(*stream)`` (Trax's helper for extra tasks in gin configs)."""
    return Serial(*stream)()


def make_parallel_stream(streams: Sequence[Any], counters: Sequence[Any] | None = None) -> Any:
    """The stream of ``data.Parallel(streams, counters)``."""
    return Parallel(streams, counters=counters)()
