"""retrax.optimizers.norms: the optimizers' L2 statistics against a float64 NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np

from retrax import optimizers as opts
from retrax.optimizers import norms


def _reference(tree):
    return np.sqrt(sum(np.sum(np.abs(np.asarray(x, np.complex128)) ** 2)
                       for x in jax.tree.leaves(tree)))


def _mixed_tree(seed=0):
    """Small leaves (joined into one sum) and large ones (a sum each), empty leaves too."""
    rng = np.random.default_rng(seed)
    big = norms.SMALL_LEAF + 1
    return {
        "kernels": [rng.normal(size=(3, 3, 16, 32)).astype(np.float32),   # 4608: large
                    rng.normal(size=(big,)).astype(np.float32)],
        "edge": rng.normal(size=(norms.SMALL_LEAF,)).astype(np.float32),  # small
        "biases": tuple(rng.normal(size=(n,)).astype(np.float32) for n in (1, 16, 64)),
        "empty": (np.zeros((0, 3), np.float32), ()),
        "scalar": np.float32(-2.5),
    }


def test_sum_of_squares_matches_float64_reference():
    tree = _mixed_tree()
    got = float(norms.sum_of_squares(tree))
    np.testing.assert_allclose(got, _reference(tree) ** 2, rtol=2e-6)
    np.testing.assert_allclose(float(norms.l2_norm(tree)), _reference(tree), rtol=1e-6)


def test_only_small_or_only_large_leaves():
    small = (np.array([3.0], np.float32), np.array([[4.0, 12.0]], np.float32))
    assert float(norms.l2_norm(small)) == 13.0
    large = (np.full((norms.SMALL_LEAF + 1,), 2.0, np.float32),)
    np.testing.assert_allclose(float(norms.l2_norm(large)),
                               2.0 * np.sqrt(norms.SMALL_LEAF + 1), rtol=1e-6)
    assert float(norms.l2_norm({"a": (), "b": np.zeros((0,), np.float32)})) == 0.0


def test_dtypes_half_int_float64_complex():
    tree = (jnp.array([3.0, 4.0], jnp.bfloat16), np.array([1, 2], np.int32),
            np.full((norms.SMALL_LEAF + 3,), 0.5, np.float64), np.array([3 + 4j], np.complex64))
    want = 25.0 + 5.0 + 0.25 * (norms.SMALL_LEAF + 3) + 25.0
    got = norms.sum_of_squares(tree)
    assert got.dtype == (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)
    # Half precision is squared and summed in float32 (bfloat16 would round 9e7).
    halves = (jnp.full((1000,), 300.0, jnp.bfloat16),)
    assert float(norms.sum_of_squares(halves)) == 9e7


def test_jit_equals_eager():
    tree = _mixed_tree(1)
    np.testing.assert_allclose(float(jax.jit(norms.l2_norm)(tree)),
                               float(norms.l2_norm(tree)), rtol=1e-6)


def test_optimizer_stats_are_reference_norms_before_update():
    """Adam's gradients_l2 (before clipping) and weights_l2 (before the update)."""
    weights = _mixed_tree(2)
    grads = jax.tree.map(lambda x: 3.0 * np.asarray(x) + 1.0, weights)
    opt = opts.Adam(learning_rate=0.1, clip_grad_norm=1.0)
    slots, params = opt.tree_init(weights)
    _, _, stats = jax.jit(opt.tree_update)(1, grads, weights, slots, params)
    np.testing.assert_allclose(float(stats["gradients_l2"]), _reference(grads), rtol=1e-6)
    np.testing.assert_allclose(float(stats["weights_l2"]), _reference(weights), rtol=1e-6)
    assert opts.l2_norm is norms.l2_norm


def test_small_leaves_share_one_reduction():
    """50 biases and 2 large kernels: 3 sums of squares and the sum of those, not 52."""
    tree = ([np.ones((16,), np.float32)] * 50,
            [np.ones((norms.SMALL_LEAF + 1,), np.float32)] * 2)
    jaxpr = jax.make_jaxpr(norms.sum_of_squares)(tree)
    sums = [e for e in jaxpr.eqns if e.primitive.name == "reduce_sum"]
    assert len(sums) == 4
    assert float(norms.sum_of_squares(tree)) == 50 * 16 + 2 * (norms.SMALL_LEAF + 1)
