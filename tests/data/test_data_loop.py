"""retrax.data pipelines in training.Loop: saved data position, exact resume, prefetch."""

from __future__ import annotations

import io
import threading

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import checkpoints, data
from retrax import layers as tl
from retrax.supervised import training


def pipeline(seed=0):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(2, 32, rng.integers(1, 12)).astype(np.int32) for _ in range(3000)]
    return data.Serial(seqs, data.PackSequences(8), data.Shuffle(16, seed=seed), data.Batch(4),
                       data.ConcatenateToLMInput(), data.AddLossWeights(id_to_mask=0))


def small_model():
    return tl.Serial(tl.Embedding(32, 8), tl.Dense(32), tl.LogSoftmax())


def make_loop(train_data, eval_data=None, output_dir=None, **kw):
    task = training.TrainTask(train_data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=3)
    evals = [training.EvalTask(eval_data, [tl.CrossEntropyLoss()])] if eval_data else None
    return training.Loop(small_model(), task, eval_tasks=evals, output_dir=output_dir,
                         stdout=io.StringIO(), **kw)


def weights(loop):
    return [np.asarray(w) for w in jax.tree_util.tree_leaves(loop.model.weights)]


def test_resume_restores_the_data_position_instead_of_redrawing(tmp_path):
    straight = make_loop(pipeline()())
    straight.run(8)

    first = make_loop(pipeline()(), output_dir=str(tmp_path))
    first.run(6)
    ckpt = checkpoints.read_native(checkpoints.read_bytes(
        str(tmp_path / "checkpoint_00000006.safetensors")))
    extra = ckpt["meta"]["extra"]
    assert extra["consumed"] == {"0": 6}
    state = extra["data_state"]["0"]
    assert state["yielded"] == 7  # The sample batch plus 6 steps.
    assert state["stages"][:2] == ["Iterable", "PackSequences"]

    stream = pipeline()()
    resumed = make_loop(stream, output_dir=str(tmp_path))
    assert resumed.step == 6
    assert stream.yielded == 7 and stream.state_dict()["nodes"] == state["nodes"]
    resumed.run(2)
    for a, b in zip(weights(straight), weights(resumed)):
        np.testing.assert_array_equal(a, b)


def test_prefetch_keeps_the_order_of_a_shared_train_and_eval_stream():
    runs = []
    for prefetch in (True, False):
        stream = pipeline(seed=1)()
        loop = make_loop(stream, stream, prefetch=prefetch)
        loop.run(7)
        runs.append((weights(loop), loop.history.get("eval", "metrics/CrossEntropyLoss")))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_array_equal(a, b)
    assert runs[0][1] == runs[1][1]


def test_prefetch_draws_ahead_in_a_background_thread():
    drawn = []
    each_draw = threading.Semaphore(0)

    def batches():
        rng = np.random.default_rng(0)
        while True:
            drawn.append(threading.current_thread().name)
            each_draw.release()
            x = rng.integers(0, 32, (4, 6)).astype(np.int32)
            yield x, x, np.ones((4, 6), np.float32)

    loop = make_loop(batches())
    loop.run(3)
    # Steps 1 and 2 draw the next step's batch ahead in the background; the last step
    # of a run draws nothing ahead, so when run() returns every draw is done.
    for _ in range(4):
        assert each_draw.acquire(timeout=60)
    # The sample batch (main thread) and the 3 steps' batches.
    assert drawn == ["MainThread"] + ["retrax-prefetch"] * 3
    loop.run(2)
    assert drawn == ["MainThread"] + ["retrax-prefetch"] * 5


def test_prefetch_reraises_data_errors_at_the_step_that_needs_the_batch():
    def failing():
        for i in range(3):
            x = np.full((2, 4), i, np.int32)
            yield x, x, np.ones((2, 4), np.float32)
        raise RuntimeError("bad record 3")

    loop = make_loop(failing())
    with pytest.raises(RuntimeError, match="bad record 3"):
        loop.run(5)
    assert loop.step == 2  # Batches 1 and 2 trained; the sample batch was batch 0.

    def finite():
        for i in range(3):
            x = np.full((2, 4), i, np.int32)
            yield x, x, np.ones((2, 4), np.float32)

    loop = make_loop(finite())
    with pytest.raises(ValueError, match="ran out at step 3 after 2 batches"):
        loop.run(5)
