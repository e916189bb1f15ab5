"""Where a command's weights come from: a pretrained name, an output directory, a file.

An output directory of ``retrax train`` or a ``Loop`` holds one config file,
``config.json``: the model's config under ``"model"`` and the run's resolved
config under ``"run"``. Runs written before that keep the run config in
``train_config.json``, which is still read.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import zlib
from typing import Any

from retrax.cli.errors import UsageError, one_line
from retrax.cli.model_specs import build_model, signature_for

__all__ = ["RUN_CONFIG_FILE", "LEGACY_RUN_CONFIG_FILE", "read_json_file", "read_run_config",
           "read_checkpoint", "resolve_checkpoint", "load_model", "is_pretrained"]

RUN_CONFIG_FILE = "config.json"  # Written by the Loop; the run config is its "run" key.
LEGACY_RUN_CONFIG_FILE = "train_config.json"  # Written by `retrax train` before 0.1.0.

# What reading a file that is not a checkpoint raises (a bad safetensors header, a
# truncated or foreign gzip, a pickle the restricted unpickler refuses).
_UNREADABLE = (ValueError, OSError, EOFError, pickle.UnpicklingError, zlib.error)


def read_json_file(path: str) -> dict | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None


def read_run_config(directory: str) -> dict | None:
    """The resolved run config of the output directory ``directory`` (None if it has none).

    ``config.json``'s ``"run"`` section, else an older run's ``train_config.json``.
    """
    run = (read_json_file(os.path.join(directory, RUN_CONFIG_FILE)) or {}).get("run")
    if isinstance(run, dict):
        return run
    return read_json_file(os.path.join(directory, LEGACY_RUN_CONFIG_FILE))


def _model_in(config: dict | None) -> dict | None:
    """The ``{'name', 'kwargs'}`` model config a config.json records, if any."""
    model = (config or {}).get("model")
    return model if isinstance(model, dict) and "kwargs" in model else None


def _native_in_dir(directory: str) -> str | None:
    paths = sorted(glob.glob(os.path.join(directory, "checkpoint_*.safetensors")))
    return paths[-1] if paths else None


def read_checkpoint(path: str) -> dict:
    """``checkpoints.read_any(path)``; a UsageError naming ``path`` when it is no checkpoint."""
    from retrax import checkpoints

    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a checkpoint file.")
    try:
        return checkpoints.read_any(path)
    except FileNotFoundError as err:
        raise UsageError(one_line(err)) from None
    except _UNREADABLE as err:
        if isinstance(err, OSError) and err.strerror and err.filename:  # e.g. no permission
            raise UsageError(f"cannot read checkpoint {path}: {err.strerror}.") from None
        message = one_line(err)
        if path not in message:
            message = f"{path} is not a readable retrax or Trax checkpoint: {message}"
        raise UsageError(message) from None


def resolve_checkpoint(source: str) -> dict:
    """Where ``source``'s weights are and what is known about its model.

    ``source``: a pretrained name, an output directory of ``train``/``Loop``,
    a native ``.safetensors`` or a Trax ``.pkl.gz`` file. Returns ``{'path',
    'model' (config or None), 'ckpt' (read_any result), 'run' (the run
    config, see :func:`read_run_config`, or None), 'pretrained' (name or None)}``.
    """
    from retrax import pretrained

    info: dict[str, Any] = {"model": None, "run": None, "pretrained": None}
    if source in pretrained.MODELS:
        entry = pretrained.MODELS[source]
        info.update(path=pretrained.path(source), pretrained=source,
                    model={"name": entry["model"], "kwargs": dict(entry["config"])})
    elif os.path.isdir(source):
        trax_file = os.path.join(source, "model.pkl.gz")
        path = trax_file if os.path.exists(trax_file) else _native_in_dir(source)
        if path is None:
            raise UsageError(f"{source} holds no checkpoint (model.pkl.gz or "
                             f"checkpoint_*.safetensors).")
        info["path"] = path
        info["run"] = read_run_config(source)
        info["model"] = _model_in(read_json_file(os.path.join(source, RUN_CONFIG_FILE)))
    elif os.path.isfile(source) or "://" in source:
        info["path"] = source
        next_to = os.path.join(os.path.dirname(source) or ".", RUN_CONFIG_FILE)
        info["model"] = _model_in(read_json_file(next_to))
    else:
        raise UsageError(f"{source!r} is not a checkpoint file, an output directory or a "
                         f"pretrained model ({', '.join(pretrained.available())}).")
    info["ckpt"] = read_checkpoint(info["path"])
    meta_model = info["ckpt"]["meta"].get("model")
    if isinstance(meta_model, dict) and "kwargs" in meta_model:
        info["model"] = meta_model  # The checkpoint's own word wins.
    return info


def load_model(info: dict, config: dict | None, mode: str, source: str) -> Any:
    """The model ``config`` in ``mode`` with the weights of ``info`` (from resolve_checkpoint)."""
    if config is None:
        raise UsageError(f"{source}: the checkpoint does not say which model it holds; pass "
                         f"--model NAME:key=value,... (e.g. TransformerLM:vocab_size=32,"
                         f"d_model=32) or --config JSON.")
    model = build_model(config, mode, where=f"{source}: model")
    try:
        model.init_from_file(info["path"], weights_only=True, input_signature=signature_for(model))
    except ValueError as err:  # Wrong shapes or counts: the config does not match.
        raise UsageError(one_line(err)) from None
    return model


def is_pretrained(name: str) -> bool:
    """Whether ``name`` is a pretrained model of :mod:`retrax.pretrained`."""
    from retrax import pretrained

    return name in pretrained.MODELS
