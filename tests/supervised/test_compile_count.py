"""How many XLA programs a Loop compiles before its first step returns.

Every eager ``jnp`` op on a new shape compiles a program of its own (on CPU
each costs ~10-30 ms, more on a busy machine), so setup work done with eager
ops (``jnp.asarray`` of each initial weight, ...) adds up before training
starts. These tests count the compilations (deterministic, unlike a clock):
the numbers are upper bounds; lower them when a change removes compilations.
Shapes are unusual (vocab 13, width 12) so programs compiled by other tests
in the same process are not reused.
"""

from __future__ import annotations

import io
import logging

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax.supervised import training

VOCAB, WIDTH, BATCH, LENGTH = 13, 12, 4, 5


class _CompileCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.programs: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Compiling "):
            self.programs.append(message.split(" with ")[0][len("Compiling "):])


@pytest.fixture
def compile_counter():
    counter = _CompileCounter()
    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(counter)
    try:
        with jax.log_compiles(True):
            yield counter
    finally:
        jax_logger.removeHandler(counter)


def _batches():
    rng = np.random.default_rng(0)
    while True:
        x = rng.integers(0, VOCAB, (BATCH, LENGTH)).astype(np.int32)
        yield x, x, np.ones((BATCH, LENGTH), np.float32)


def _model():
    return tl.Serial(tl.Embedding(VOCAB, WIDTH), tl.Dense(WIDTH), tl.Relu(),
                     tl.Dense(WIDTH), tl.Dense(VOCAB))


def test_layer_init_compiles_nothing_for_numpy_initial_values(compile_counter):
    # Dense and Embedding draw their initial values with NumPy; handing them to the
    # device is a transfer, not a program per weight shape (jnp.asarray compiled one).
    model = _model()
    weights, _ = model.init(trax.shapes.ShapeDtype((BATCH, LENGTH), np.int32))
    assert compile_counter.programs == []
    leaves = jax.tree_util.tree_leaves(weights)
    assert len(leaves) == 7 and all(isinstance(w, jax.Array) for w in leaves)


def test_loop_setup_and_first_step_compile_few_programs(compile_counter):
    model = _model()
    task = training.TrainTask(labeled_data=_batches(), loss_layer=tl.CrossEntropyLoss(),
                              optimizer=trax.optimizers.Adam(1e-3))
    loop = training.Loop(model, task, output_dir=None, stdout=io.StringIO())
    setup = list(compile_counter.programs)
    loop.run(1)
    first_step = compile_counter.programs[len(setup):]
    # Setup: what remains is Adam's tree_init (optax's zeros_like per distinct weight
    # shape, 5 here, its step count and hyperparameters); the model's initial weights
    # compile nothing (they compiled 7 more programs, one per weight shape and dtype).
    assert len(setup) <= 9, setup
    assert not any(name == "jit(stage)" for name in setup), setup
    # The first step: the train step itself, nothing else.
    assert first_step == ["jit(step)"], first_step
    loop.run(3)
    assert compile_counter.programs[len(setup) + 1:] == []  # later steps reuse it
    # The Loop's eval-mode copy gets the trained weights when it is read (not at every
    # run's end): the very arrays of the model.
    trained = jax.tree_util.tree_leaves(loop.model.weights)
    assert loop.eval_model is not loop.model
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(loop.eval_model.weights),
                                      trained))
    assert len(trained) == 7
