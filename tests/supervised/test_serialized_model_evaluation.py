"""callbacks.SerializedModelEvaluation: what it feeds, its error values, and in a Loop."""

from __future__ import annotations

import functools
import io

import numpy as np
import pytest

from retrax import layers as tl
from retrax import optimizers, shapes
from retrax.layers import test_utils
from retrax.rl import serialization_utils as su
from retrax.rl import space_serializer, spaces
from retrax.supervised import callbacks, training


def _sum_of_last(n, vocab):
    return lambda seq: int(np.sum(seq[-n:]) % vocab)


def _trajectory(rule, n_entries, n_steps, seed=0, vocab=10):
    """Random actions; each observation entry follows ``rule`` over the tokens before it."""
    rng = np.random.default_rng(seed)
    act = rng.integers(vocab, size=(n_steps, n_entries))
    obs = [rng.integers(vocab, size=n_entries)]
    for a in act[:-1]:
        context = list(obs[-1]) + list(a)
        for _ in range(n_entries):
            context.append(rule(np.array(context)))
        obs.append(np.array(context[-n_entries:]))
    return np.array(obs)[None], act[None]


def _eval_task(obs, act, mask=None):
    mask = np.ones(obs.shape[:2], np.float32) if mask is None else mask

    def batches():
        while True:
            yield obs, act, obs, mask

    return training.EvalTask(batches(), [])  # data only, as Trax's tests build it


def _callback(rule, space, vocab, task, **kwargs):
    srl = space_serializer.create(space, vocab)
    seq_model = functools.partial(test_utils.MockTransformerLM, rule, vocab_size=vocab)
    model = su.SerializedModel(seq_model, srl, srl, 0.7)
    return callbacks.SerializedModelEvaluation(None, model=model, eval_task=task,
                                               accelerate_model=False, **kwargs)


@pytest.mark.parametrize("contexts,horizons", [((2,), (1,)), ((1, 3), (1, 2))])
def test_feeds_start_then_observations_and_actions_in_turn(contexts, horizons):
    rule = _sum_of_last(2, 10)
    obs, act = _trajectory(rule, 1, 5)
    obs, act = obs[..., 0], act[..., 0]  # Discrete: one integer per step
    cb = _callback(rule, spaces.Discrete(10), 10, _eval_task(obs, act),
                   context_lengths=contexts, horizon_lengths=horizons)
    metrics = cb.evaluate(None)
    assert set(metrics) == {f"pred_error/context_{c}/horizon_{h}"
                            for c in contexts for h in horizons}
    assert all(v == 0.0 for v in metrics.values())
    fed = np.zeros(11, np.int64)
    fed[1::2], fed[2::2] = obs[0], act[0]
    # The last context's run: start symbol, then obs/act pairs up to the last
    # predicted observation (the prediction after it is never fed).
    cb.predict_model.assert_prediction_buffers_equal([fed[:2 * (contexts[-1] + horizons[-1])]])


def test_a_perfect_model_of_two_token_observations_has_zero_error():
    rule = _sum_of_last(4, 100)
    obs, act = _trajectory(rule, 2, 5, vocab=100)
    cb = _callback(rule, spaces.MultiDiscrete([100, 100]), 100, _eval_task(obs, act),
                   horizon_lengths=(4,))
    assert cb.evaluate(None) == {"pred_error/context_1/horizon_4": 0.0}


def test_error_is_the_masked_mean_squared_error_of_the_predicted_observation():
    # A model that always predicts 0, two examples; example 2 is masked at step 2.
    obs = np.array([[3, 2, 4, 1], [1, 5, 2, 2]])
    act = np.zeros((2, 4), np.int64)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 1]], np.float32)
    cb = _callback(lambda seq: 0, spaces.Discrete(10), 10, _eval_task(obs, act, mask),
                   context_lengths=(1,), horizon_lengths=(1, 2), n_steps=2)
    metrics = cb.evaluate(None)
    # horizon 1 predicts obs[:, 1]: (4 + 25) / 2; horizon 2 obs[:, 2]: only example 1, 16.
    assert metrics == {"pred_error/context_1/horizon_1": pytest.approx(14.5),
                       "pred_error/context_1/horizon_2": pytest.approx(16.0)}


def test_eval_at_forms_and_refusals():
    rule = _sum_of_last(2, 10)
    obs, act = _trajectory(rule, 1, 3)
    task = _eval_task(obs[..., 0], act[..., 0])
    every_5 = _callback(rule, spaces.Discrete(10), 10, task, eval_at=5)
    assert [s for s in range(1, 13) if every_5.call_at(s)] == [1, 6, 11]
    listed = _callback(rule, spaces.Discrete(10), 10, task, eval_at=[2, 4])
    assert [s for s in range(1, 6) if listed.call_at(s)] == [2, 4]
    with pytest.raises(TypeError, match="eval_at must be an int"):
        _callback(rule, spaces.Discrete(10), 10, task, eval_at=2.5)
    with pytest.raises(ValueError, match="pass both model="):
        callbacks.SerializedModelEvaluation(None, eval_task=task)
    too_long = _callback(rule, spaces.Discrete(10), 10, task, context_lengths=(2,),
                         horizon_lengths=(2,))
    with pytest.raises(ValueError, match="needs 4 observations and 3 actions"):
        too_long.evaluate(None)


@pytest.mark.slow  # ~7 s: compiles a Loop's train and eval steps
def test_in_a_loop_logs_pred_error_to_history_and_output():
    vocab = 8
    srl = space_serializer.create(spaces.Box(0.0, 1.0, ()), vocab_size=vocab, precision=1)
    model = su.SerializedModel(
        lambda mode: tl.Serial(tl.Embedding(vocab, 4), tl.Dense(vocab), tl.LogSoftmax()),
        srl, srl, 0.7)

    def batches(seed):
        rng = np.random.default_rng(seed)
        while True:
            x = rng.uniform(size=(4, 3)).astype(np.float32)
            yield x, rng.uniform(size=(4, 3)).astype(np.float32), x, np.ones_like(x)

    out = io.StringIO()
    loop = training.Loop(
        model, training.TrainTask(batches(0), tl.CrossEntropyLoss(), optimizers.Adam(0.01)),
        eval_tasks=[training.EvalTask(batches(1), [])],  # data for the callback only
        callbacks=[functools.partial(callbacks.SerializedModelEvaluation, eval_at=2)],
        stdout=out, progress_bar=False)
    loop.run(3)
    logged = loop.history.get("srl_eval", "pred_error/context_1/horizon_1")
    assert [step for step, _ in logged] == [1, 3]
    # A one-digit box of 8 bins: predictions are bin lower edges, errors below 1.
    assert all(0.0 <= value < 1.0 for _, value in logged)
    assert "srl_eval pred_error/context_1/horizon_1" in out.getvalue()
    assert loop.history.modes == ["srl_eval", "train"]  # the metric-less eval task logs nothing


def test_consume_sequence_advances_the_model_state():
    lm = test_utils.MockTransformerLM(_sum_of_last(2, 10), mode="predict", vocab_size=10)
    lm.init(shapes.ShapeDtype((2, 1), np.int32))
    callbacks.consume_sequence(lm, 0, np.array([[4, 5], [6, 7]]))
    callbacks.consume_sequence(lm, np.array([[1], [2]]), np.zeros((2, 0), np.int32))
    lm.assert_prediction_buffers_equal([[0, 4, 5, 1], [0, 6, 7, 2]])
