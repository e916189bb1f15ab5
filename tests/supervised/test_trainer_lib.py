"""trainer_lib.train: Trax's one-call entry point builds and runs a Loop."""

from __future__ import annotations

import functools
import io
import os

import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax.data import Inputs
from retrax.supervised import callbacks, lr_schedules, trainer_lib

BATCH, LENGTH, VOCAB = 8, 3, 4


def batches(n_devices, seed=0):
    del n_devices
    rng = np.random.RandomState(seed)
    while True:
        x = rng.randint(0, VOCAB, size=(BATCH, LENGTH))
        weights = np.ones((BATCH, LENGTH), np.float32)
        weights[:, -1] = 0.0  # the last position does not count
        yield x, x, weights


def tiny_inputs():
    return Inputs(batches, functools.partial(batches, seed=1))


BUILT: list = []  # (mode, model) of each model tiny_model built


def tiny_model(mode):
    model = tl.Serial(tl.Embedding(VOCAB, 8), tl.Dense(VOCAB), tl.LogSoftmax())
    BUILT.append((mode, model))
    return model


class Recorder(callbacks.TrainingStepCallback):
    seen: list = []

    def call_at(self, step):
        return step % 2 == 0

    def on_step_begin(self, step):
        Recorder.seen.append(("begin", step))

    def on_step_end(self, step):
        Recorder.seen.append(("end", step))


def test_train_runs_evaluates_checkpoints_and_calls_callbacks(tmp_path):
    Recorder.seen = []
    BUILT.clear()
    out = str(tmp_path / "run")
    loop = trainer_lib.train(out, model=tiny_model, inputs=tiny_inputs, steps=4, eval_steps=2,
                             eval_frequency=2, callbacks=[Recorder], stdout=io.StringIO())
    assert loop.step == 4
    assert Recorder.seen == [("begin", 2), ("end", 2), ("begin", 4), ("end", 4)]
    written = os.listdir(out)
    assert "checkpoint_00000004.safetensors" in written and "model.pkl.gz" in written
    # Trax's defaults: Adafactor, multifactor(), WeightedCategoryCrossEntropy, five metrics.
    task = loop.tasks[0]
    assert isinstance(task.optimizer, trax.optimizers.Adafactor)
    assert task.learning_rate(7) == pytest.approx(float(lr_schedules.multifactor()(7)))
    assert task.loss_name == "WeightedCategoryCrossEntropy"
    assert loop.eval_tasks[0].metric_names == [n for n, _ in trainer_lib.default_metrics()]
    assert loop.eval_tasks[0].n_eval_batches == 2
    steps = [s for s, _ in loop.history.get("eval", "metrics/loss")]
    assert steps == [1, 2, 4]
    # The sum of a batch's weights: 8 rows x 2 counted positions, exactly.
    assert [v for _, v in loop.history.get("eval", "metrics/weights_per_batch_per_core")] == \
        [16.0, 16.0, 16.0]
    loss = [v for _, v in loop.history.get("eval", "metrics/loss")]
    nlp = [v for _, v in loop.history.get("eval", "metrics/neg_log_perplexity")]
    np.testing.assert_allclose(nlp, -np.asarray(loss), rtol=1e-6)
    assert [m for m, _ in BUILT] == ["train", "eval"]
    assert loop.model is BUILT[0][1] and loop.eval_model is BUILT[1][1]
    loop.close()

    # Called again with the same total: resumes at step 4 and trains nothing.
    again = trainer_lib.train(out, model=tiny_model, inputs=tiny_inputs(), steps=4,
                              eval_steps=2, eval_frequency=2, stdout=io.StringIO())
    assert again.step == 4
    np.testing.assert_array_equal(np.asarray(again.host_weights()[1][0]),
                                  np.asarray(loop.host_weights()[1][0]))
    again.close()


def test_metrics_override_no_eval_and_nothing_to_train():
    # steps=0: the Loop is built and returned without a step (as Trax, "already reached").
    out = io.StringIO()
    loop = trainer_lib.train(None, model=tiny_model, inputs=tiny_inputs(), steps=0,
                             eval_steps=0, optimizer=trax.optimizers.SGD(0.1),
                             lr_schedule_fn=functools.partial(lr_schedules.constant, 0.1),
                             stdout=out)
    assert loop.step == 0 and loop.eval_tasks == []
    assert "already reached the total training steps 0" in out.getvalue()
    assert isinstance(loop.tasks[0].optimizer, trax.optimizers.SGD)
    loop = trainer_lib.train(None, model=tiny_model, inputs=tiny_inputs(), steps=0,
                             metrics={"acc": tl.WeightedCategoryAccuracy()},
                             lr_schedule_fn=functools.partial(lr_schedules.constant, 0.1),
                             stdout=io.StringIO())
    assert loop.eval_tasks[0].metric_names == ["acc"]
    assert loop.tasks[0].learning_rate(1) == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"use_loop": False}, NotImplementedError, "legacy Trainer class"),
    ({"n_weights_shards": 2}, ValueError, "sharding='fsdp'"),
    ({"permanent_checkpoint_frequency": 5, "permanent_checkpoints_at": [3]}, ValueError,
     "only one of permanent_checkpoint_frequency"),
    ({"inputs": None}, ValueError, r"pass inputs=\.\.\."),
    ({"inputs": object()}, TypeError, r"train_stream\(n_devices\)"),
    ({"model": tiny_model("train")}, TypeError, "function of mode"),
])
def test_refusals(kwargs, error, match):
    args = {"model": tiny_model, "inputs": tiny_inputs(), "steps": 1, **kwargs}
    with pytest.raises(error, match=match):
        trainer_lib.train(None, **args)
