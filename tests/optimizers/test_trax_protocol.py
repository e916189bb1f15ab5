"""Trax's optimizer protocol: per-weight init/update subclasses, slots, opt_params, SM3."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import optimizers
from retrax.supervised import training


class SignSGD(optimizers.Optimizer):
    """A Trax-style optimizer: w -= lr * sign(g); the slot counts the updates."""

    def init(self, weights):
        return jnp.zeros((), jnp.int32)

    def update(self, step, grads, weights, slots, opt_params):
        new_w = weights - (opt_params["learning_rate"] * jnp.sign(grads)).astype(weights.dtype)
        return new_w, slots + 1


def test_a_per_weight_optimizer_updates_every_weight_array():
    opt = SignSGD(learning_rate=0.5)
    assert opt.uses_per_weight_protocol and opt.slots is None
    weights = (jnp.array([1.0, 2.0]), (), (jnp.array([[3.0]]),))
    slots, params = opt.tree_init(weights)
    assert len(slots) == 2 and opt.slots is slots
    assert float(params["learning_rate"]) == 0.5
    grads = (jnp.array([-3.0, 0.5]), (), (jnp.array([[2.0]]),))
    new_w, slots, stats = opt.tree_update(1, grads, weights, slots, params)
    np.testing.assert_array_equal(new_w[0], [1.5, 1.5])
    np.testing.assert_array_equal(new_w[2][0], [[2.5]])
    assert new_w[1] == () and [int(s) for s in slots] == [1, 1]
    assert float(stats["gradients_l2"]) == pytest.approx(np.sqrt(9 + 0.25 + 4))
    assert float(stats["weights_l2"]) == pytest.approx(np.sqrt(1 + 4 + 9))


def test_clipping_happens_before_the_per_weight_update():
    class Plain(optimizers.Optimizer):
        def init(self, weights):
            return None

        def update(self, step, grads, weights, slots, opt_params):
            return weights - opt_params["learning_rate"] * grads, None

    opt = Plain(learning_rate=1.0, clip_grad_norm=1.0)
    slots, params = opt.tree_init(jnp.zeros(2))
    w, _, stats = opt.tree_update(1, jnp.array([3.0, 4.0]), jnp.zeros(2), slots, params)
    np.testing.assert_allclose(w, [-0.6, -0.8], rtol=1e-6)
    assert float(stats["gradients_l2"]) == pytest.approx(5.0)


def test_an_update_changing_the_dtype_or_shape_is_refused():
    class Widening(optimizers.Optimizer):
        def init(self, weights):
            return None

        def update(self, step, grads, weights, slots, opt_params):
            return weights.astype(jnp.int32), None

    opt = Widening()
    slots, params = opt.tree_init(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"Widening.update returned a weight .* dtype int32"):
        opt.tree_update(1, jnp.ones(2), jnp.zeros(2), slots, params)


def test_opt_params_can_be_set_and_unknown_ones_are_refused():
    opt = optimizers.SGD(0.1)
    opt.opt_params = {"learning_rate": 0.25}
    assert float(opt.opt_params["learning_rate"]) == 0.25
    slots, params = opt.tree_init(jnp.ones(2))
    w, _, _ = opt.tree_update(1, jnp.ones(2), jnp.ones(2), slots, params)
    np.testing.assert_allclose(w, [0.75, 0.75])
    with pytest.raises(ValueError, match="unknown keys"):
        opt.opt_params = {"lr": 1.0}


def test_built_in_slots_show_one_entry_per_weight_as_in_trax():
    weights = np.arange(15, dtype=np.float32).reshape(3, 5)
    sgd = optimizers.SGD(0.01)
    assert sgd.slots is None
    sgd.tree_init(weights)
    assert sgd.slots == (None,)
    momentum = optimizers.Momentum(0.01)
    momentum.tree_init(weights)
    assert len(momentum.slots) == 1 and momentum.slots[0].shape == (3, 5)
    adam = optimizers.Adam(0.01)
    adam.tree_init((weights, jnp.ones(2)))
    (m0, v0), (m1, v1) = adam.slots
    assert m0.shape == v0.shape == (3, 5) and m1.shape == v1.shape == (2,)


def _batches():
    rng = np.random.default_rng(0)
    while True:
        x = rng.normal(size=(8, 3)).astype(np.float32)
        yield x, x @ np.array([[1.0], [-2.0], [0.5]], np.float32), np.ones((8, 1), np.float32)


def _sum_task(optimizer):
    return training.TrainTask(_batches(), tl.L2Loss(), optimizer, n_steps_per_checkpoint=2)


def test_a_trax_style_optimizer_trains_in_the_loop_exactly_as_by_hand():
    model = tl.Dense(1)
    loop = training.Loop(model, _sum_task(SignSGD(0.05)), progress_bar=False,
                         stdout=open(os.devnull, "w"))
    w0 = [np.asarray(a) for a in model.weights]
    loop.run(1)
    stream = _batches()
    next(stream)  # The task's sample batch; the first step gets the next one.
    x, y, _ = next(stream)
    err = x @ w0[0] + w0[1] - y                      # L2Loss: mean over batch of err^2 sums
    gw = 2 * x.T @ err / len(x)
    gb = 2 * err.sum(0) / len(x)
    np.testing.assert_allclose(model.weights[0], w0[0] - 0.05 * np.sign(gw), rtol=1e-6)
    np.testing.assert_allclose(model.weights[1], w0[1] - 0.05 * np.sign(gb), rtol=1e-6)
    loop.run(60)
    losses = [v for _, v in loop.history.get("train", "metrics/L2Loss")]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])


def test_resume_with_a_trax_style_optimizer_equals_an_uninterrupted_run(tmp_path):
    quiet = dict(progress_bar=False, stdout=open(os.devnull, "w"))
    straight = tl.Dense(1)
    training.Loop(straight, _sum_task(SignSGD(0.01)), **quiet).run(4)
    first = tl.Dense(1)
    training.Loop(first, _sum_task(SignSGD(0.01)), output_dir=str(tmp_path), **quiet).run(2)
    resumed = tl.Dense(1)
    loop = training.Loop(resumed, _sum_task(SignSGD(0.01)), output_dir=str(tmp_path), **quiet)
    assert loop.step == 2
    loop.run(2)
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_array_equal(a, b)


def _sm3_reference(w, grads, lr, beta1, beta2, wd, kind):
    """SM3 by the paper's rule in float64 NumPy, with Trax's conventions."""
    w = np.array(w, np.float64)
    shape = w.shape
    accs = [np.zeros(d) for d in shape]
    graft = [np.zeros(d) for d in shape]
    m = np.zeros_like(w)

    def cover(vs):
        if len(shape) == 1:
            return vs[0]
        return np.minimum.reduce(np.broadcast_arrays(*[
            v.reshape([1] * i + [-1] + [1] * (len(shape) - i - 1)) for i, v in enumerate(vs)]))

    def maxes(a):
        if a.ndim == 1:
            return [a]
        return [a.max(axis=tuple(j for j in range(a.ndim) if j != i)) for i in range(a.ndim)]

    for g in grads:
        g = np.asarray(g, np.float64)
        acc = beta2 * cover(accs) + (1.0 if beta2 == 1 else 1 - beta2) * g * g
        d = np.where(acc > 0, g / (np.sqrt(acc) + 1e-16), 0.0)
        if beta2 != 1:
            gacc = cover(graft) + g * g
            gd = np.where(gacc > 0, g / (np.sqrt(gacc) + 1e-16), 0.0)
            d = d * np.linalg.norm(gd) / (np.linalg.norm(d) + 1e-16)
            graft = maxes(gacc)
        d = d + wd * w
        if beta1 > 0:
            if kind == optimizers.MomentumType.EMA:
                m = (1 - beta1) * d + beta1 * m
                step = m
            else:
                m = d + beta1 * m
                step = m if kind == optimizers.MomentumType.HEAVY_BALL else d + beta1 * m
        else:
            step = d
        w = w - lr * step
        accs = maxes(acc)
    return w


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 2)])
@pytest.mark.parametrize("beta1,beta2,wd,kind", [
    (0.9, 1.0, 0.0, optimizers.MomentumType.EMA),
    (0.0, 1.0, 0.0, optimizers.MomentumType.EMA),
    (0.5, 0.9, 0.01, optimizers.MomentumType.HEAVY_BALL),
    (0.5, 1.0, 0.0, optimizers.MomentumType.NESTEROV),
])
def test_sm3_matches_a_float64_reference(shape, beta1, beta2, wd, kind):
    rng = np.random.default_rng(sum(shape))
    w = rng.normal(size=shape).astype(np.float32)
    grads = [rng.normal(size=shape).astype(np.float32) for _ in range(4)]
    opt = optimizers.SM3(learning_rate=0.05, momentum=beta1, second_moment_averaging=beta2,
                         weight_decay=wd, momentum_type=kind)
    slots, params = opt.tree_init(jnp.asarray(w))
    weights = jnp.asarray(w)
    for g in grads:
        weights, slots, _ = opt.tree_update(0, jnp.asarray(g), weights, slots, params)
    np.testing.assert_allclose(weights, _sm3_reference(w, grads, 0.05, beta1, beta2, wd, kind),
                               rtol=2e-5, atol=2e-6)
    # Memory: one accumulator per axis, not per entry.
    assert [a.shape for a in slots[0][1]] == [(d,) for d in shape]


def test_sm3_refuses_bad_hyperparameters():
    with pytest.raises(ValueError, match="SM3: momentum must be a number in"):
        optimizers.SM3(momentum=1.5)
    with pytest.raises(ValueError, match="SM3: momentum_type must be one of"):
        optimizers.SM3(momentum_type=7)


def test_the_per_weight_protocol_names_what_is_missing_or_mismatched():
    class OnlyInit(optimizers.Optimizer):
        def init(self, weights):
            return None

    opt = OnlyInit(0.1)
    slots, params = opt.tree_init(jnp.zeros(2))
    with pytest.raises(NotImplementedError, match="defines init\\(\\) but not update"):
        opt.tree_update(1, jnp.ones(2), jnp.zeros(2), slots, params)

    class Neither(optimizers.Optimizer):
        pass

    with pytest.raises(NotImplementedError, match="make_transform\\(\\) \\(optax\\) or init\\(\\)"):
        Neither(0.1).tree_init(jnp.zeros(2))
    sign = SignSGD(0.1)
    slots, params = sign.tree_init((jnp.zeros(2), jnp.zeros(3)))
    with pytest.raises(ValueError, match="one gradient and one slot entry per weight array \\(2\\); "
                                         "got 2 gradients and 1 slots"):
        sign.tree_update(1, (jnp.ones(2), jnp.ones(3)), (jnp.zeros(2), jnp.zeros(3)),
                         slots[:1], params)

    class NotAPair(optimizers.Optimizer):
        def init(self, weights):
            return None

        def update(self, step, grads, weights, slots, opt_params):
            return weights

    opt = NotAPair(0.1)
    slots, params = opt.tree_init(jnp.zeros(2))
    with pytest.raises(ValueError, match="NotAPair.update must return \\(new_weights, new_slots\\)"):
        opt.tree_update(1, jnp.ones(2), jnp.zeros(2), slots, params)
