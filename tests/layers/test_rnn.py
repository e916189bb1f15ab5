"""Recurrent layers (Trax 1.4.1's trax.layers.rnn) against NumPy float64 references.

LSTM, GRU and SRU equations computed step by step in float64; Trax's layer
trees, names and n_in/n_out; predict mode continuing across calls; one
lax.scan per recurrence; tl.Scan anywhere in a model; bad input.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes

RNG = np.random.default_rng(1414)


def floats(*shape, scale=1.0):
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def f64(x):
    return np.asarray(x, np.float64)


def lstm_reference(xs, w, b, state=None):
    """Trax's LSTM over axis 1 in float64: returns (hs (B, T, n), final [c, h])."""
    xs, w, b = f64(xs), f64(w), f64(b)
    n = w.shape[1] // 4
    c, h = (np.zeros((xs.shape[0], n)),) * 2 if state is None else np.split(f64(state), 2, -1)
    hs = []
    for t in range(xs.shape[1]):
        i, j, f, o = np.split(np.concatenate([xs[:, t], h], -1) @ w + b, 4, -1)
        c = c * sigmoid(f) + sigmoid(i) * np.tanh(j)
        h = np.tanh(c) * sigmoid(o)
        hs.append(h)
    return np.stack(hs, 1), np.concatenate([c, h], -1)


def gru_reference(xs, w1, b1, w2, b2):
    xs = f64(xs)
    w1, b1, w2, b2 = map(f64, (w1, b1, w2, b2))
    h = np.zeros((xs.shape[0], w2.shape[1]))
    hs = []
    for t in range(xs.shape[1]):
        u, r = np.split(sigmoid(np.concatenate([xs[:, t], h], -1) @ w1 + b1), 2, -1)
        c = np.concatenate([xs[:, t], r * h], -1) @ w2 + b2
        h = u * h + (1 - u) * np.tanh(c)
        hs.append(h)
    return np.stack(hs, 1)


def sru_reference(xs, w, b, activation=lambda c: c):
    xs, w, b = f64(xs), f64(w), f64(b)
    r, f, y = np.split(xs @ w + b, 3, -1)
    r, f = sigmoid(r), sigmoid(f)
    c = np.zeros((xs.shape[0], y.shape[-1]))
    cs = []
    for t in range(xs.shape[1]):
        c = f[:, t] * c + (1 - f[:, t]) * y[:, t]
        cs.append(c)
    return activation(np.stack(cs, 1)) * r + xs * (1 - r) * np.sqrt(3.0)


def with_leaves(layer, sig, arrays):
    """Initializes ``layer`` for ``sig`` and replaces its weight arrays, in order."""
    weights, _ = layer.init(sig)
    leaves, tree = jax.tree_util.tree_flatten(weights)
    assert [a.shape for a in leaves] == [a.shape for a in arrays]
    layer.weights = jax.tree_util.tree_unflatten(tree, [jnp.asarray(a) for a in arrays])
    return layer


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(f64(actual), expected, rtol=rtol, atol=atol)


# -- values against float64 references -------------------------------------------------


def test_lstm_cell_one_step_by_hand():
    cell = tl.LSTMCell(1)
    # w rows: x, h; columns: i, j, f, o.
    w = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, 0.0, 1.0, 1.0]], np.float32)
    b = np.array([0.0, 0.0, 0.0, 0.0], np.float32)
    with_leaves(cell, (shapes.ShapeDtype((1, 1)), shapes.ShapeDtype((1, 2))), [w, b])
    h, state = cell((np.array([[1.0]], np.float32), np.array([[2.0, 1.0]], np.float32)))
    # gates: i = 1.5, j = 2, f = 1, o = 0; c' = 2 sigmoid(1) + sigmoid(1.5) tanh(2).
    c_new = 2 * sigmoid(1.0) + sigmoid(1.5) * np.tanh(2.0)
    h_new = np.tanh(c_new) * 0.5
    close(h, [[h_new]])
    close(state, [[c_new, h_new]])


def test_lstm_matches_reference():
    lstm = tl.LSTM(5)
    xs = floats(3, 6, 5)
    w, b = floats(10, 20, scale=0.5), floats(20, scale=0.5)
    with_leaves(lstm, shapes.signature(xs), [w, b])
    close(lstm(xs), lstm_reference(xs, w, b)[0])


