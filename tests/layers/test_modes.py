"""Mode is a concept: ``Layer.mode``, ``tl.with_mode``, and behaviour decided when a layer runs."""

from __future__ import annotations

import io

import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import shapes
from retrax.supervised import training


def positional_dropout_model(mode="train"):
    return tl.Serial(tl.Embedding(16, 8), tl.PositionalEncoding(max_len=8, dropout=0.5, mode=mode),
                     tl.Dense(16), tl.LogSoftmax())


def batches():
    rng = np.random.default_rng(0)
    while True:
        x = rng.integers(0, 16, (4, 8)).astype(np.int32)
        yield x, x, np.ones((4, 8), np.float32)


def test_mode_is_public_and_read_only():
    model = positional_dropout_model()
    assert model.mode == "train" and model.sublayers[1].mode == "train"
    assert positional_dropout_model("eval").sublayers[1].mode == "eval"
    with pytest.raises(AttributeError):
        model.mode = "eval"


def test_with_mode_shares_weights_and_switches_every_layer():
    model = positional_dropout_model()
    x = np.arange(16, dtype=np.int32).reshape(2, 8) % 16
    model.init(shapes.signature(x))
    evaluating = tl.with_mode(model, "eval")
    assert model.mode == "train" and evaluating.mode == "eval"
    assert all(layer.mode in (None, "eval") for layer in _walk(evaluating))
    assert evaluating.weights[0] is model.weights[0]  # shared, not copied
    # Eval is deterministic; train drops (rng given), so the two differ.
    first, again = evaluating(x), evaluating(x)
    np.testing.assert_array_equal(first, again)
    expected = positional_dropout_model("eval")
    expected.init(shapes.signature(x))
    expected.weights = model.weights
    np.testing.assert_allclose(first, expected(x), rtol=1e-6)
    y_train, _ = model.pure_fn(x, model.weights, model.state, trax.fastmath.random.get_prng(1))
    assert not np.allclose(y_train, first)


def test_with_mode_refuses_unknown_modes_and_predict_switches():
    model = positional_dropout_model()
    with pytest.raises(ValueError, match="'test'"):
        tl.with_mode(model, "test")
    with pytest.raises(ValueError, match="predict"):
        tl.with_mode(model, "predict")


def test_positional_dropout_does_not_drop_in_the_loops_evals():
    # The Loop evaluates an eval-mode copy; before, PositionalEncoding decided its
    # dropout when it was built, so the copy still dropped and evals were random.
    data = batches()
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=2)
    evals = training.EvalTask(data, [tl.CrossEntropyLoss()], n_eval_batches=1)
    loop = training.Loop(positional_dropout_model(), task, eval_tasks=[evals],
                         stdout=io.StringIO())
    loop.run(2)
    x = next(batches())[0]
    out1, out2 = loop.eval_model(x), loop.eval_model(x)
    np.testing.assert_array_equal(out1, out2)
    reference = tl.with_mode(loop.model, "eval")
    np.testing.assert_allclose(out1, reference(x), rtol=1e-6)
    plain = positional_dropout_model("eval")
    plain.init(shapes.signature(x))
    plain.weights = loop.model.weights
    np.testing.assert_allclose(out1, plain(x), rtol=1e-6)


def _walk(layer):
    yield layer
    for sub in layer.sublayers:
        yield from _walk(sub)
