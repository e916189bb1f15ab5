"""retrax.fastmath: Trax's tree helpers and random keys."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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


# dense_dot reads the cores this process may use once (os.sched_getaffinity, cached).
# A child process pretends to have each number of cores (and an accelerator), reloading
# the module each time, and reports what dense_dot does: the number of slices in its
# jaxpr and its error against a float64 product, for the value and the gradient.
DENSE_DOT_SCRIPT = textwrap.dedent("""
    import importlib, json, os
    import jax, jax.numpy as jnp, numpy as np
    from retrax.fastmath import linalg

    def slices(x, w):
        jaxpr = jax.make_jaxpr(lambda x, w: linalg.dense_dot(x, w))(x, w).jaxpr
        (dot,) = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
        batch_dims = dot.params["dimension_numbers"][1]
        if batch_dims == ((), ()):
            return 1
        assert batch_dims == ((0,), (0,)), batch_dims
        return dot.invars[1].aval.shape[0]

    rng = np.random.default_rng(0)
    w = rng.normal(size=(512, 1024)).astype(np.float32)
    x = rng.normal(size=(1, 1, 512)).astype(np.float32)
    want = x.astype(np.float64) @ w.astype(np.float64)
    grad_want = np.asarray(jax.grad(lambda w: jnp.sum(jnp.dot(x, w) ** 2))(w))
    report = {}
    real_backend = jax.default_backend
    for cores, backend in ((1, "cpu"), (2, "cpu"), (3, "cpu"), (8, "cpu"), (8, "gpu")):
        os.sched_getaffinity = lambda pid, cores=cores: set(range(cores))
        jax.default_backend = real_backend if backend == "cpu" else (lambda: backend)
        importlib.reload(linalg)  # a fresh cache of the core count
        got = jax.jit(lambda x, w: linalg.dense_dot(x, w))(x, w)
        grad = jax.grad(lambda w: jnp.sum(linalg.dense_dot(x, w) ** 2))(w)
        bf16 = jnp.asarray(w, jnp.bfloat16)
        report[f"{cores} {backend}"] = dict(
            slices=slices(x, w), shape=list(got.shape),
            error=float(np.abs(np.asarray(got) - want).max()),
            grad_error=float(np.abs(np.asarray(grad) - grad_want).max()),
            two_rows=slices(np.ones((2, 512), np.float32), w),
            small=slices(np.ones((1, 64), np.float32), np.ones((64, 64), np.float32)),
            bfloat16=slices(jnp.ones((1, 512), jnp.bfloat16), bf16))
    print(json.dumps(report))
""")


@pytest.fixture(scope="module")
def dense_dot_report():
    r = subprocess.run([sys.executable, "-c", DENSE_DOT_SCRIPT], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cores, backend, expected_slices", [
    (1, "cpu", 1), (2, "cpu", 2), (3, "cpu", 2),  # 512 % 3 != 0 -> 2
    (8, "cpu", 8), (8, "gpu", 1),                  # never split off CPU
])
def test_dense_dot_splits_one_row_across_cores_and_equals_dot(dense_dot_report, cores, backend,
                                                              expected_slices):
    got = dense_dot_report[f"{cores} {backend}"]
    assert got["slices"] == expected_slices
    assert got["shape"] == [1, 1, 1024]
    # float32 rounding of sums of 512 products (values up to ~80, gradients up to ~500).
    assert got["error"] < 2e-4 and got["grad_error"] < 2e-3
    # More than one row, small matrices and non-float32 never split.
    assert (got["two_rows"], got["small"], got["bfloat16"]) == (1, 1, 1)


def test_dense_dot_exports_with_a_symbolic_batch():
    from jax import export

    from retrax.fastmath import linalg

    w = jnp.ones((512, 1024), jnp.float32)
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, 512"), jnp.float32)
    exported = export.export(jax.jit(lambda x: linalg.dense_dot(x, w)))(spec)
    y = exported.call(jnp.ones((3, 512), jnp.float32))
    np.testing.assert_allclose(np.asarray(y), 512.0)