def test_lstm_initial_and_returned_state():
    lstm = tl.LSTM(4, return_state=True, initial_state=True)
    assert (lstm.n_in, lstm.n_out, str(lstm)) == (2, 2, "LSTM_4_in2_out2")
    xs, state = floats(2, 5, 4), floats(2, 8)
    w, b = floats(8, 16, scale=0.5), floats(16, scale=0.5)
    with_leaves(lstm, (shapes.signature(xs), shapes.signature(state)), [w, b])
    hs, final = lstm((xs, state))
    ref_hs, ref_final = lstm_reference(xs, w, b, state)
    close(hs, ref_hs)
    close(final, ref_final)


def test_gru_matches_reference():
    gru = tl.GRU(4)
    xs = floats(2, 7, 4)
    arrays = [floats(8, 8, scale=0.5), floats(8), floats(8, 4, scale=0.5), floats(4)]
    with_leaves(gru, shapes.signature(xs), arrays)
    close(gru(xs), gru_reference(xs, *arrays))


def test_gru_cell_on_extra_leading_axes():
    # Trax's own test: a cell on (8, 7, 9) inputs and states.
    cell = tl.GRUCell(9)
    xs = [floats(8, 7, 9), floats(8, 7, 9)]
    cell.init(shapes.signature(xs))
    ys = cell(xs)
    assert [y.shape for y in ys] == [(8, 7, 9), (8, 7, 9)]
    w1, b1, w2, b2 = map(f64, cell.weights)
    x, h = map(f64, xs)
    u, r = np.split(sigmoid(np.concatenate([x, h], -1) @ w1 + b1), 2, -1)
    expected = u * h + (1 - u) * np.tanh(np.concatenate([x, r * h], -1) @ w2 + b2)
    close(ys[0], expected)
    np.testing.assert_array_equal(ys[0], ys[1])


@pytest.mark.parametrize("activation", [None, "Tanh"])
def test_sru_matches_reference(activation):
    sru = tl.SRU(3, activation=None if activation is None else tl.Tanh())
    xs = floats(2, 5, 3)
    w, b = floats(3, 9, scale=0.7), floats(9)
    with_leaves(sru, shapes.signature(xs), [w, b])
    act = (lambda c: c) if activation is None else np.tanh
    close(sru(xs), sru_reference(xs, w, b, act))


def test_conv_gru_cell_with_1x1_kernels_is_a_gru_on_channels():
    # 1x1 convolutions are products over channels: the GRU of GeneralGRUCell by hand.
    cell = tl.ConvGRUCell(3, kernel_size=(1, 1), mode="eval")
    s = floats(2, 4, 5, 3)
    cell.init(shapes.signature(s))
    leaves = [f64(a) for a in jax.tree_util.tree_leaves(cell.weights)]
    assert [a.shape for a in leaves] == [(1, 1, 3, 3), (3,)] * 3
    # Weight order: the gate's Conv (u), then the candidate's: reset (r), candidate (c).
    (ku, bu), (kr, br), (kc, bc) = [(k[0, 0], b) for k, b in zip(leaves[::2], leaves[1::2])]
    x = f64(s)
    u = sigmoid(x @ ku + bu + 0.5)
    r = sigmoid(x @ kr + br + 0.5)
    c = np.tanh((r * x) @ kc + bc)
    close(cell(s), u * x + (1 - u) * c)


def test_conv_gru_cell_trax_shapes():
    # Trax's test: (8, 1, 7, 9) in, same shape out; dropout on in train mode.
    layer = tl.ConvGRUCell(9, kernel_size=(3, 3))
    x = np.ones((8, 1, 7, 9), np.float32)
    layer.init(shapes.signature(x))
    assert layer(x).shape == x.shape
    assert [a.shape for a in jax.tree_util.tree_leaves(layer.weights)] == \
        [(3, 3, 9, 9), (9,)] * 3


def test_bidirectional_is_forward_and_flipped_backward():
    bi = tl.Bidirectional(tl.GRU(3))
    xs = floats(2, 4, 3)
    bi.init(shapes.signature(xs))
    (_, (fwd, (_, bwd, marker))), _ = bi.weights  # Branch = Serial(Select, Parallel)
    assert marker == {"__marker_for_cached_weights_": ()}  # the flip, used twice
    fwd_w = [a for a in jax.tree_util.tree_leaves(fwd)]
    bwd_w = [a for a in jax.tree_util.tree_leaves(bwd)]
    assert len(fwd_w) == len(bwd_w) == 4
    assert not np.array_equal(fwd_w[0], bwd_w[0])  # a copy with its own weights
    expected = np.concatenate(
        [gru_reference(xs, *fwd_w), gru_reference(xs[:, ::-1], *bwd_w)[:, ::-1]], -1)
    close(bi(xs), expected)


