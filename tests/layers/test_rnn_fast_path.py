"""The whole-sequence path of LSTM and GRU (``scan_sequence``, retrax.fastmath.recurrent).

``tl.Scan`` over an ``LSTMCell``/``GRUCell`` (and ``RNNLM``'s multi-layer
cell) computes all steps at once: the input half of the gate products before
the time loop, a hand-written backward pass. Checked here: the kernels against
float64 NumPy loops; outputs, final states and gradients against the same
layers run step by step (the generic ``Scan`` path, differentiated by JAX);
the layer tree, weights and modes untouched; inputs the fast path does not
take going step by step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import models, shapes
from retrax.fastmath import recurrent

RNG = np.random.default_rng(2024)


def floats(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def f64(x):
    return np.asarray(x, np.float64)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_loop(x, w, b, c, h):
    """Time-major float64 LSTM: ``(hs, c_T, h_T)``."""
    x, w, b, c, h = map(f64, (x, w, b, c, h))
    hs = []
    for x_t in x:
        i, j, f, o = np.split(np.concatenate([x_t, h], -1) @ w + b, 4, -1)
        c = c * sigmoid(f) + sigmoid(i) * np.tanh(j)
        h = np.tanh(c) * sigmoid(o)
        hs.append(h)
    return np.stack(hs), c, h


def gru_loop(x, w1, b1, w2, b2, h):
    """Time-major float64 GRU: ``(hs, h_T)``."""
    x, w1, b1, w2, b2, h = map(f64, (x, w1, b1, w2, b2, h))
    hs = []
    for x_t in x:
        u, r = np.split(sigmoid(np.concatenate([x_t, h], -1) @ w1 + b1), 2, -1)
        c = np.tanh(np.concatenate([x_t, r * h], -1) @ w2 + b2)
        h = u * h + (1 - u) * c
        hs.append(h)
    return np.stack(hs), h


def close(actual, expected, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(f64(actual), f64(expected), rtol=rtol, atol=atol)


def close_trees(actual, expected, rtol=2e-5, atol=2e-6):
    a, b = jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.shape == y.shape
        close(x, y, rtol, atol)


class StepByStepLSTMCell(tl.LSTMCell):
    """An LSTMCell without the whole-sequence path: Scan runs it step by step."""

    scan_sequence = None


class StepByStepGRUCell(tl.GRUCell):
    scan_sequence = None


# -- the kernels ------------------------------------------------------------------------


def test_lstm_sequence_matches_a_float64_loop():
    x, w, b = floats(6, 3, 5), floats(9, 16, scale=0.5), floats(16)
    c0, h0 = floats(3, 4), floats(3, 4)
    hs, c, h = jax.jit(recurrent.lstm_sequence)(x, w, b, c0, h0)
    ref = lstm_loop(x, w, b, c0, h0)
    for got, expected in zip((hs, c, h), ref):
        close(got, expected)


def test_gru_sequence_matches_a_float64_loop():
    x, h0 = floats(7, 2, 3), floats(2, 4)
    w1, b1, w2, b2 = floats(7, 8, scale=0.5), floats(8), floats(7, 4, scale=0.5), floats(4)
    hs, h = jax.jit(recurrent.gru_sequence)(x, w1, b1, w2, b2, h0)
    ref = gru_loop(x, w1, b1, w2, b2, h0)
    close(hs, ref[0])
    close(h, ref[1])


def scan_loss(step, n_state):
    """A loss of every output and final state of a step function run with lax.scan."""
    def loss(args):
        *rest, x, states = args
        final, hs = jax.lax.scan(lambda s, x_t: step(x_t, s, *rest), states, x)
        probe = jnp.linspace(-1.0, 1.0, hs.size).reshape(hs.shape)
        return jnp.sum(hs * probe) + sum(jnp.sum(jnp.sin(s)) for s in final[:n_state])
    return loss


def test_lstm_sequence_gradients_equal_autodiff_of_the_loop():
    x, w, b = floats(5, 3, 4), floats(7, 12, scale=0.5), floats(12)
    c0, h0 = floats(3, 3), floats(3, 3)

    def step(x_t, s, w, b):
        c, h = s
        i, j, f, o = jnp.split(jnp.concatenate([x_t, h], -1) @ w + b, 4, -1)
        c = c * jax.nn.sigmoid(f) + jax.nn.sigmoid(i) * jnp.tanh(j)
        h = jnp.tanh(c) * jax.nn.sigmoid(o)
        return (c, h), h

    def fast(args):
        w, b, x, (c0, h0) = args
        hs, c, h = recurrent.lstm_sequence(x, w, b, c0, h0)
        probe = jnp.linspace(-1.0, 1.0, hs.size).reshape(hs.shape)
        return jnp.sum(hs * probe) + jnp.sum(jnp.sin(c)) + jnp.sum(jnp.sin(h))

    args = (w, b, x, (c0, h0))
    expected = jax.grad(scan_loss(step, 2))(args)
    close_trees(jax.jit(jax.grad(fast))(args), expected)


def test_gru_sequence_gradients_equal_autodiff_of_the_loop():
    x, h0 = floats(6, 2, 3), floats(2, 4)
    w1, b1, w2, b2 = floats(7, 8, scale=0.5), floats(8), floats(7, 4, scale=0.5), floats(4)

    def step(x_t, h, w1, b1, w2, b2):
        u, r = jnp.split(jax.nn.sigmoid(jnp.concatenate([x_t, h], -1) @ w1 + b1), 2, -1)
        c = jnp.tanh(jnp.concatenate([x_t, r * h], -1) @ w2 + b2)
        h = u * h + (1 - u) * c
        return h, h

    def fast(args):
        w1, b1, w2, b2, x, h0 = args
        hs, h = recurrent.gru_sequence(x, w1, b1, w2, b2, h0)
        probe = jnp.linspace(-1.0, 1.0, hs.size).reshape(hs.shape)
        return jnp.sum(hs * probe) + jnp.sum(jnp.sin(h))

    def reference(args):
        *weights, x, h0 = args
        final, hs = jax.lax.scan(lambda h, x_t: step(x_t, h, *weights), h0, x)
        probe = jnp.linspace(-1.0, 1.0, hs.size).reshape(hs.shape)
        return jnp.sum(hs * probe) + jnp.sum(jnp.sin(final))

    args = (w1, b1, w2, b2, x, h0)
    close_trees(jax.jit(jax.grad(fast))(args), jax.grad(reference)(args))


def test_kernels_refuse_mixed_dtypes_and_bad_shapes():
    x, w, b, s = floats(2, 1, 3), floats(5, 8), floats(8), floats(1, 2)
    with pytest.raises(TypeError, match="one float dtype"):
        recurrent.lstm_sequence(x.astype(np.float16), w, b, s, s)
    with pytest.raises(ValueError, match=r"expects w \(5, 8\)"):
        recurrent.lstm_sequence(x, w[:4], b, s, s)
    with pytest.raises(ValueError, match=r"states \(M, 2\)"):
        recurrent.gru_sequence(x, floats(5, 4), floats(4), floats(5, 2), floats(2),
                               floats(2, 2))


# -- layers: the whole-sequence path equals step by step ---------------------------------


def lstm_pair(n, **kwargs):
    """(fast, step-by-step) LSTM layers, same tree: Trax's LSTM built by hand."""
    def build(cell):
        return tl.Serial(tl.Branch([], tl.MakeZeroState(depth_multiplier=2)),
                         tl.Scan(cell(n), axis=1, **kwargs), tl.Select([0], n_in=2))
    return build(tl.LSTMCell), build(StepByStepLSTMCell)


