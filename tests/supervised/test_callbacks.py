"""Loop callbacks (Trax's TrainingStepCallback protocol) and History.get on unknown names."""

from __future__ import annotations

import os

import numpy as np

from retrax import layers as tl
from retrax import optimizers
from retrax.supervised import callbacks, training
from retrax.supervised.history import History


def _task():
    def batches():
        rng = np.random.default_rng(0)
        while True:
            x = rng.normal(size=(4, 3)).astype(np.float32)
            yield x, x.sum(-1, keepdims=True), np.ones((4, 1), np.float32)

    return training.TrainTask(batches(), tl.L2Loss(), optimizers.SGD(0.05),
                              n_steps_per_checkpoint=2)


class Recorder(callbacks.TrainingStepCallback):
    """Records every hook call with what the loop shows at that moment."""

    built = []

    def __init__(self, loop):
        super().__init__(loop)
        self.calls = []
        Recorder.built.append(self)

    def call_at(self, step):
        return step != 3

    def on_step_begin(self, step):
        self.calls.append(("begin", step, self.loop.step))

    def on_step_end(self, step):
        out = self.loop.output_dir
        ckpt = os.path.exists(os.path.join(out, f"checkpoint_{step:08d}.safetensors"))
        evals = [s for s, _ in self.loop.history.get("train", "metrics/L2Loss")]
        self.calls.append(("end", step, self.loop.step, ckpt, step in evals))


def test_a_callback_class_is_built_with_the_loop_and_called_around_each_step(tmp_path):
    loop = training.Loop(tl.Dense(1), _task(), output_dir=str(tmp_path),
                         callbacks=[Recorder], progress_bar=False, stdout=open(os.devnull, "w"))
    loop.run(4)
    (cb,) = Recorder.built
    assert cb.loop is loop
    assert cb.calls == [
        ("begin", 1, 0), ("end", 1, 1, True, True),
        ("begin", 2, 1), ("end", 2, 2, True, True),
        # Step 3 is skipped by call_at.
        ("begin", 4, 3), ("end", 4, 4, True, True),
    ]


def test_a_callback_instance_is_used_as_given():
    seen = []

    class Counter(callbacks.TrainingStepCallback):
        def on_step_end(self, step):
            seen.append(step)

    counter = Counter(loop=None)
    loop = training.Loop(tl.Dense(1), _task(), callbacks=[counter], progress_bar=False,
                         stdout=open(os.devnull, "w"))
    loop.run(3)
    assert seen == [1, 2, 3]


def test_history_get_of_unknown_mode_or_metric_is_empty_and_adds_nothing():
    h = History()
    h.append("train", "metrics/loss", 1, 2.0)
    assert h.get("eval", "metrics/loss") == []
    assert h.get("train", "metrics/accuracy") == []
    assert h.modes == ["train"] and h.metrics_for_mode("train") == ["metrics/loss"]
    assert h.get("train", "metrics/loss") == [(1, 2.0)]


def test_early_stopping_and_custom_logging_through_public_extension_points():
    import io

    class EarlyStop(callbacks.TrainingStepCallback):
        def call_at(self, step):
            return self.loop.checkpoint_at(step)

        def on_step_end(self, step):
            losses = self.loop.history.get("train", "metrics/L2Loss")
            if losses and losses[-1][1] < 10.0:
                self.loop.log_summary({"best": losses[-1][1]}, log_prefix="early")
                self.loop.stop()

    class LoggingLoop(training.Loop):
        def run_evals(self, summary_writers=None):
            super().run_evals(summary_writers)
            self.log_step("custom line")

    out = io.StringIO()
    loop = LoggingLoop(tl.Dense(1), _task(), callbacks=[EarlyStop], progress_bar=False,
                       stdout=out)
    loop.run(50)
    # _task's loss starts below 10, so the first checkpoint step (1) stops the run.
    assert loop.step == 1
    text = out.getvalue()
    assert "Step      1: custom line" in text and "Stopped early" in text
    (step, best), = loop.history.get("early", "metrics/best")
    assert step == 1 and best == loop.history.get("train", "metrics/L2Loss")[-1][1]
    assert f"Step      1: early {'best'.rjust(len('L2Loss'))} | " in text
    loop.run(2)  # A new run goes on.
    assert loop.step == 2
