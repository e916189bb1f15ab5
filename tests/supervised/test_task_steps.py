"""Each task's loss and metric layers are set up from that task's own sample batch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from retrax import layers as tl
from retrax import optimizers
from retrax.supervised import training


def _batches(length: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        x = rng.integers(1, 8, size=(4, length)).astype(np.int32)
        yield x, x, np.ones_like(x, np.float32)


def _model():
    return tl.Serial(tl.Embedding(8, 6), tl.Dense(8), tl.LogSoftmax())


def test_eval_batches_of_another_length_evaluate_with_their_own_shapes():
    train = training.TrainTask(_batches(6, 0), tl.CrossEntropyLoss(), optimizers.SGD(0.1))
    # Eval batches are longer than training batches: padding per batch makes that normal.
    eval_task = training.EvalTask(_batches(10, 1), [tl.CrossEntropyLoss(), tl.Accuracy()],
                                  n_eval_batches=1)
    model = _model()
    loop = training.Loop(model, train, eval_tasks=[eval_task], eval_at=lambda n: n == 2)
    loop.run(2)
    loss_hist = loop.history.get("eval", "metrics/CrossEntropyLoss")
    assert [step for step, _ in loss_hist] == [2]
    # The same value by hand: the trained weights on the eval stream's second batch
    # (EvalTask takes the first as its sample batch, as Trax does).
    stream = _batches(10, 1)
    next(stream)
    x, y, w = next(stream)
    logp = np.asarray(loop.eval_model(x))
    by_hand = -np.sum(np.take_along_axis(logp, y[..., None], -1)[..., 0] * w) / w.sum()
    assert loss_hist[0][1] == pytest.approx(by_hand, rel=1e-5)


def test_eval_metrics_of_another_batch_size_and_length():
    train = training.TrainTask(_batches(5, 0), tl.CrossEntropyLoss(), optimizers.SGD(0.1))

    def odd_batches():
        for n in itertools.count(1):
            x = np.full((3, 7), n % 7 + 1, np.int32)
            yield x, x, np.ones_like(x, np.float32)

    eval_task = training.EvalTask(odd_batches(), [tl.Accuracy()], n_eval_batches=2)
    loop = training.Loop(_model(), train, eval_tasks=[eval_task], eval_at=lambda n: True)
    loop.run(1)
    (step, acc), = loop.history.get("eval", "metrics/Accuracy")
    # By hand: the eval batches after the sample batch are n = 2 and 3.
    by_hand = [np.mean(np.argmax(np.asarray(loop.eval_model(x)), -1) == x)
               for x in (np.full((3, 7), n % 7 + 1, np.int32) for n in (2, 3))]
    assert step == 1 and acc == pytest.approx(np.mean(by_hand), abs=1e-6)


def _dense_task():
    def batches():
        rng = np.random.default_rng(0)
        while True:
            x = rng.normal(size=(4, 1)).astype(np.float32)
            yield x, 2 * x, np.ones_like(x)

    return training.TrainTask(batches(), tl.L2Loss(), optimizers.Adam(0.01))


@pytest.mark.parametrize("write_trax", [True, False])
def test_a_larger_model_resumes_from_a_smaller_ones_checkpoint(tmp_path, write_trax):
    # Trax's test_restores_from_smaller_model: a layer appended after the run.
    import io

    small = tl.Serial(tl.Dense(1))
    loop = training.Loop(small, [_dense_task()], checkpoint_at=lambda n: n % 2 == 0,
                         output_dir=str(tmp_path), write_trax_checkpoint=write_trax,
                         stdout=io.StringIO())
    loop.run(2)
    loop.close()
    trained = [np.asarray(a) for a in small.weights[0]]
    big = tl.Serial(tl.Dense(1), tl.Dense(1))
    out = io.StringIO()
    loop2 = training.Loop(big, [_dense_task()], output_dir=str(tmp_path),
                          write_trax_checkpoint=write_trax, stdout=out)
    assert loop2.step == 2
    for a, b in zip(big.weights[0], trained):
        np.testing.assert_array_equal(a, b)
    assert "holds the first 2 of this model's 4 weight arrays" in out.getvalue()
    loop2.run(1)  # Trains on, with a fresh optimizer for the larger model.
    assert loop2.step == 3
    loop2.close()
    # A model whose first arrays differ is still refused.
    with pytest.raises(Exception, match="(?i)shape|model"):
        training.Loop(tl.Serial(tl.Dense(2), tl.Dense(1)), [_dense_task()],
                      output_dir=str(tmp_path), write_trax_checkpoint=write_trax,
                      stdout=io.StringIO())


def test_memory_efficient_trainer_is_accepted_and_adasum_is_refused():
    import io
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: see Loop's docstring
        loop = training.Loop(tl.Serial(tl.Dense(1)), [_dense_task()],
                             use_memory_efficient_trainer=True, stdout=io.StringIO())
    loop.run(2)
    assert loop.step == 2
    with pytest.raises(NotImplementedError, match="adasum is not supported"):
        training.Loop(tl.Serial(tl.Dense(1)), [_dense_task()], adasum=True)