def gru_pair(n, **kwargs):
    def build(cell):
        return tl.Serial(tl.Branch([], tl.MakeZeroState()),
                         tl.Scan(cell(n), axis=1, **kwargs), tl.Select([0], n_in=2))
    return build(tl.GRUCell), build(StepByStepGRUCell)


def loss_and_grads(model, x, weights, state):
    def loss(w, x):
        y = model.pure_fn(x, w, state, None)[0]
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(weights, x)


@pytest.mark.parametrize("pair", [lstm_pair, gru_pair])
def test_layer_fast_path_equals_step_by_step(pair):
    fast, slow = pair(6)
    x = floats(3, 9, 6)
    weights, state = fast.init(shapes.signature(x))
    slow_weights, _ = slow.init(shapes.signature(x))
    assert jax.tree_util.tree_structure(weights) == jax.tree_util.tree_structure(slow_weights)
    close(fast.pure_fn(x, weights, state, None)[0], slow.pure_fn(x, weights, state, None)[0])
    (loss_f, grads_f), (loss_s, grads_s) = (loss_and_grads(m, x, weights, state)
                                            for m in (fast, slow))
    close(loss_f, loss_s)
    close_trees(grads_f, grads_s)


def test_tl_lstm_and_gru_take_the_fast_path():
    """Their programs hold the kernels' custom gradient, not a step-by-step Scan."""
    for layer in (tl.LSTM(4), tl.GRU(4)):
        w, s = layer.init(shapes.ShapeDtype((2, 3, 4)))
        jaxpr = jax.make_jaxpr(lambda x, w=w, s=s, layer=layer: layer.pure_fn(x, w, s, None))(
            jnp.zeros((2, 3, 4)))
        assert "custom_vjp_call" in [e.primitive.name for e in jaxpr.jaxpr.eqns], layer