# -- Trax's structure -------------------------------------------------------------------


def test_names_and_arity():
    assert str(tl.LSTM(3)) == "LSTM_3"
    assert str(tl.GRU(5)) == "GRU_5"
    assert str(tl.SRU(7)) == "SRU_7"
    assert (tl.LSTMCell(2).n_in, tl.LSTMCell(2).n_out) == (2, 2)
    assert (tl.GRUCell(2).n_in, tl.GRUCell(2).n_out) == (2, 2)
    assert (tl.InnerSRUCell().n_in, tl.InnerSRUCell().n_out) == (3, 2)
    assert (tl.ScanSRUCell("train").n_in, tl.ScanSRUCell("train").n_out) == (3, 2)
    assert (tl.LSTM(3, return_state=True).n_in, tl.LSTM(3, return_state=True).n_out) == (1, 2)
    assert (tl.LSTM(3, initial_state=True).n_in, tl.LSTM(3, initial_state=True).n_out) == (2, 1)


def test_weight_trees_are_traxs():
    x = shapes.ShapeDtype((2, 3, 4))

    def tree(layer):
        w, _ = layer.weights_and_state_signature(x)
        return jax.tree_util.tree_map(lambda a: a.shape, w)

    # Serial(Branch([], MakeZeroState) = Serial(Select, Parallel([], MZS)), Scan(cell), Select)
    assert tree(tl.LSTM(4)) == (((), ((), ())), (((8, 16), (16,)),), ())
    assert tree(tl.GRU(4)) == (((), ((), ())), (((8, 8), (8,), (8, 4), (4,)),), ())
    # SRU: Branch(Dense(3n), []), Split, Parallel(s, s) with one Sigmoid used twice (the
    # second holds Trax's cache marker), Fn, Parallel([], [], Branch(MZS, [])), Scan, Select,
    # FinalSRUGate.
    marker = {"__marker_for_cached_weights_": ()}
    assert tree(tl.SRU(4)) == (
        ((), (((4, 12), (12,)), ())), (), (((), (), ()), marker), (),
        ((), (), ((), ((), ()))), ((),), (), ())


def test_cell_init_and_the_forget_bias():
    cell = tl.LSTMCell(3, forget_bias=1.0, bias_initializer=tl.RandomNormalInitializer(0.0))
    w, b = cell.init((shapes.ShapeDtype((2, 5)), shapes.ShapeDtype((2, 6))))[0]
    assert w.shape == (8, 12)
    np.testing.assert_array_equal(b, np.ones(12, np.float32))  # every gate, as in Trax
    gru = tl.GRUCell(3, forget_bias=2.0, bias_initializer=tl.RandomNormalInitializer(0.0))
    w1, b1, w2, b2 = gru.init((shapes.ShapeDtype((2, 5)), shapes.ShapeDtype((2, 3))))[0]
    np.testing.assert_array_equal(b1, np.full(6, 2.0, np.float32))
    np.testing.assert_array_equal(b2, np.zeros(3, np.float32))
    assert float(np.abs(w1).max()) <= 0.01 and float(np.abs(w2).max()) <= 0.01  # U(-0.01, 0.01)
    # Same seed, same weights.
    again = tl.GRUCell(3).init((shapes.ShapeDtype((2, 5)), shapes.ShapeDtype((2, 3))))[0]
    again2 = tl.GRUCell(3).init((shapes.ShapeDtype((2, 5)), shapes.ShapeDtype((2, 3))))[0]
    for a, c in zip(again, again2):
        np.testing.assert_array_equal(a, c)


def test_make_zero_state():
    z = tl.MakeZeroState(depth_multiplier=3)(np.ones((2, 5, 4), np.int32))
    assert z.shape == (2, 12) and z.dtype == np.float32 and not np.any(z)


def primitive_names(jaxpr):
    """The primitives of a jaxpr and of the jaxprs inside its equations, in order."""
    names = []
    for e in jaxpr.eqns:
        names.append(e.primitive.name)
        for param in e.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else [param]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names += primitive_names(inner)
    return names


@pytest.mark.parametrize("name", ["LSTM", "GRU"])
@pytest.mark.parametrize("grad", [False, True])
def test_one_scan_per_recurrence(name, grad):
    """The recurrence is one lax.scan (two with the gradient's backward loop): the
    program does not grow with the length."""
    layer = layer_named(name, "train")
    w, s = layer.init(shapes.ShapeDtype((2, 3, 4)))

    def run(w, x):
        y = layer.pure_fn(x, w, s, None)[0]
        return jnp.sum(y * y)

    def eqns(length):
        jaxpr = jax.make_jaxpr(jax.grad(run) if grad else run)(w, jnp.zeros((2, length, 4)))
        return primitive_names(jaxpr.jaxpr)

    short, long = eqns(3), eqns(50)
    assert short.count("scan") == (2 if grad else 1)
    assert short == long


