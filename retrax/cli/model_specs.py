"""Models named on the command line: specs, config sections, ``--model``/``--config``.

A model is given as a spec ``Name:k=v,...``, a config section (flat
``{"name": ..., arg: value}`` or ``{"name": ..., "kwargs": {...}}``) or
``--model``/``--config`` flags; each becomes ``{'name', 'kwargs'}`` and is built
by :func:`retrax.models.from_config`, the one model factory, which records the
config on the model (:func:`retrax.models.config_of`).

>>> parse_model_spec('TransformerLM:d_model=32,n_layers=2,vocab_size=32')
{'name': 'TransformerLM', 'kwargs': {'d_model': 32, 'n_layers': 2, 'vocab_size': 32}}
>>> normalize_model_config({'name': 'TransformerLM', 'd_model': 32}, 'config model')
{'name': 'TransformerLM', 'kwargs': {'d_model': 32}}
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from retrax.cli.config_files import parse_value, read_text, strict_json
from retrax.cli.errors import UsageError, one_line

__all__ = ["parse_model_spec", "normalize_model_config", "build_model", "model_from_args",
           "signature_for"]


def parse_model_spec(spec: str) -> dict:
    """``'Name:k=v,k=v'`` (values JSON-parsed) -> ``{'name': Name, 'kwargs': {...}}``."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"model spec {spec!r}: expected Name:key=value,key=value; "
                             f"bad item {item!r}.")
        kwargs[key.strip()] = parse_value(value.strip())
    if not name.strip():
        raise UsageError(f"model spec {spec!r} has no model name (e.g. TransformerLM:vocab_size=32).")
    return {"name": name.strip(), "kwargs": kwargs}


def _model_names() -> list[str]:
    from retrax import models

    return models.names()


def normalize_model_config(config: Any, where: str) -> dict:
    """``{'name', 'kwargs'}`` from that form, the flat ``{'name': ..., 'd_model': ...}`` or a spec."""
    if isinstance(config, str):
        return parse_model_spec(config)
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise UsageError(f"{where}: a model config needs a 'name' (one of {_model_names()}) "
                         f"and its keyword arguments; got {json.dumps(config)}.")
    if "kwargs" in config:
        kwargs = config["kwargs"]
        if not isinstance(kwargs, dict) or set(config) - {"name", "kwargs"}:
            raise UsageError(f"{where}: use either {{'name', 'kwargs': {{...}}}} or a flat "
                             f"{{'name', arg: value, ...}}; got {json.dumps(config)}.")
    else:
        kwargs = {k: v for k, v in config.items() if k != "name"}
    return {"name": config["name"], "kwargs": dict(kwargs)}


def build_model(config: Any, mode: str, where: str = "model") -> Any:
    """``retrax.models.from_config(config, mode)``; a UsageError naming ``where`` if it fails.

    ``config``: any form :func:`normalize_model_config` reads. A ``mode`` among
    its arguments is ignored: the command decides the mode.
    """
    from retrax import models

    config = normalize_model_config(config, where)
    name, kwargs = config["name"], dict(config["kwargs"])
    kwargs.pop("mode", None)
    try:
        return models.from_config({"name": name, "kwargs": kwargs}, mode)
    except models.ConfigError as err:  # e.g. an unknown model or activation layer
        raise UsageError(f"{where}: {one_line(err)}") from None
    except (TypeError, ValueError) as err:  # The model function refuses its arguments.
        raise UsageError(f"{where}: {name}(**{json.dumps(kwargs)}): {one_line(err)}") from None


def model_from_args(args: argparse.Namespace, known: dict | None) -> dict | None:
    """The model config from --model/--config (over ``known``, e.g. a checkpoint's)."""
    config = dict(known) if known else None
    if getattr(args, "model", None):
        spec = parse_model_spec(args.model)
        if config and spec["name"] == config["name"]:
            spec["kwargs"] = {**config["kwargs"], **spec["kwargs"]}
        config = spec
    if getattr(args, "config", None):
        from_file = os.path.exists(args.config)
        text = read_text(args.config, "--config file") if from_file else args.config
        try:
            extra = strict_json(text)
        except ValueError as err:
            where = f"--config file {args.config}" if from_file else "--config"
            raise UsageError(f"{where} must be a JSON object of model arguments (or a JSON "
                             f"file of one): {one_line(err)}") from None
        if not isinstance(extra, dict):
            raise UsageError("--config must be a JSON object of model arguments.")
        if "name" in extra:
            config = normalize_model_config(extra, "--config")
        elif config is None:
            raise UsageError("--config gives arguments but no model name; add --model NAME "
                             "or a \"name\" key.")
        else:
            config = {"name": config["name"], "kwargs": {**config["kwargs"], **extra}}
    return config


def signature_for(model: Any) -> Any:
    """A ``(1, 1)`` int32 input signature for each of ``model``'s inputs."""
    import numpy as np

    from retrax import shapes

    sig = shapes.ShapeDtype((1, 1), np.int32)
    return sig if model.n_in == 1 else tuple(sig for _ in range(model.n_in))
