"""The Loop's host work: steps stay pipelined and cheap in Python; a run's end stores the
weights without re-checking them; the model and eval model see the trained weights.

Python calls (counted with ``sys.setprofile`` in the Loop's thread) stand in for host
time: they do not depend on the machine's load. The bounds sit between what the Loop needs
today on this one-layer model (57 calls per plain step, 1,509 at a run's end, 263 more at
a log step) and what it took before (84, 2,777 and 1,904: batch checks through np.shape,
the weights setter's read-and-compare walk at every run's end, a ``jax.device_get`` per
loss and statistic), so they catch a per-step host sync or tree walk coming back.
"""

from __future__ import annotations

import io
import sys

import jax
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import shapes
from retrax.supervised import loop_io, training
from retrax.supervised.loop_models import LoopModels


def _batches():
    rng = np.random.default_rng(0)
    ones = np.ones((4, 6), np.float32)
    fixed = [rng.integers(1, 16, (4, 6)).astype(np.int32) for _ in range(3)]
    i = 0
    while True:
        yield fixed[i % 3], fixed[i % 3], ones
        i += 1


def _loop(**kw):
    model = trax.models.TransformerLM(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2,
                                      max_len=16, mode="train")
    task = training.TrainTask(_batches(), tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=kw.pop("every", 100))
    return training.Loop(model, task, output_dir=None, stdout=io.StringIO(), **kw)


def _calls(fn) -> int:
    n = 0

    def count(frame, event, arg):
        nonlocal n
        if event in ("call", "c_call"):
            n += 1

    sys.setprofile(count)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return n


def test_plain_steps_and_a_runs_end_take_few_python_calls():
    loop = _loop()
    loop.run(2)  # compiles; steps 1 (a log step) and 2
    short, long = _calls(lambda: loop.run(3)), _calls(lambda: loop.run(23))
    per_step = (long - short) / 20  # steps 6..25 minus 3..5: no log, no checkpoint
    per_run = short - 3 * per_step
    assert per_step < 72, per_step  # was 84
    # The run's end stores weights and state in the layer tree: one walk each, not the
    # setter's read + compare + store.
    assert per_run < 2000, per_run  # was 2,777
    jax.block_until_ready(loop.host_weights())
    assert loop.step == 28


def test_a_log_step_reads_the_losses_back_in_few_calls():
    loop = _loop(every=20)
    loop.run(1)
    base = _calls(lambda: loop.run(19))  # steps 2..20: step 20 logs 19 losses and stats
    plain = _calls(lambda: loop.run(18))  # steps 21..38: no log
    # jax.device_get took ~30 calls per array (3 per step: 1,904 more here); now one each.
    assert base - plain < 800, (base, plain)
    hist = loop.history.get("train", "training/gradients_l2")
    assert [s for s, _ in hist] == [1, 20] and all(np.isfinite(v) and v > 0 for _, v in hist)


def test_host_array_equals_device_get():
    values = [jax.numpy.float32(x) for x in (1.5, np.nan, -2.0)]
    got = loop_io.host_array(values)
    want = np.asarray(jax.device_get(values))
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_assign_weights_tree_stores_what_the_setter_stores():
    dense = tl.Dense(3)
    model = tl.Serial(dense, tl.Relu(), dense, tl.Dense(2))  # the shared Dense once
    model.init(shapes.ShapeDtype((1, 3)))
    new = jax.tree_util.tree_map(lambda w: w + 1.0, model.weights)
    other = tl.Serial(dense, tl.Relu(), dense, tl.Dense(2))
    model.assign_weights_tree(new)
    got = jax.tree_util.tree_leaves(model.weights)
    other.weights = new
    want = jax.tree_util.tree_leaves(other.weights)
    assert len(got) == len(want) == 4
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(dense.weights[0], np.asarray(new[0][0]))


def test_loop_models_sync_own_eval_copy_when_read_and_a_given_one_at_once():
    x = shapes.ShapeDtype((2, 4))
    model = tl.Serial(tl.Dense(4), tl.Dropout(0.5, mode="train"))
    model.init(x)
    own = LoopModels(model, None, x)
    given_model = tl.Serial(tl.Dense(4), tl.Dropout(0.5, mode="eval"))
    given = LoopModels(model, given_model, x)
    assert given_model.initialized and own.eval_layer.mode == "eval"
    new_w = jax.tree_util.tree_map(lambda w: w * 0 + 7.0, model.weights)
    given.sync(new_w, model.state)
    np.testing.assert_array_equal(given_model.weights[0][0], 7.0)  # at once
    own.sync(new_w, model.state, checked=False)
    np.testing.assert_array_equal(model.weights[0][0], 7.0)
    later = jax.tree_util.tree_map(lambda w: w * 0 + 9.0, model.weights)
    # Read after a sync: the copy gets the weights the Loop holds when it is read.
    np.testing.assert_array_equal(own.eval_model(later, model.state).weights[0][0], 9.0)
    np.testing.assert_array_equal(own.eval_model(new_w, model.state).weights[0][0], 9.0)


def test_weights_that_failed_the_check_are_checked_again_at_a_runs_end():
    x = shapes.ShapeDtype((2, 4))
    model = tl.Serial(tl.Dense(4))
    model.init(x)
    models = LoopModels(model, None, x)
    bad = ((np.ones((3, 4), np.float32), np.ones(4, np.float32)),)
    for checked in (True, False):  # update_weights_and_state, then the next run's end
        with pytest.raises(ValueError, match="do not match"):
            models.sync(bad, model.state, checked=checked)
    assert model.weights[0][0].shape == (4, 4)
    good = ((np.full((4, 4), 2.0, np.float32), np.zeros(4, np.float32)),)
    models.sync(good, model.state)
    models.sync(good, model.state, checked=False)
    np.testing.assert_array_equal(model.weights[0][0], 2.0)
