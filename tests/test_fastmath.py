"""retrax.fastmath: Trax's tree helpers and random keys."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from retrax import fastmath
from retrax.fastmath import numpy as jnp
from retrax.fastmath import random


def test_numpy_is_jax_numpy():
    assert jnp is jax.numpy
    assert float(fastmath.logsumexp(jnp.array([0.0, 0.0]))) == pytest.approx(np.log(2.0))
    assert float(fastmath.expit(0.0)) == 0.5


def test_tree_flatten_trax_order():
    tree = ((1, ()), [2, {"b": 3, "a": (4, 5)}], None)
    # Lists, tuples and dict values (insertion order) recurse; () vanishes; None is a leaf.
    assert fastmath.tree_flatten(tree) == [1, 2, 3, 4, 5, None]
    assert fastmath.tree_leaves({"x": [1, 2]}) == [1, 2]


def test_tree_unflatten_returns_tree_and_rest():
    tree = ((1, ()), [2, {"b": 3}])
    new, rest = fastmath.tree_unflatten([10, 20, 30, 40], tree)
    assert new == ((10, ()), [20, {"b": 30}]) and rest == [40]
    marker = {"__marker_for_cached_weights_": ()}
    new, rest = fastmath.tree_unflatten([7], ((1,), marker), copy_from_tree=[marker])
    assert new == ((7,), marker) and rest == []
    with pytest.raises(ValueError, match="ran out of leaves"):
        fastmath.tree_unflatten([1], (1, 2))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32 + 5, -1])
def test_get_prng_equals_jax_prng_key(seed):
    key = random.get_prng(seed)
    assert key.dtype == np.uint32 and key.shape == (2,)
    np.testing.assert_array_equal(key, jax.random.PRNGKey(seed))


def test_random_functions_take_explicit_keys():
    k1, k2 = random.split(random.get_prng(0))
    a = random.uniform(k1, (3,))
    assert np.array_equal(a, random.uniform(k1, (3,)))
    assert not np.array_equal(a, random.uniform(k2, (3,)))
    assert random.fold_in(k1, 3).shape == (2,)


def test_backend_helpers():
    assert fastmath.backend_name() == "jax"
    assert fastmath.is_backend(fastmath.Backend.JAX)
    with fastmath.use_backend(fastmath.Backend.JAX):
        pass
    with pytest.raises(ValueError, match="supports only the JAX backend"):
        with fastmath.use_backend("tensorflow-numpy"):
            pass
    keys, values = fastmath.sort_key_val(jnp.array([3, 1, 2]), jnp.array([30, 10, 20]))
    assert keys.tolist() == [1, 2, 3] and values.tolist() == [10, 20, 30]


def test_dense_dot_split_path_equals_dot(monkeypatch):
    from retrax.fastmath import linalg

    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(512, 1024)).astype(np.float32))
    x = jnp.asarray(rng.normal(size=(1, 1, 512)).astype(np.float32))
    want = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    for cores in (1, 2, 3, 8):
        monkeypatch.setattr(linalg, "_cpu_slices", lambda cores=cores: cores)
        expected_slices = {1: 1, 2: 2, 3: 2, 8: 8}[cores]  # 512 % 3 != 0 -> 2
        assert linalg._slices_for(1, 512, 1024, np.float32) == expected_slices
        got = jax.jit(lambda x, w: linalg.dense_dot(x, w))(x, w)  # a fresh trace
        assert got.shape == (1, 1, 1024)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
        jaxpr = jax.make_jaxpr(lambda x, w: linalg.dense_dot(x, w))(x, w).jaxpr
        (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
        batch_dims = dot.params["dimension_numbers"][1]
        assert batch_dims == (((0,), (0,)) if expected_slices > 1 else ((), ()))
        assert dot.invars[1].aval.shape[0] == (expected_slices if expected_slices > 1 else 512)
        # Gradients agree with the plain product's.
        g1 = jax.grad(lambda w: jnp.sum(linalg.dense_dot(x, w) ** 2))(w)
        g2 = jax.grad(lambda w: jnp.sum(jnp.dot(x, w) ** 2))(w)
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g2), rtol=1e-4, atol=1e-3)
    # More than one row, small matrices and non-float32 never split.
    assert linalg._slices_for(2, 512, 1024, np.float32) == 1
    assert linalg._slices_for(1, 64, 64, np.float32) == 1
    assert linalg._slices_for(1, 512, 1024, jnp.bfloat16) == 1


def test_dense_dot_exports_with_a_symbolic_batch():
    from jax import export

    from retrax.fastmath import linalg

    w = jnp.ones((512, 1024), jnp.float32)
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, 512"), jnp.float32)
    exported = export.export(jax.jit(lambda x: linalg.dense_dot(x, w)))(spec)
    y = exported.call(jnp.ones((3, 512), jnp.float32))
    np.testing.assert_allclose(np.asarray(y), 512.0)


def test_dense_dot_never_splits_off_cpu(monkeypatch):
    from retrax.fastmath import linalg

    linalg._cpu_slices.cache_clear()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    try:
        assert linalg._cpu_slices() == 1
        assert linalg._slices_for(1, 512, 1024, np.float32) == 1
    finally:
        linalg._cpu_slices.cache_clear()
