"""Tests for retrax.optimizers against hand computations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from retrax import optimizers as opts

W0 = np.array([1.0, -2.0], np.float32)
G1 = np.array([0.5, 1.0], np.float32)
G2 = np.array([-1.0, 2.0], np.float32)


def _steps(opt, weights, grads_list, opt_params=None):
    slots, params = opt.tree_init(weights)
    if opt_params:
        params.update({k: jnp.asarray(v) for k, v in opt_params.items()})
    out = []
    for i, g in enumerate(grads_list, start=1):
        weights, slots, stats = opt.tree_update(i, g, weights, slots, params)
        out.append(np.asarray(weights))
    return out, slots


def test_sgd_one_step_exact():
    (w1,), _ = _steps(opts.SGD(learning_rate=0.1), jnp.asarray(W0), [G1])
    np.testing.assert_allclose(w1, [0.95, -2.1], rtol=1e-7)


def test_adam_two_steps_vs_hand_computation():
    lr, wd, b1, b2, eps = 0.01, 0.1, 0.9, 0.999, 1e-5
    opt = opts.Adam(learning_rate=lr, weight_decay_rate=wd, b1=b1, b2=b2,
                    eps=eps)
    (w1, w2), _ = _steps(opt, jnp.asarray(W0), [G1, G2])
    w, m, v = W0.astype(np.float64), 0.0, 0.0
    expected = []
    for t, g in enumerate([G1, G2], start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
        w = (1 - wd) * w - lr * mhat / (np.sqrt(vhat) + eps)
        expected.append(w)
    np.testing.assert_allclose(w1, expected[0], rtol=1e-6)
    np.testing.assert_allclose(w2, expected[1], rtol=1e-6)
    # First step with standard bias correction moves each weight by ~lr.
    np.testing.assert_allclose((1 - wd) * W0 - w1, lr * np.sign(G1), rtol=1e-4)


def test_adam_weight_decay_is_not_scaled_by_learning_rate():
    opt = opts.Adam(learning_rate=0.0, weight_decay_rate=0.1)
    (w1,), _ = _steps(opt, jnp.asarray(W0), [G1])
    np.testing.assert_allclose(w1, 0.9 * W0, rtol=1e-7)


def test_adamw_decay_is_scaled_by_learning_rate():
    opt = opts.AdamW(learning_rate=0.1, weight_decay_rate=0.5, eps=0.0)
    (w1,), _ = _steps(opt, jnp.asarray(W0), [G1])
    np.testing.assert_allclose(w1, W0 - 0.1 * (np.sign(G1) + 0.5 * W0),
                               rtol=1e-6)


@pytest.mark.parametrize('nesterov', [True, False])
def test_momentum_vs_hand_computation(nesterov):
    lr, mass, wd = 0.1, 0.9, 0.01
    opt = opts.Momentum(learning_rate=lr, mass=mass, weight_decay_rate=wd,
                        nesterov=nesterov)
    ws, _ = _steps(opt, jnp.asarray(W0), [G1, G2])
    w, vel = W0.astype(np.float64), 0.0
    for got, g in zip(ws, [G1, G2]):
        vel = mass * vel + g
        update = mass * vel + g if nesterov else vel
        w = (1 - wd) * w - lr * update
        np.testing.assert_allclose(got, w, rtol=1e-6)


def test_rmsprop_vs_hand_computation_with_ones_init():
    lr, gamma, eps = 0.01, 0.9, 1e-8
    opt = opts.RMSProp(learning_rate=lr, gamma=gamma, eps=eps)
    ws, slots = _steps(opt, jnp.asarray(W0), [G1, G2])
    w, avg = W0.astype(np.float64), np.ones(2)
    for got, g in zip(ws, [G1, G2]):
        avg = gamma * avg + (1 - gamma) * g * g
        w = w - lr * g / (np.sqrt(avg) + eps)
        np.testing.assert_allclose(got, w, rtol=1e-6)
    np.testing.assert_allclose(opts.flat_slots(slots)[0], avg, rtol=1e-6)


def test_adafactor_first_step_vs_hand_computation():
    lr, wd, eps1, eps2 = 0.05, 0.01, 1e-16, 1e-3
    w = np.array([[0.5, -1.0, 2.0], [1.0, 0.25, -0.5]], np.float32)
    g = np.array([[0.1, -0.4, 0.2], [0.3, 0.05, -0.6]], np.float32)
    opt = opts.Adafactor(learning_rate=lr, weight_decay_rate=wd,
                         clipping_threshold=1.0)
    (got,), _ = _steps(opt, jnp.asarray(w), [g])
    g2 = g.astype(np.float64) ** 2 + eps1
    rows, cols = g2.mean(axis=1), g2.mean(axis=0)
    vhat = np.outer(rows, cols) / rows.mean()
    y = g / np.sqrt(vhat)
    y = y / max(1.0, np.sqrt(np.mean(y * y)) / 1.0)
    scale = lr * max(np.sqrt(np.mean(w.astype(np.float64) ** 2)), eps2)
    np.testing.assert_allclose(got, (1 - wd) * w - scale * y, rtol=1e-5)


def test_adafactor_weight_decay_n_steps_anneals_linearly():
    opt = opts.Adafactor(learning_rate=0.0, weight_decay_rate=0.1,
                         weight_decay_n_steps=2)
    zeros = jnp.zeros(2)
    ws, _ = _steps(opt, jnp.asarray(W0), [zeros + 1.0] * 3)
    np.testing.assert_allclose(ws[0], 0.9 * W0, rtol=1e-6)
    np.testing.assert_allclose(ws[1], 0.95 * ws[0], rtol=1e-6)
    np.testing.assert_allclose(ws[2], ws[1], rtol=1e-6)


def test_clip_grad_norm_scales_exactly():
    opt = opts.SGD(learning_rate=1.0, clip_grad_norm=1.0)
    w = jnp.zeros(2)
    slots, params = opt.tree_init(w)
    new_w, _, stats = opt.tree_update(1, jnp.array([3.0, 4.0]), w, slots,
                                      params)
    np.testing.assert_allclose(new_w, [-0.6, -0.8], rtol=1e-6)
    assert float(stats['gradients_l2']) == 5.0
    small, _, _ = opt.tree_update(1, jnp.array([0.3, 0.4]), w, slots, params)
    np.testing.assert_allclose(small, [-0.3, -0.4], rtol=1e-7)


def test_clip_grads_and_l2_norm():
    tree = (jnp.array([3.0]), (), (jnp.array([4.0]),))
    assert float(opts.l2_norm(tree)) == 5.0
    clipped = opts.clip_grads(tree, 2.5)
    np.testing.assert_allclose(clipped[0], [1.5], rtol=1e-6)
    np.testing.assert_allclose(clipped[2][0], [2.0], rtol=1e-6)
    unclipped = opts.clip_grads(tree, 10.0)
    np.testing.assert_array_equal(unclipped[2][0], [4.0])


def test_stats_are_l2_norms_before_update():
    opt = opts.Adam()
    w = (jnp.array([6.0, 8.0]),)
    slots, params = opt.tree_init(w)
    _, _, stats = opt.tree_update(1, (jnp.array([0.0, 2.0]),), w, slots,
                                  params)
    assert sorted(stats) == ['gradients_l2', 'weights_l2']
    assert float(stats['gradients_l2']) == 2.0
    assert float(stats['weights_l2']) == 10.0


def test_jit_matches_eager():
    opt = opts.Adam(learning_rate=0.01, weight_decay_rate=0.01)
    w = (jnp.asarray(W0), (), (jnp.ones((2, 3)),))
    grads = [jax.tree.map(lambda x, s=s: s * jnp.ones_like(x), w)
             for s in (0.5, -1.0, 2.0)]
    jitted = jax.jit(opt.tree_update)
    slots_e, params = opt.tree_init(w)
    slots_j, w_e, w_j = slots_e, w, w
    for i, g in enumerate(grads, start=1):
        w_e, slots_e, st_e = opt.tree_update(i, g, w_e, slots_e, params)
        w_j, slots_j, st_j = jitted(i, g, w_j, slots_j, params)
    for a, b in zip(jax.tree.leaves((w_e, slots_e, st_e)),
                    jax.tree.leaves((w_j, slots_j, st_j))):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_learning_rate_change_does_not_recompile():
    traces = []
    opt = opts.SGD(learning_rate=0.1)

    @jax.jit
    def step(weights, slots, opt_params):
        traces.append(1)
        new_w, new_slots, _ = opt.tree_update(0, jnp.ones_like(weights),
                                              weights, slots, opt_params)
        return new_w, new_slots

    w = jnp.zeros(2)
    slots, params = opt.tree_init(w)
    results = []
    for lr in (0.1, 0.2, 0.5):
        params['learning_rate'] = jnp.asarray(lr, jnp.float32)
        new_w, slots = step(w, slots, params)
        results.append(float(new_w[0]))
    assert len(traces) == 1
    np.testing.assert_allclose(results, [-0.1, -0.2, -0.5], rtol=1e-6)
    assert float(slots.hyperparams['learning_rate']) == pytest.approx(0.5)


ALL_OPTIMIZERS = [opts.SGD, opts.Momentum, opts.RMSProp, opts.Adam,
                  opts.AdamW, opts.Adafactor]


@pytest.mark.parametrize('cls', ALL_OPTIMIZERS)
def test_default_optimizers_decrease_quadratic_loss(cls):
    target = (jnp.full((3, 4), 1.5), (), (jnp.full((4,), -1.5),))

    def loss(w):
        return sum(jnp.sum((a - b) ** 2) for a, b in
                   zip(jax.tree.leaves(w), jax.tree.leaves(target)))

    opt = cls()
    w = (jnp.full((3, 4), 0.5), (), (jnp.full((4,), -0.5),))
    slots, params = opt.tree_init(w)

    @jax.jit
    def step(i, w, slots):
        g = jax.grad(loss)(w)
        new_w, new_slots, _ = opt.tree_update(i, g, w, slots, params)
        return new_w, new_slots

    initial = float(loss(w))
    for i in range(1, 101):
        w, slots = step(i, w, slots)
    assert float(loss(w)) < 0.99 * initial
    assert jax.tree.structure(w) == jax.tree.structure(target)


@pytest.mark.parametrize('cls', ALL_OPTIMIZERS)
def test_empty_tuple_leaves(cls):
    w = ((), jnp.ones(2), ((), (jnp.ones((2, 2)),)), ())
    g = jax.tree.map(jnp.ones_like, w)
    opt = cls(learning_rate=0.1)
    slots, params = opt.tree_init(w)
    new_w, new_slots, stats = jax.jit(opt.tree_update)(1, g, w, slots, params)
    assert new_w[0] == () and new_w[2][0] == () and new_w[3] == ()
    assert new_w[1].shape == (2,) and new_w[2][1][0].shape == (2, 2)
    assert float(stats['weights_l2']) == pytest.approx(np.sqrt(6.0))


def test_empty_weights():
    opt = opts.Adam()
    slots, params = opt.tree_init(())
    new_w, _, stats = opt.tree_update(1, (), (), slots, params)
    assert new_w == () and float(stats['gradients_l2']) == 0.0


def test_opt_params_and_repr():
    opt = opts.Adam()
    params = opt.opt_params
    assert sorted(params) == ['b1', 'b2', 'eps', 'learning_rate',
                              'weight_decay_rate']
    assert all(v.dtype == jnp.float32 and v.shape == () for v in
               params.values())
    assert float(params['learning_rate']) == pytest.approx(1e-4)
    assert float(params['eps']) == pytest.approx(1e-5)
    assert repr(opts.SGD(0.5, clip_grad_norm=1.0)) == (
        'SGD(learning_rate=0.5, clip_grad_norm=1.0)')


def test_trax_defaults():
    assert opts.Momentum().opt_params.keys() == {
        'learning_rate', 'mass', 'weight_decay_rate'}
    assert float(opts.RMSProp().opt_params['learning_rate']) == (
        pytest.approx(1e-3))
    adafactor = opts.Adafactor().opt_params
    assert float(adafactor['learning_rate']) == pytest.approx(0.05)
    assert float(adafactor['decay_rate']) == pytest.approx(0.8)
    assert float(adafactor['epsilon1']) == pytest.approx(1e-16)


def test_bfloat16_weights_keep_dtype_and_float32_hyperparams():
    opt = opts.Adam(learning_rate=0.01)
    w = (jnp.ones(3, jnp.bfloat16),)
    slots, params = opt.tree_init(w)
    assert slots.hyperparams['b2'].dtype == jnp.float32
    new_w, slots, _ = opt.tree_update(1, w, w, slots, params)
    assert new_w[0].dtype == jnp.bfloat16
    assert float(slots.hyperparams['b2']) == pytest.approx(0.999)


def test_to_optax_matches_tree_update():
    opt = opts.Momentum(learning_rate=0.1)
    w = (jnp.asarray(W0),)
    tx = opt.to_optax()
    assert isinstance(tx, optax.GradientTransformation)
    state = tx.init(w)
    updates, state = tx.update((jnp.asarray(G1),), state, w)
    raw = optax.apply_updates(w, updates)
    (ours,), _ = _steps(opt, w, [(jnp.asarray(G1),)])
    np.testing.assert_allclose(raw[0], ours[0], rtol=1e-7)


def test_optimizer_pickles_after_use():
    import pickle
    opt = opts.Adafactor(learning_rate=0.1, do_momentum=True)
    opt.tree_init(jnp.ones((2, 2)))
    clone = pickle.loads(pickle.dumps(opt))
    assert repr(clone) == repr(opt)
    (a,), _ = _steps(opt, jnp.ones((2, 2)), [jnp.ones((2, 2))])
    (b,), _ = _steps(clone, jnp.ones((2, 2)), [jnp.ones((2, 2))])
    np.testing.assert_array_equal(a, b)


def test_unknown_opt_params_key():
    opt = opts.SGD()
    slots, params = opt.tree_init(jnp.ones(1))
    params['momentum'] = jnp.array(0.9)
    with pytest.raises(ValueError, match=r"SGD: opt_params has unknown keys "
                       r"\['momentum'\]"):
        opt.tree_update(1, jnp.ones(1), jnp.ones(1), slots, params)


def test_flat_slots_adam_order_and_roundtrip():
    opt = opts.Adam()
    w = (jnp.zeros(2), (), (jnp.zeros((1, 3)),))
    g = (jnp.array([1.0, 2.0]), (), (jnp.full((1, 3), 3.0),))
    slots, params = opt.tree_init(w)
    _, slots, _ = opt.tree_update(1, g, w, slots, params)
    flat = opts.flat_slots(slots)
    assert [a.shape for a in flat] == [(2,), (2,), (1, 3), (1, 3)]
    assert all(isinstance(a, np.ndarray) for a in flat)
    np.testing.assert_allclose(flat[0], [0.1, 0.2], rtol=1e-6)   # m_0
    np.testing.assert_allclose(flat[1], [1e-3, 4e-3], rtol=1e-4)  # v_0
    np.testing.assert_allclose(flat[2], np.full((1, 3), 0.3), rtol=1e-6)
    np.testing.assert_allclose(flat[3], np.full((1, 3), 9e-3), rtol=1e-4)

    fresh, _ = opt.tree_init(w)
    restored = opts.unflat_slots(flat, fresh, count=1)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(slots)):
        np.testing.assert_allclose(a, b, rtol=1e-7)
    with pytest.raises(ValueError, match='got 3 arrays, expected 4'):
        opts.unflat_slots(flat[:3], fresh)
    with pytest.raises(ValueError, match='shape'):
        opts.unflat_slots([flat[1], flat[0], flat[3], flat[3][0]], fresh)


def test_flat_slots_other_optimizers():
    w = (jnp.zeros(2), (jnp.zeros((2, 3)),))
    assert opts.flat_slots(opts.SGD().tree_init(w)[0]) == []
    assert [a.shape for a in
            opts.flat_slots(opts.Momentum().tree_init(w)[0])] == [(2,), (2, 3)]
    rms = opts.flat_slots(opts.RMSProp().tree_init(w)[0])
    assert [a.tolist() for a in rms[:1]] == [[1.0, 1.0]]
    sgd_clip = opts.SGD(clip_grad_norm=1.0).tree_init(w)[0]
    assert opts.flat_slots(sgd_clip) == []
    assert len(opts.flat_slots(opts.Adafactor().tree_init(w)[0])) == 6


@pytest.mark.parametrize('make, pattern', [
    (lambda: opts.SGD(learning_rate=-0.1),
     r"SGD: learning_rate must be a finite number >= 0 \(float32: at most 3.4e\+38\), got -0.1\."),
    (lambda: opts.Adam(b1=1.0), r"Adam: b1 must be a number in \[0, 1\), "
                                r"got 1.0\."),
    (lambda: opts.Adam(b2=-0.5), r"Adam: b2 .* got -0.5"),
    (lambda: opts.AdamW(eps=-1.0), r"AdamW: eps .* got -1.0"),
    (lambda: opts.SGD(clip_grad_norm=0.0),
     r"SGD: clip_grad_norm must be a finite number > 0 \(float32: at most 3.4e\+38\), got 0.0\."),
    (lambda: opts.Adam(clip_grad_norm=float('inf')),
     r"Adam: clip_grad_norm .* got inf"),
    (lambda: opts.Momentum(mass=1.5), r"Momentum: mass .* got 1.5"),
    (lambda: opts.RMSProp(gamma=1.0), r"RMSProp: gamma .* got 1.0"),
    (lambda: opts.Adafactor(weight_decay_n_steps=-1),
     r"Adafactor: weight_decay_n_steps must be an integer >= 0, got -1\."),
    (lambda: opts.Adafactor(decay_rate=0.0), r"Adafactor: decay_rate"),
    (lambda: opts.Adam(learning_rate='fast'),
     r"Adam: learning_rate must be .* got 'fast'\."),
    (lambda: opts.Adam(learning_rate=float('nan')),
     r"Adam: learning_rate .* got nan"),
])
def test_invalid_arguments(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_zero_learning_rate_is_allowed():
    # Trax's legacy Trainer builds optimizers with learning_rate=0.0.
    (w1,), _ = _steps(opts.SGD(learning_rate=0.0), jnp.asarray(W0), [G1])
    np.testing.assert_array_equal(w1, W0)