def test_scan_over_axis_0_with_extra_batch_axes():
    cell, slow_cell = tl.LSTMCell(3), StepByStepLSTMCell(3)
    x, carry = floats(5, 2, 4, 3), floats(2, 4, 6)
    fast, slow = tl.Scan(cell, axis=0), tl.Scan(slow_cell, axis=0)
    weights, state = fast.init(shapes.signature((x, carry)))
    got = fast.pure_fn((x, carry), weights, state, None)[0]
    expected = slow.pure_fn((x, carry), weights, state, None)[0]
    close_trees(got, expected)
    assert got[0].shape == (5, 2, 4, 3) and got[1].shape == (2, 4, 6)


def test_predict_mode_keeps_the_final_carry_of_the_whole_sequence():
    fast, _ = lstm_pair(4, mode="predict")
    _, slow = lstm_pair(4, mode="eval")
    x = floats(2, 6, 4)
    weights, state = fast.init(shapes.ShapeDtype((2, 1, 4)))
    run = jax.jit(fast.pure_fn)
    y1, state = run(x[:, :4], weights, state, None)
    y2, state = run(x[:, 4:], weights, state, None)
    expected = slow.pure_fn(x, weights, slow.init(shapes.signature(x))[1], None)[0]
    close(np.concatenate([y1, y2], 1), expected)


def test_step_by_step_where_the_fast_path_does_not_apply():
    # remat, and a float16 input with float32 weights, run step by step (same values).
    fast, slow = lstm_pair(4, remat=True)
    x = floats(2, 5, 4)
    weights, state = fast.init(shapes.signature(x))
    close(fast.pure_fn(x, weights, state, None)[0], slow.pure_fn(x, weights, state, None)[0])
    gru = tl.GRU(4)
    gru.init(shapes.signature(x))
    y16 = gru(x.astype(np.float16))
    assert y16.dtype == np.float32
    close(y16, gru(x.astype(np.float16).astype(np.float32)))


def test_a_subclass_with_its_own_step_runs_it():
    """A cell subclass overriding forward is scanned step by step, with its forward."""
    class LeakyLSTMCell(tl.LSTMCell):
        def forward(self, inputs):
            h, state = super().forward(inputs)
            return 0.5 * h, state

    x = floats(2, 4, 3)
    layer = tl.Serial(tl.Branch([], tl.MakeZeroState(depth_multiplier=2)),
                      tl.Scan(LeakyLSTMCell(3), axis=1), tl.Select([0], n_in=2))
    layer.init(shapes.signature(x))
    w, b = jax.tree_util.tree_leaves(layer.weights)
    zero = np.zeros((2, 3))
    hs = lstm_loop(np.swapaxes(x, 0, 1), w, b, zero, zero)[0]
    close(layer(x), 0.5 * np.swapaxes(hs, 0, 1))


def test_a_cell_shared_between_two_scans():
    """The second Scan of a shared cell reads the weights the first one (fast) recorded."""
    cell = tl.LSTMCell(4)
    model = tl.Serial(tl.Branch([], tl.MakeZeroState(depth_multiplier=2)),
                      tl.Scan(cell, axis=1), tl.Select([0], n_in=2),
                      tl.Branch([], tl.MakeZeroState(depth_multiplier=2)),
                      tl.Scan(cell, axis=1), tl.Select([0], n_in=2))
    x = floats(2, 3, 4)
    model.init(shapes.signature(x))
    w, b = (f64(a) for a in jax.tree_util.tree_leaves(model.weights))
    zero = np.zeros((2, 4))
    once = lstm_loop(np.swapaxes(x, 0, 1), w, b, zero, zero)[0]
    twice = lstm_loop(once, w, b, zero, zero)[0]
    close(model(x), np.swapaxes(twice, 0, 1))


# -- RNNLM: the cells one after the other ----------------------------------------------


