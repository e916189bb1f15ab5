"""``fastmath.ops`` at Trax's module path and the gin configurables Trax registers (issue 16)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as onp
import pytest

from retrax import fastmath
from retrax.fastmath import gin_configurables, ops


def test_ops_is_the_module_fastmath_re_exports():
    assert fastmath.ops is ops
    for name in ops.__all__:
        assert getattr(fastmath, name) is getattr(ops, name), name
    assert float(ops.index_add(jnp.zeros(3), 2, 4.0)[2]) == 4.0


def test_backend_dict_has_every_backend_under_its_name():
    assert set(ops._backend_dict) == set(ops.Backend)
    for backend, entry in ops._backend_dict.items():
        assert entry["name"] == backend.value
    assert ops._backend_dict[ops.Backend.JAX]["np"] is jnp
    assert ops._backend_dict[ops.Backend.NUMPY]["np"] is onp
    with pytest.raises(KeyError, match="needs TensorFlow"):
        ops._backend_dict[ops.Backend.TFNP]["np"]


def test_configurable_without_gin_returns_the_function(monkeypatch):
    monkeypatch.setattr(gin_configurables, "gin", None)

    def f(x=1):
        return x

    assert gin_configurables.configurable("f_without_gin", module="tests")(f) is f
    assert not gin_configurables.gin_available()


@pytest.fixture
def gin():
    gin = pytest.importorskip("gin")
    gin.clear_config()
    yield gin
    gin.clear_config()


def test_gin_binds_the_backend(gin):
    assert fastmath.backend()["np"] is jnp
    gin.parse_config("backend.name = 'numpy'")
    assert fastmath.backend()["np"] is onp and fastmath.backend_name() == "numpy"
    assert fastmath.numpy.isinf is onp.isinf  # fastmath.numpy follows it
    with fastmath.use_backend("jax"):  # use_backend still wins, as in Trax
        assert fastmath.backend_name() == "jax"
    assert fastmath.backend(name="jax")["name"] == "jax"  # an argument given wins over gin
    gin.clear_config()
    assert fastmath.backend_name() == "jax"


def test_gin_bindings_of_data_streams_parse_and_the_call_says_what_to_use(gin):
    gin.parse_config("data_streams.data_dir = '/data'\ndata_streams.dataset_name = 'mnist'")
    with pytest.raises(NotImplementedError, match=r"data\.TFDS\('mnist'"):
        gin_configurables.data_streams()
