"""The record a model keeps of its constructor call: ``{'name': ..., 'kwargs': {...}}``.

Every model function in :mod:`retrax.models` is wrapped in
:func:`records_config`, so the layer it returns remembers how it was built
(``mode`` left out, and ``remat`` unless True; callables such as ``ff_activation`` stored by name, tuples
as lists). :func:`config_of` reads that record; checkpoints and the training
loop write it next to the weights, and :func:`retrax.models.from_config`
rebuilds the model from it.

>>> from retrax import models
>>> lm = models.TransformerLM(vocab_size=32, d_model=16, d_ff=32, n_layers=1, n_heads=2)
>>> config = models.config_of(lm)
>>> config['name'], config['kwargs']['d_model'], config['kwargs']['ff_activation']
('TransformerLM', 16, 'Relu')
>>> models.config_of(models.from_config(config, mode='predict')) == config
True

This module is a leaf: it imports nothing from retrax.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["config_of", "set_config", "records_config"]

# The attribute of a layer that holds its record. Only this module reads or writes it.
_ATTRIBUTE = "_model_config"

# Arguments that change how a model computes, not what, recorded only when not at these
# defaults: records written before they existed stay equal to new ones.
_LEFT_OUT_AT = {"remat": False}


def config_of(model: Any) -> dict[str, Any] | None:
    """A copy of ``model``'s constructor config ``{'name', 'kwargs'}``; None if it has none.

    A model built by a function of :mod:`retrax.models` (directly or through
    ``from_config``) has one; a layer assembled by hand has none unless
    :func:`set_config` gave it one.
    """
    config = getattr(model, _ATTRIBUTE, None)
    return copy.deepcopy(config) if isinstance(config, dict) else None


def set_config(model: Any, config: dict[str, Any] | None) -> Any:
    """Records ``config`` (``{'name': str, 'kwargs': dict}``, or None to forget) on ``model``.

    For models not built by a :mod:`retrax.models` function that should still
    carry a config into checkpoints. Returns ``model``.
    """
    if config is None:
        if _ATTRIBUTE in vars(model):
            delattr(model, _ATTRIBUTE)
        return model
    if not (isinstance(config, dict) and isinstance(config.get("name"), str)
            and isinstance(config.get("kwargs", {}), dict)
            and not set(config) - {"name", "kwargs"}):
        raise ValueError(f"set_config: a model config is {{'name': <model>, 'kwargs': "
                         f"{{...}}}}; got {config!r}.")
    setattr(model, _ATTRIBUTE, {"name": config["name"],
                                "kwargs": copy.deepcopy(dict(config.get("kwargs", {})))})
    return model


def _json_value(value: Any) -> Any:
    """An argument as a JSON config holds it: callables by name, tuples as lists."""
    if callable(value):
        return getattr(value, "__name__", repr(value))
    if isinstance(value, tuple):
        return list(value)
    return value


def records_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: the layer ``fn`` returns records ``fn``'s name and its bound arguments.

    It records and nothing else: which functions :func:`retrax.models.from_config`
    knows is the explicit mapping in :mod:`retrax.models.config`.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Any:
        model = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        config = {name: _json_value(value) for name, value in bound.arguments.items()
                  if name != "mode" and not (name in _LEFT_OUT_AT
                                             and value is _LEFT_OUT_AT[name])}
        return set_config(model, {"name": fn.__name__, "kwargs": config})

    return build
