"""Callbacks run by the training ``Loop`` around its steps (Trax's ``trax.supervised.callbacks``).

Pass callback *classes* (or instances) to ``Loop(..., callbacks=[...])``; the
Loop builds each class with itself as the only argument. At every step ``n``
(counting from 1) the Loop calls ``on_step_begin(n)`` before the train step and
``on_step_end(n)`` after that step's evals and checkpoint, on each callback
whose ``call_at(n)`` is true, in the order given.

>>> import numpy as np
>>> from retrax import layers as tl, optimizers
>>> from retrax.supervised import callbacks, training
>>> class Steps(callbacks.TrainingStepCallback):
...     seen = []
...     def call_at(self, step):
...         return step % 2 == 0
...     def on_step_end(self, step):
...         self.seen.append((step, self.loop.step))
>>> def batches():
...     while True:
...         yield np.ones((2, 3), np.float32), np.zeros((2, 1), np.float32), np.ones((2, 1), np.float32)
>>> task = training.TrainTask(batches(), tl.L2Loss(), optimizers.SGD(0.1))
>>> loop = training.Loop(tl.Dense(1), task, callbacks=[Steps], progress_bar=False,
...                      stdout=open('/dev/null', 'w'))
>>> loop.run(4)
>>> Steps.seen
[(2, 2), (4, 4)]
"""

from __future__ import annotations

from typing import Any

__all__ = ["TrainingStepCallback"]


class TrainingStepCallback:
    """Base class of Loop callbacks: override ``call_at``, ``on_step_begin``, ``on_step_end``.

    ``loop`` is the ``training.Loop`` running it, also readable as
    ``self.loop``: its public API (``step``, ``history``, ``model``,
    ``eval_model``, ``tasks``, ``output_dir``, ``checkpoint_at``,
    ``save_checkpoint``, ``run_evals``, ...) is what a callback works with.
    By default a callback runs at every step and does nothing.
    """

    def __init__(self, loop: Any):
        self._loop = loop

    @property
    def loop(self) -> Any:
        """The ``training.Loop`` this callback belongs to."""
        return self._loop

    def call_at(self, step: int) -> bool:
        """Whether the hooks run at ``step`` (default: every step)."""
        del step
        return True

    def on_step_begin(self, step: int) -> None:
        """Runs before the train step ``step``."""

    def on_step_end(self, step: int) -> None:
        """Runs after step ``step``, its evals and its checkpoint."""