# -- modes, jit, training ---------------------------------------------------------------


def layer_named(name, mode):
    return {"LSTM": tl.LSTM(4, mode=mode), "GRU": tl.GRU(4, mode=mode),
            "SRU": tl.SRU(4, mode=mode)}[name]


@pytest.mark.parametrize("name", ["LSTM", "GRU", "SRU"])
def test_predict_continues_where_the_last_call_stopped(name):
    xs = floats(2, 7, 4)
    full = layer_named(name, "eval")
    w, s = full.init(shapes.signature(xs))
    expected, s_after = full.pure_fn(xs, w, s, None)
    step = layer_named(name, "predict")
    _, state = step.init(shapes.ShapeDtype((2, 1, 4)))
    run = jax.jit(step.pure_fn)
    pieces = []
    for a, b in ((0, 3), (3, 4), (4, 5), (5, 7)):
        y, state = run(xs[:, a:b], w, state, None)
        pieces.append(y)
    close(np.concatenate(pieces, 1), f64(expected), rtol=1e-6, atol=1e-7)
    # Outside predict mode no carry is kept (the state holds no array); in predict it is.
    assert jax.tree_util.tree_leaves(s_after) == []
    assert len(jax.tree_util.tree_leaves(state)) == 1


def test_predict_state_holds_the_final_carry():
    lstm = tl.LSTM(3, mode="predict")
    xs = floats(2, 5, 3)
    lstm.init(shapes.ShapeDtype((2, 1, 3)))
    _, scan_state, _ = lstm.state
    assert scan_state[1] == ()  # nothing saved before the first call
    lstm(xs)
    w, b = lstm.weights[1][0]
    saved = lstm.state[1][1]
    assert len(saved) == 1
    close(saved[0], lstm_reference(xs, w, b)[1])


@pytest.mark.parametrize("name", ["LSTM", "GRU", "SRU"])
def test_jit_equals_eager(name):
    layer = layer_named(name, "eval")
    xs = floats(3, 5, 4)
    w, s = layer.init(shapes.signature(xs))
    eager = layer(xs)
    jitted, _ = jax.jit(layer.pure_fn)(xs, w, s, None)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-7)


def test_training_reduces_the_loss_through_the_recurrence():
    """Predict the previous token: only the recurrence can carry it."""
    vocab = 5
    model = tl.Serial(tl.Embedding(vocab, 8), tl.LSTM(8), tl.Dense(vocab))
    tokens = RNG.integers(0, vocab, (16, 10)).astype(np.int32)
    targets = np.concatenate([np.zeros((16, 1), np.int32), tokens[:, :-1]], 1)
    w, s = model.init(shapes.signature(tokens))

    def loss_fn(weights):
        logits = model.pure_fn(tokens, weights, s, None)[0]
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], -1))

    grad_fn = jax.jit(jax.value_and_grad(loss_fn))
    first, grads = grad_fn(w)
    cell_grads = jax.tree_util.tree_leaves(grads[1])
    assert all(float(jnp.abs(g).max()) > 0 for g in cell_grads)  # reaches the LSTMCell
    for _ in range(60):
        loss, grads = grad_fn(w)
        w = jax.tree_util.tree_map(lambda p, g: p - 1.0 * g, w, grads)
    last, _ = grad_fn(w)
    assert float(last) < 0.7 * float(first)


# -- Scan anywhere ----------------------------------------------------------------------


def test_rnn_from_primitives_after_an_embedding():
    """Trax's way of building an RNN, inside a model: Scan after other layers."""
    model = tl.Serial(
        tl.Embedding(7, 4),
        tl.Branch([], tl.MakeZeroState(depth_multiplier=2)),
        tl.Scan(tl.LSTMCell(4), axis=1),
        tl.Select([0], n_in=2),
        tl.Dense(3),
    )
    tokens = RNG.integers(0, 7, (2, 6)).astype(np.int32)
    model.init(shapes.signature(tokens))
    emb, _, ((w, b),), _, (wd, bd) = model.weights
    hs, _ = lstm_reference(f64(emb)[tokens], w, b)
    close(model(tokens), hs @ f64(wd) + f64(bd))


