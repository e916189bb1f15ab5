"""Model configurations as data: recorded on built models, rebuilt from JSON.

Every model function in :mod:`retrax.models` records how it was called on the
layer it returns (``model._model_config = {'name': ..., 'kwargs': ...}``, with
``mode`` left out and ``ff_activation`` stored by name). Checkpoints and the
training loop write that record next to the weights, so a checkpoint can be
rebuilt without knowing its code.

>>> from retrax import models
>>> lm = models.TransformerLM(vocab_size=32, d_model=16, d_ff=32, n_layers=1, n_heads=2)
>>> lm._model_config['kwargs']['d_model'], lm._model_config['kwargs']['ff_activation']
(16, 'Relu')
>>> again = models.from_config(lm._model_config, mode='predict')
>>> again._model_config == lm._model_config
True
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["records_config", "from_config"]

_REGISTRY: dict[str, Callable[..., Any]] = {}


def records_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the returned layer remembers the (JSON-able) call arguments."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Any:
        model = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = {}
        for name, value in bound.arguments.items():
            if name == "mode":
                continue
            if callable(value):
                value = getattr(value, "__name__", repr(value))
            elif isinstance(value, tuple):
                value = list(value)
            config[name] = value
        model._model_config = {"name": fn.__name__, "kwargs": config}
        return model

    _REGISTRY[fn.__name__] = build
    return build


def from_config(config: dict[str, Any], mode: str = "train", **overrides: Any) -> Any:
    """Builds the model described by ``{'name': ..., 'kwargs': {...}}`` in ``mode``."""
    from retrax import layers as tl

    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(
            f"from_config: expected {{'name': <model>, 'kwargs': {{...}}}}; got {config!r}."
        )
    name = config["name"]
    if name not in _REGISTRY:
        raise ValueError(f"from_config: unknown model {name!r}; known: {sorted(_REGISTRY)}.")
    kwargs = dict(config.get("kwargs", {}))
    kwargs.update(overrides)
    activation = kwargs.get("ff_activation")
    if isinstance(activation, str):
        if not hasattr(tl, activation):
            raise ValueError(f"from_config: unknown ff_activation {activation!r}.")
        kwargs["ff_activation"] = getattr(tl, activation)
    if isinstance(kwargs.get("dropout_shared_axes"), list):
        kwargs["dropout_shared_axes"] = tuple(kwargs["dropout_shared_axes"])
    return _REGISTRY[name](**kwargs, mode=mode)