def step_by_step_rnnlm(vocab, d_model, cell, multiplier, mode):
    """RNNLM's tree built by hand with a plain Serial multi-layer cell (step by step)."""
    cells = [cell(n_units=d_model) for _ in range(2)]
    multi = tl.Serial(tl.Parallel([], tl.Split(n_items=2)), tl.SerialWithSideOutputs(cells),
                      tl.Parallel([], tl.Concatenate(n_items=2)))
    return tl.Serial(
        tl.ShiftRight(mode=mode), tl.Embedding(vocab, d_model), tl.Dropout(0.1, mode=mode),
        tl.Branch([], tl.MakeZeroState(depth_multiplier=2 * multiplier)),
        tl.Scan(multi, axis=1, mode=mode), tl.Select([0], n_in=2), tl.Dense(vocab))


@pytest.mark.parametrize("cell, multiplier", [(tl.LSTMCell, 2), (tl.GRUCell, 1)])
def test_rnnlm_fast_path_equals_step_by_step(cell, multiplier):
    fast = models.RNNLM(11, d_model=5, rnn_cell=cell, rnn_cell_d_state_multiplier=multiplier,
                        mode="eval")
    slow = step_by_step_rnnlm(11, 5, cell, multiplier, "eval")
    assert str(fast) == str(slow)
    x = RNG.integers(1, 11, (3, 8)).astype(np.int32)
    weights, state = fast.init(shapes.signature(x))
    assert jax.tree_util.tree_structure(slow.init(shapes.signature(x))[0]) == \
        jax.tree_util.tree_structure(weights)
    (loss_f, grads_f), (loss_s, grads_s) = (loss_and_grads_tokens(m, x, weights, state)
                                            for m in (fast, slow))
    close(loss_f, loss_s)
    close_trees(grads_f, grads_s)


def loss_and_grads_tokens(model, x, weights, state):
    def loss(w):
        y = model.pure_fn(x, w, state, None)[0]
        return jnp.sum(y * jnp.cos(jnp.arange(y.size, dtype=y.dtype).reshape(y.shape)))
    return jax.jit(jax.value_and_grad(loss))(weights)


def test_rnnlm_runs_its_layers_one_after_the_other():
    """One scan per layer, each over the whole sequence (not one scan of both cells)."""
    model = models.RNNLM(8, d_model=4, mode="eval")
    x = np.ones((2, 5), np.int32)
    w, s = model.init(shapes.signature(x))
    jaxpr = jax.make_jaxpr(lambda x: model.pure_fn(x, w, s, None)[0])(x)
    assert [e.primitive.name for e in jaxpr.jaxpr.eqns].count("custom_vjp_call") == 2


# -- the Scan protocol -------------------------------------------------------------------


class RunningSum(tl.Layer):
    """``(x, total) -> (total + x, total + x)``, with a whole-scan path that scales by
    ``self._whole_scale`` (1.0 computes the same; another value shows which path ran)."""

    def __init__(self, whole_scale=1.0, n_ys=1):
        super().__init__(n_in=2, n_out=2)
        self._whole_scale, self._n_ys = whole_scale, n_ys

    def forward(self, inputs):
        x, total = inputs
        return total + x, total + x

    def scan_sequence(self, xs, carries, weights, state):
        if self._whole_scale is None:
            return None
        ys = carries[0] + jnp.cumsum(xs[0], axis=0) * self._whole_scale
        return [ys] * self._n_ys, [ys[-1]], state


def test_scan_uses_a_layers_scan_sequence():
    x, zero = np.arange(6, dtype=np.float32).reshape(2, 3), np.zeros(2, np.float32)
    step_by_step = [[0.0, 1.0, 3.0], [3.0, 7.0, 12.0]]
    ys, total = tl.Scan(RunningSum(), axis=1)((x, zero))
    assert ys.tolist() == step_by_step and total.tolist() == [3.0, 12.0]
    ys, _ = tl.Scan(RunningSum(whole_scale=2.0), axis=1)((x, zero))  # it ran
    assert ys.tolist() == [[0.0, 2.0, 6.0], [6.0, 14.0, 24.0]]
    ys, _ = tl.Scan(RunningSum(whole_scale=None), axis=1)((x, zero))  # None: step by step
    assert ys.tolist() == step_by_step
    ys, _ = tl.Scan(RunningSum(whole_scale=2.0), axis=1, remat=True)((x, zero))
    assert ys.tolist() == step_by_step
    with pytest.raises(ValueError, match="returned 2 outputs and 1 carries; expected 1 and 1"):
        tl.Scan(RunningSum(n_ys=2), axis=1)((x, zero))