def test_scan_after_a_layer_that_makes_its_carry():
    cumsum = tl.Scan(tl.Serial(tl.Add(), tl.Dup()), axis=1)
    model = tl.Serial(tl.Dense(3), tl.Branch([], tl.Fn("Zero", lambda x: jnp.zeros_like(x[:, 0]))),
                      cumsum)
    x = floats(2, 4, 5)
    model.init(shapes.signature(x))
    ys, total = model(x)
    wd, bd = model.weights[0]
    h = f64(x) @ f64(wd) + f64(bd)
    close(ys, np.cumsum(h, 1))
    close(total, h.sum(1))


def test_batch_leading_axes_after_another_layer():
    model = tl.Serial(tl.Dense(3), tl.BatchLeadingAxes(tl.Dense(2)))
    x = floats(2, 4, 5)
    model.init(shapes.signature(x))
    (w1, b1), ((w2, b2),) = model.weights
    close(model(x), (f64(x) @ f64(w1) + f64(b1)) @ f64(w2) + f64(b2))


def test_predict_refuses_a_new_batch_size_until_reset():
    lstm = tl.LSTM(3, mode="predict")
    _, fresh = lstm.init(shapes.ShapeDtype((2, 1, 3)))
    lstm(floats(2, 2, 3))
    with pytest.raises(ValueError, match=r"carry of its previous call, of shape \(2, 6\).*"
                                         r"\(3, 6\)"):
        lstm(floats(3, 1, 3))
    lstm.state = fresh
    assert lstm(floats(3, 1, 3)).shape == (3, 1, 3)


def test_scan_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="Scan: mode must be one of"):
        tl.Scan(tl.LSTMCell(2), axis=1, mode="predcit")


# -- bad input ---------------------------------------------------------------------------


def test_2d_input_to_lstm():
    lstm = tl.LSTM(4)
    with pytest.raises(ValueError, match=r"rank-3 input \(batch, length, features\); got shape "
                                         r"\(2, 4\)"):
        lstm.init(shapes.ShapeDtype((2, 4)))


@pytest.mark.parametrize("layer", [tl.LSTM(4), tl.GRU(4)], ids=["LSTM", "GRU"])
def test_int_input_to_a_recurrent_layer(layer):
    with pytest.raises(TypeError, match=r"expects a float input; got dtype int32.*tl.Embedding"):
        layer.init(shapes.ShapeDtype((2, 3, 4), np.int32))


def test_int_input_to_sru():
    with pytest.raises(TypeError, match=r"SRU_4 expects float inputs; got dtype int32"):
        tl.SRU(4).init(shapes.ShapeDtype((2, 3, 4), np.int32))


def test_wrong_feature_width_after_init():
    lstm = tl.LSTM(4, initial_state=True)
    lstm.init((shapes.ShapeDtype((2, 3, 4)), shapes.ShapeDtype((2, 8))))
    with pytest.raises(ValueError, match=r"initialized for inputs with 4 features.*\(2, 5\)"):
        lstm((floats(2, 3, 5), floats(2, 8)))


def test_input_width_must_be_n_units_for_lstm_and_gru():
    with pytest.raises(ValueError, match=r"state's last axis must be 10.*tl.Dense\(n_units\)"):
        tl.LSTM(5).init(shapes.ShapeDtype((2, 3, 4)))
    with pytest.raises(ValueError, match=r"state's last axis must be 5 \(n_units\)"):
        tl.GRU(5).init(shapes.ShapeDtype((2, 3, 4)))


def test_sru_input_width():
    sru = tl.SRU(4)
    with pytest.raises(ValueError, match=r"n_units=4 features.*got shape \(2, 3, 1\)"):
        sru.init(shapes.ShapeDtype((2, 3, 1)))


def test_cell_batch_mismatch():
    with pytest.raises(ValueError, match="same leading"):
        tl.LSTMCell(2).init((shapes.ShapeDtype((3, 4)), shapes.ShapeDtype((2, 4))))


def test_bad_constructor_arguments():
    for make in (lambda: tl.LSTM(0), lambda: tl.GRU(2.5), lambda: tl.LSTMCell(-1),
                 lambda: tl.SRU(True), lambda: tl.MakeZeroState(0)):
        with pytest.raises(ValueError, match="must be a positive int"):
            make()
    with pytest.raises(ValueError, match="mode must be one of"):
        tl.LSTM(2, mode="test")
    with pytest.raises(NotImplementedError, match="monkey_patched_mask"):
        tl.ScanSRUCell("predict", monkey_patched_mask=object())
    with pytest.raises(TypeError, match="forward_layer must be a Layer"):
        tl.Bidirectional(tl.LSTM)
