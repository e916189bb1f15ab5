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
    # A real module (import retrax.fastmath.numpy as np) handing out jax.numpy's names.
    import importlib

    module = importlib.import_module("retrax.fastmath.numpy")
    assert module is jnp
    assert jnp.isinf is jax.numpy.isinf and jnp.inf == jax.numpy.inf
    assert jnp.float32 is jax.numpy.float32
    with pytest.raises(AttributeError, match="has no attribute 'no_such_function'"):
        jnp.no_such_function  # noqa: B018
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
    with pytest.raises(ValueError, match="'tensorflow-numpy' backend needs TensorFlow"):
        with fastmath.use_backend("tensorflow-numpy"):
            pass
    with pytest.raises(ValueError, match="no backend named 'torch'"):
        fastmath.set_backend("torch")
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
            square_256=slices(np.ones((1, 256), np.float32), np.ones((256, 256), np.float32)),
            qkv_256=slices(np.ones((1, 256), np.float32), np.ones((256, 768), np.float32)),
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
    # More than one row, small matrices (up to 256x256) and non-float32 never split;
    # a fused q/k/v projection of d_model 256 (256x768) does.
    assert (got["two_rows"], got["small"], got["square_256"], got["bfloat16"]) == (1, 1, 1, 1)
    assert got["qkv_256"] == min(expected_slices, 4)  # 256 / 8 slices < 64 elements each


def test_dense_dot_exports_with_a_symbolic_batch():
    from jax import export

    from retrax.fastmath import linalg

    w = jnp.ones((512, 1024), jnp.float32)
    spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, 512"), jnp.float32)
    exported = export.export(jax.jit(lambda x: linalg.dense_dot(x, w)))(spec)
    y = exported.call(jnp.ones((3, 512), jnp.float32))
    np.testing.assert_allclose(np.asarray(y), 512.0)


def test_the_numpy_backend_switches_fastmath_numpy_and_layers_refuse_it():
    from retrax import layers as tl

    assert fastmath.backend()["np"] is jax.numpy
    with fastmath.use_backend(fastmath.Backend.NUMPY):
        assert fastmath.backend_name() == "numpy" and fastmath.backend()["np"] is np
        assert jnp.isinf is np.isinf and type(jnp.ones(2)) is np.ndarray
        assert fastmath.local_device_count() == 1 == fastmath.global_device_count()
        with pytest.raises(RuntimeError, match="retrax layers compute with JAX only"):
            tl.Dense(2).init(__import__("retrax").shapes.ShapeDtype((1, 3)))
    assert fastmath.backend_name() == "jax"
    fastmath.set_backend("numpy")
    try:
        assert fastmath.backend_name() == "numpy"
        with fastmath.use_backend("jax"):  # use_backend wins over set_backend
            assert fastmath.backend_name() == "jax"
    finally:
        fastmath.set_backend(None)
    assert fastmath.backend_name() == "jax"


def test_nested_helpers_follow_trax():
    import collections

    pair = collections.namedtuple("pair", ["x"])
    tree = {"a": ([0, 1], 2), "b": pair(3), "c": None}
    assert fastmath.nested_map(lambda v: v + 1, tree) == {"a": ([1, 2], 3), "b": pair(4),
                                                          "c": None}
    stacked = fastmath.nested_stack([{"a": ([0, 1], 2), "b": pair(3)},
                                     {"a": ([1, 2], 3), "b": pair(4)}])
    assert [v.tolist() for v in stacked["a"][0]] == [[0, 1], [1, 2]]
    assert stacked["a"][1].tolist() == [2, 3] and stacked["b"].x.tolist() == [3, 4]
    assert fastmath.nested_map_multiarg(lambda a, b: a * b, [1, (2, 3)], [4, (5, 6)]) == \
        [4, (10, 18)]
    assert fastmath.nested_map(len, [[1, 2], [3]], level=1) == [2, 1]
    with pytest.raises(ValueError, match="non-empty list"):
        fastmath.nested_zip([])


def test_ops_trax_programs_call():
    x = jnp.zeros(4)
    assert fastmath.index_update(x, 1, 7.0).tolist() == [0, 7, 0, 0]
    assert fastmath.index_add(jnp.ones(3), jnp.array([0, 0]), 1.0).tolist() == [3, 1, 1]
    assert fastmath.index_max(jnp.ones(2), 0, 5.0).tolist() == [5, 1]
    assert fastmath.index_min(jnp.ones(2), 1, -1.0).tolist() == [1, -1]
    assert fastmath.dynamic_slice(jnp.arange(6), (2,), (3,)).tolist() == [2, 3, 4]
    assert fastmath.fori_loop(2, 5, lambda i, v: v + i, 1) == 1 + 2 + 3 + 4
    out, pullback = fastmath.vjp(lambda v: v * v, 3.0)
    assert float(pullback(1.0)[0]) == 6.0
    # custom_vjp with a non-differentiated argument in front, as Trax allows.
    scaled = fastmath.custom_vjp(lambda k, v: k * v, lambda k, v: (k * v, None),
                                 lambda k, _, g: (10.0 * g,), nondiff_argnums=(0,))
    assert float(jax.grad(scaled, argnums=1)(2.0, 1.0)) == 10.0
    remat_sq = fastmath.remat(lambda v: jnp.sin(v) * v)
    assert float(jax.grad(remat_sq)(1.0)) == pytest.approx(np.cos(1.0) + np.sin(1.0))
    with fastmath.disable_jit():
        assert float(fastmath.jit(lambda v: v + 1)(1.0)) == 2.0
