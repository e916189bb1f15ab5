"""Gin-config support: the configurables Trax registers, when ``gin-config`` is installed.

Trax programs configure with gin (``gin.parse_config("backend.name = 'numpy'")``,
``data_streams.data_dir = ...`` in ``.gin`` files). retrax does not need gin:
without it nothing here imports it and :func:`configurable` returns the
function unchanged. With it, the functions Trax makes configurable are
registered under Trax's names, so Trax's gin files and bindings find them.

Registered: ``backend`` (``retrax.fastmath.backend``'s ``name``) and
``data_streams`` (Trax's TFDS reader; it needs TensorFlow, so calling it
raises and names retrax's way, ``data.TFDS``). A registered function reads
gin's bindings only while gin holds some: otherwise it is a plain call (a
gin-wrapped call costs microseconds, and ``fastmath.numpy`` asks for the
backend at every attribute it hands out).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

try:
    import gin
except ImportError:  # gin-config is optional
    gin = None

__all__ = ["configurable", "data_streams", "gin_available"]


def gin_available() -> bool:
    """True when ``gin-config`` is installed (and the configurables are registered)."""
    return gin is not None


def _gin_holds_bindings() -> bool:
    config = getattr(getattr(gin, "config", None), "_CONFIG", None)
    return config is None or bool(config)  # Unknown gin internals: always ask gin.


def configurable(name: str, module: str) -> Callable[[Callable], Callable]:
    """Registers the decorated function as gin configurable ``module.name`` (if gin is installed).

    Without gin the function is returned as it is.
    """
    def register(fn: Callable) -> Callable:
        if gin is None:
            return fn
        configured = gin.external_configurable(fn, name=name, module=module)

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if _gin_holds_bindings():
                return configured(*args, **kwargs)
            return fn(*args, **kwargs)

        return call

    return register


@configurable("data_streams", module="retrax.data")
def data_streams(dataset_name: Any = None, data_dir: Any = None, preprocess_fn: Any = None,
                 bare_preprocess_fn: Any = None, shuffle_buffer_size: int = 1024,
                 eval_holdout_size: int = 0, input_name: Any = None,
                 target_name: Any = None) -> Any:
    """Trax's ``data_streams`` (``trax.data.tf_inputs``), by name: it needs TensorFlow.

    Registered so that Trax's gin files that bind ``data_streams.*`` parse;
    calling it raises and says what to use instead.
    """
    raise NotImplementedError(
        f"data_streams({dataset_name!r}) is Trax's TensorFlow reader (trax.data.tf_inputs), "
        f"which retrax does not have. Read the dataset with retrax's data pipeline instead, "
        f"e.g. trax.data.Serial(trax.data.TFDS({dataset_name!r}, keys=(...), train=True), "
        f"...), or trax.data.HFDataset for Hugging Face datasets.")
