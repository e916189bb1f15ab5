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
