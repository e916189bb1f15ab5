"""Trax's mixing stages in training.Loop: Parallel, CountAndSkip and Prefetch resume exactly."""

from __future__ import annotations

import io

import jax
import numpy as np

import retrax as trax
from retrax import data
from retrax import layers as tl
from retrax.data import counters
from retrax.supervised import training


def pipeline():
    def docs(seed, low):
        rng = np.random.default_rng(seed)
        return [rng.integers(low, low + 10, rng.integers(2, 9)).astype(np.int32)
                for _ in range(400)]

    return data.Serial(
        data.Parallel([data.Serial(docs(0, 2)), data.Serial(docs(1, 20), data.Shuffle(8))],
                      counters=(1, 2)),
        data.CountAndSkip("loop_mix"),
        data.Batch(4),
        data.Prefetch(3),
        data.ConcatenateToLMInput(),
        data.AddLossWeights(id_to_mask=0),
    )


def make_loop(stream, output_dir=None):
    task = training.TrainTask(stream, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=3)
    model = tl.Serial(tl.Embedding(32, 8), tl.Dense(32), tl.LogSoftmax())
    return training.Loop(model, task, output_dir=output_dir, stdout=io.StringIO())


def test_loop_resumes_a_mixed_prefetched_counted_pipeline_exactly(tmp_path):
    counters.data_counters.pop("loop_mix", None)
    straight = make_loop(pipeline()())
    straight.run(4)
    counters.data_counters.pop("loop_mix", None)
    first = make_loop(pipeline()(), output_dir=str(tmp_path))
    first.run(3)  # Checkpoints at step 3.
    assert first.step == 3
    counters.data_counters.pop("loop_mix", None)  # A new process.
    stream = pipeline()()
    resumed = make_loop(stream, output_dir=str(tmp_path))
    assert resumed.step == 3 and stream.exact
    resumed.run(1)
    for a, b in zip(jax.tree_util.tree_leaves(straight.model.weights),
                    jax.tree_util.tree_leaves(resumed.model.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The restored position set the counter: at least 4 batches of 4 (the sample batch and
    # 3 steps) before the resumed run went on.
    assert counters.data_counters["loop_mix"] >= 16
