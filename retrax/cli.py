"""The ``retrax`` command: quickstart, train, sample, show, convert.

::

    retrax quickstart                                  # the seed notebook, end to end
    retrax train examples/configs/reverse.json --set model.d_model=64 --output-dir runs/rev
    retrax sample sort-transformer --prompt "0 3 15 14 9 0"
    retrax show TransformerLM:d_model=32,n_layers=2,vocab_size=32 --svg model.svg
    retrax convert runs/rev/model.pkl.gz rev.safetensors

Exit codes: 0 success, 2 bad usage (arguments, config, missing or unreadable
input files, an output path that cannot be written), 1 a failure while working
(a bug, a diverged model, running out of memory). Either way the error is one
line on stderr; ``--debug`` shows the traceback instead.

The whole command line is this one file on purpose (over the ~500-line
guideline): arguments, config handling and the five commands read top to
bottom in one place.

Checkpoints carry their model's configuration when retrax built the model
from one (``train``, ``--model``): ``model._model_config = {'name', 'kwargs'}``
is written into native checkpoints' metadata and the output directory's
``config.json``, so ``sample`` and ``show`` can rebuild the model.

>>> parse_model_spec('TransformerLM:d_model=32,n_layers=2,vocab_size=32')
{'name': 'TransformerLM', 'kwargs': {'d_model': 32, 'n_layers': 2, 'vocab_size': 32}}
>>> cfg = {'model': {'d_model': 32}}
>>> apply_override(cfg, 'model.d_model=64'); apply_override(cfg, 'task.name=sort')
>>> cfg
{'model': {'d_model': 64}, 'task': {'name': 'sort'}}
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import math
import os
import pickle
import re
import sys
import zlib
from collections.abc import Sequence
from typing import Any

__all__ = ["main", "UsageError", "parse_model_spec", "apply_override", "load_config",
           "build_model", "TRAIN_DEFAULTS"]


class UsageError(Exception):
    """Bad arguments, config or inputs: reported in one line, exit code 2."""


# --------------------------------------------------------------------------
# Config values
# --------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """JSON when it parses (``64``, ``0.5``, ``true``, ``null``, ``[1, 2]``), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_override(config: dict, assignment: str) -> None:
    """Applies ``a.b.c=value`` (value JSON-parsed) to the nested dict ``config``."""
    key, sep, value = assignment.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"--set expects key=value with a dotted key (e.g. model.d_model=64); "
                         f"got {assignment!r}.")
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UsageError(f"--set {assignment}: {'.'.join(parts[:i + 1])} is "
                             f"{json.dumps(child)}, not a section.")
        node = child
    node[parts[-1]] = _parse_value(value)


def _read_text(path: str, what: str) -> str:
    """The UTF-8 text of the file ``path``; a UsageError naming ``what`` and ``path`` if not."""
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a directory; pass a file.")
    if not os.path.isfile(path):
        raise UsageError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror or _one_line(err)}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at "
                         f"offset {err.start}); save it as UTF-8.") from None


def _strict_json(text: str) -> Any:
    """``json.loads`` without the NaN / Infinity extension (not JSON; they break training)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number; write a finite number")

    return json.loads(text, parse_constant=refuse)


def load_config(path: str) -> dict:
    """Reads a JSON or YAML (``.yaml``/``.yml``, needs PyYAML) config file."""
    text = _read_text(path, "config file")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                             f"or write the config as JSON.") from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"{path} is not valid YAML: {_one_line(err)}") from None
    else:
        try:
            config = _strict_json(text)
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise UsageError(f"{path} is not valid JSON: {_one_line(err)}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: the config must be a mapping of sections; "
                         f"got {type(config).__name__}.")
    return config


# --------------------------------------------------------------------------
# Models from configs
# --------------------------------------------------------------------------


def parse_model_spec(spec: str) -> dict:
    """``'Name:k=v,k=v'`` (values JSON-parsed) -> ``{'name': Name, 'kwargs': {...}}``."""
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"model spec {spec!r}: expected Name:key=value,key=value; "
                             f"bad item {item!r}.")
        kwargs[key.strip()] = _parse_value(value.strip())
    if not name.strip():
        raise UsageError(f"model spec {spec!r} has no model name (e.g. TransformerLM:vocab_size=32).")
    return {"name": name.strip(), "kwargs": kwargs}


def _model_names() -> list[str]:
    from retrax import models

    return [n for n in models.__all__ if n[:1].isupper() and callable(getattr(models, n))]


def normalize_model_config(config: Any, where: str) -> dict:
    """``{'name', 'kwargs'}`` from that form or the flat ``{'name': ..., 'd_model': ...}``."""
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
    """Builds ``retrax.models.<name>(**kwargs, mode=mode)`` and records its config on it."""
    from retrax import layers as tl
    from retrax import models

    config = normalize_model_config(config, where)
    name, kwargs = config["name"], dict(config["kwargs"])
    kwargs.pop("mode", None)  # The command decides the mode.
    if name not in _model_names():
        raise UsageError(f"{where}: unknown model {name!r}; available: {_model_names()}.")
    call_kwargs = dict(kwargs)
    for key, value in kwargs.items():  # e.g. "ff_activation": "Gelu"
        if key.endswith("activation") and isinstance(value, str):
            layer_fn = getattr(tl, value, None)
            if not callable(layer_fn):
                raise UsageError(f"{where}: {key}={value!r} is not a layer in retrax.layers.")
            call_kwargs[key] = layer_fn
    try:
        model = getattr(models, name)(**call_kwargs, mode=mode)
    except (TypeError, ValueError) as err:
        raise UsageError(f"{where}: {name}(**{json.dumps(kwargs)}): {_one_line(err)}") from None
    model._model_config = {"name": name, "kwargs": kwargs}
    return model


# --------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------


def _native_in_dir(directory: str) -> str | None:
    paths = sorted(glob.glob(os.path.join(directory, "checkpoint_*.safetensors")))
    return paths[-1] if paths else None


def _json_file(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


# What reading a file that is not a checkpoint raises (a bad safetensors header, a
# truncated or foreign gzip, a pickle the restricted unpickler refuses).
_UNREADABLE = (ValueError, OSError, EOFError, pickle.UnpicklingError, zlib.error)


def read_checkpoint(path: str) -> dict:
    """``checkpoints.read_any(path)``; a UsageError naming ``path`` when it is no checkpoint."""
    from retrax import checkpoints

    if os.path.isdir(path):
        raise UsageError(f"{path} is a directory, not a checkpoint file.")
    try:
        return checkpoints.read_any(path)
    except FileNotFoundError as err:
        raise UsageError(_one_line(err)) from None
    except _UNREADABLE as err:
        if isinstance(err, OSError) and err.strerror and err.filename:  # e.g. no permission
            raise UsageError(f"cannot read checkpoint {path}: {err.strerror}.") from None
        message = _one_line(err)
        if path not in message:
            message = f"{path} is not a readable retrax or Trax checkpoint: {message}"
        raise UsageError(message) from None


def resolve_checkpoint(source: str) -> dict:
    """Where ``source``'s weights are and what is known about its model.

    ``source``: a pretrained name, an output directory of ``train``/``Loop``,
    a native ``.safetensors`` or a Trax ``.pkl.gz`` file. Returns ``{'path',
    'model' (config or None), 'ckpt' (read_any result), 'run' (train
    config or None), 'pretrained' (name or None)}``.
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
        info["run"] = _json_file(os.path.join(source, "train_config.json"))
        model = (_json_file(os.path.join(source, "config.json")) or {}).get("model")
        if isinstance(model, dict) and "kwargs" in model:
            info["model"] = model
    elif os.path.isfile(source) or "://" in source:
        info["path"] = source
        next_to = _json_file(os.path.join(os.path.dirname(source) or ".", "config.json")) or {}
        if isinstance(next_to.get("model"), dict) and "kwargs" in next_to["model"]:
            info["model"] = next_to["model"]
    else:
        raise UsageError(f"{source!r} is not a checkpoint file, an output directory or a "
                         f"pretrained model ({', '.join(pretrained.available())}).")
    info["ckpt"] = read_checkpoint(info["path"])
    meta_model = info["ckpt"]["meta"].get("model")
    if isinstance(meta_model, dict) and "kwargs" in meta_model:
        info["model"] = meta_model  # The checkpoint's own word wins.
    return info


def _model_from_args(args: argparse.Namespace, known: dict | None) -> dict | None:
    """The model config from --model/--config (over ``known``)."""
    config = dict(known) if known else None
    if getattr(args, "model", None):
        spec = parse_model_spec(args.model)
        if config and spec["name"] == config["name"]:
            spec["kwargs"] = {**config["kwargs"], **spec["kwargs"]}
        config = spec
    if getattr(args, "config", None):
        from_file = os.path.exists(args.config)
        text = _read_text(args.config, "--config file") if from_file else args.config
        try:
            extra = _strict_json(text)
        except ValueError as err:
            where = f"--config file {args.config}" if from_file else "--config"
            raise UsageError(f"{where} must be a JSON object of model arguments (or a JSON "
                             f"file of one): {_one_line(err)}") from None
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


def _signature_for(model: Any) -> Any:
    import numpy as np

    from retrax import shapes

    sig = shapes.ShapeDtype((1, 1), np.int32)
    return sig if model.n_in == 1 else tuple(sig for _ in range(model.n_in))


def load_model(info: dict, config: dict | None, mode: str, source: str) -> Any:
    if config is None:
        raise UsageError(f"{source}: the checkpoint does not say which model it holds; pass "
                         f"--model NAME:key=value,... (e.g. TransformerLM:vocab_size=32,"
                         f"d_model=32) or --config JSON.")
    model = build_model(config, mode, where=f"{source}: model")
    try:
        model.init_from_file(info["path"], weights_only=True, input_signature=_signature_for(model))
    except ValueError as err:  # Wrong shapes or counts: the config does not match.
        raise UsageError(_one_line(err)) from None
    return model


def _check_output_path(path: str, what: str, directory: bool = False) -> None:
    """Refuses, naming ``path``, an output that cannot be written: checked before any work.

    ``directory``: ``path`` is a directory to create or reuse, else a file to
    write (it must not be a directory). Remote URLs are left to their backend.
    """
    if "://" in path:
        return
    full = os.path.abspath(os.path.expanduser(path))
    if directory and os.path.exists(full) and not os.path.isdir(full):
        raise UsageError(f"{what} {path} is a file, not a directory; choose a directory.")
    if not directory and os.path.isdir(full):
        raise UsageError(f"{what} {path} is a directory; give a file path inside it "
                         f"instead.")
    parent = full if directory else os.path.dirname(full)
    while not os.path.exists(parent):  # The nearest existing ancestor decides.
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{what} {path} cannot be created: {parent} is a file, not a "
                         f"directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path} cannot be written: no write permission on {parent}.")


def _write_failed(err: OSError, path: str, what: str) -> UsageError:
    """The error for an output that the checks above let through but the system refused."""
    reason = err.strerror or _one_line(err)
    return UsageError(f"cannot write {what} {path}: {reason}; choose a path you can write to.")


# --------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------


def cmd_quickstart(args: argparse.Namespace) -> int:
    from retrax import quickstart

    if args.output_dir is not None:
        _check_output_path(args.output_dir, "--output-dir", directory=True)
    try:
        quickstart.main(output_dir=args.output_dir, steps=args.steps)
    except FileExistsError as err:  # The Loop refuses a directory holding foreign files.
        raise UsageError(f"{_one_line(err)} For the quick start, pass --output-dir with an "
                         f"empty or new directory.") from None
    return 0


TRAIN_DEFAULTS: dict[str, Any] = {
    "model": None,  # {"name": "TransformerLM", "vocab_size": 32, ...}
    "task": None,  # {"name": "reverse" | "sort" | "copy", "batch_size", "length", "seed"}
    "optimizer": {"name": "Adam", "learning_rate": 0.01},
    "lr_schedule": None,  # {"name": "warmup_and_rsqrt_decay", "n_warmup_steps": ..., ...}
    "loss": "CrossEntropyLoss",
    "eval": {"metrics": ["CrossEntropyLoss", "Accuracy"], "n_batches": 10, "seed": None,
             "every": None,  # evaluate every N steps (default: at each checkpoint)
             "final_batches": None},  # read by examples/train_lm.py only
    "steps": 1000,
    "n_steps_per_checkpoint": 100,
    "random_seed": 0,
    "output_dir": None,
    "plot": False,
    "sample": None,  # prompt settings read by examples/train_lm.py only
}
_TASKS = {"reverse": "reverse_ints_task", "sort": "sort_ints_task", "copy": "copy_ints_task"}
_TASK_KEYS = {"name", "batch_size", "length", "seed"}
_TOY_VOCAB = 31  # The toy tasks' ids: 0 (separator) and 1..30.
# Language modelling on text files: "text_lm" (corpus = a glob) or "stdlib_lm" (the
# .py files of the Python standard library), split by file into train / held-out.
_TEXT_TASKS = {"text_lm", "stdlib_lm"}
_TEXT_TASK_KEYS = {"name", "corpus", "tokenizer", "seq_len", "batch_size", "held_out_percent",
                   "shuffle_queue", "seed"}


def _check_keys(section: str, got: dict, allowed: set[str]) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise UsageError(f"config {section}: unknown key(s) {unknown}; allowed: {sorted(allowed)}.")


def _positive_int(section: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UsageError(f"config {section} must be a positive integer; got {json.dumps(value)}.")
    return value


# Seeds become JAX PRNG keys, which hold 32 bits: a larger seed would be cut (and alias a
# smaller one) or overflow, and a negative one would wrap around.
SEED_LIMIT = 2**32


def _seed_problem(value: Any) -> str | None:
    """Why ``value`` is not a seed (None when it is one)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer"
    if not 0 <= value < SEED_LIMIT:
        return f"must be in [0, 2**32 - 1] = [0, {SEED_LIMIT - 1}]"
    return None


def _check_seed(section: str, value: Any) -> int:
    problem = _seed_problem(value)
    if problem:
        raise UsageError(f"config {section} {problem}; got {json.dumps(value)}.")
    return value


def resolve_train_config(config: dict) -> dict:
    """Fills defaults and checks a train config; raises UsageError naming the bad key."""
    _check_keys("", config, set(TRAIN_DEFAULTS))
    run = {k: config.get(k, v) for k, v in TRAIN_DEFAULTS.items()}
    if config.get("eval") is not None:
        if not isinstance(config["eval"], dict):
            raise UsageError("config eval must be a section (or null for no evaluation).")
        _check_keys("eval", config["eval"], set(TRAIN_DEFAULTS["eval"]))
        run["eval"] = {**TRAIN_DEFAULTS["eval"], **config["eval"]}
    if run["model"] is None:
        raise UsageError('config needs a "model" section, e.g. {"name": "TransformerLM", '
                         '"vocab_size": 32, "d_model": 32}.')
    task = run["task"]
    names = sorted(set(_TASKS) | _TEXT_TASKS)
    if not isinstance(task, dict) or task.get("name") not in names:
        raise UsageError(f'config needs a "task" section with "name" one of {names}; '
                         f"got {json.dumps(task)}.")
    _check_keys("task", task, _TEXT_TASK_KEYS if task["name"] in _TEXT_TASKS else _TASK_KEYS)
    if task["name"] == "text_lm" and not task.get("corpus"):
        raise UsageError('config task text_lm needs "corpus": a glob of text files.')
    for key in ("batch_size", "length", "seq_len"):
        if key in task:
            _positive_int(f"task.{key}", task[key])
    if "seed" in task:
        _check_seed("task.seed", task["seed"])
    for key in ("steps", "n_steps_per_checkpoint"):
        _positive_int(key, run[key])
    _check_seed("random_seed", run["random_seed"])
    if run["eval"] is not None:
        evals = run["eval"]
        _positive_int("eval.n_batches", evals["n_batches"])
        for key in ("every", "final_batches"):  # null: the default
            if evals[key] is not None:
                _positive_int(f"eval.{key}", evals[key])
        if evals["seed"] is not None:
            _check_seed("eval.seed", evals["seed"])
        metrics = evals["metrics"]
        if not isinstance(metrics, list) or not metrics:
            raise UsageError(f'config eval.metrics must be a non-empty list of metric layer '
                             f'names, e.g. ["CrossEntropyLoss", "Accuracy"]; got '
                             f'{json.dumps(metrics)}.')
    if not isinstance(run["plot"], (bool, str)) or run["plot"] == "":
        raise UsageError(f"config plot must be true, false or a file name such as "
                         f"\"history.png\"; got {json.dumps(run['plot'])}.")
    if not run["output_dir"]:
        raise UsageError("no output directory: pass --output-dir DIR or set output_dir in the config.")
    if not isinstance(run["output_dir"], str):
        raise UsageError(f"config output_dir must be a directory path (a string); got "
                         f"{json.dumps(run['output_dir'])}. Fix it or pass --output-dir DIR.")
    return run


def _named(section: str, value: Any, namespace: Any, names: Sequence[str], what: str) -> Any:
    """Calls ``namespace.<name>(**kwargs)`` for ``{"name": ..., **kwargs}`` (or a bare name)."""
    spec = {"name": value} if isinstance(value, str) else value
    if not isinstance(spec, dict) or spec.get("name") not in names:
        name = spec.get("name") if isinstance(spec, dict) else value
        raise UsageError(f"config {section}: unknown {what} {json.dumps(name)}; "
                         f"available: {sorted(names)}.")
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    try:
        return getattr(namespace, spec["name"])(**kwargs)
    except (TypeError, ValueError) as err:
        raise UsageError(f"config {section}: {spec['name']}(**{json.dumps(kwargs)}): "
                         f"{_one_line(err)}") from None


def _model_arg(config: dict, key: str) -> Any:
    """``key`` from a model config, else the model function's default (None if neither)."""
    import inspect

    from retrax import models

    if key in config["kwargs"]:
        return config["kwargs"][key]
    param = inspect.signature(getattr(models, config["name"])).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _check_toy_task_fits(task: dict, model_config: dict) -> None:
    """Refuses a toy task whose ids or sequences the model cannot hold, before any work.

    The toy tasks' rows are ``[0, source, 0, answer]``: ``2 * length + 2`` ids in ``[0, 31)``.
    """
    name, length = task["name"], task.get("length", 4)
    vocab, max_len = _model_arg(model_config, "vocab_size"), _model_arg(model_config, "max_len")
    if isinstance(vocab, int) and vocab < _TOY_VOCAB:
        raise UsageError(f"config model vocab_size is {vocab} but the {name} task's token ids "
                         f"go up to {_TOY_VOCAB - 1}; set model.vocab_size to {_TOY_VOCAB} or "
                         f"more (the examples use 32).")
    if isinstance(max_len, int) and 2 * length + 2 > max_len:
        raise UsageError(f"config task.length is {length}: the {name} task's rows hold "
                         f"2 * length + 2 = {2 * length + 2} tokens but the model's max_len is "
                         f"{max_len}; set task.length to {(max_len - 2) // 2} or less, or raise "
                         f"model.max_len.")


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for assignment in args.set or []:
        apply_override(config, assignment)
    if args.steps is not None:
        config["steps"] = args.steps
    if args.output_dir is not None:
        config["output_dir"] = args.output_dir
    run = resolve_train_config(config)

    from retrax import data, optimizers
    from retrax import layers as tl
    from retrax.io import write_bytes_atomic
    from retrax.optimizers.base import Optimizer
    from retrax.supervised import lr_schedules, training
    from retrax.supervised.run_dir import OutputDirLockedError

    output_dir = os.path.expanduser(run["output_dir"])
    tokenizer = None
    if run["task"]["name"] in _TEXT_TASKS:
        make_data, tokenizer, model_defaults = _text_lm_data(run["task"])
        model_config = dict(run["model"]) if isinstance(run["model"], dict) else run["model"]
        if isinstance(model_config, dict):
            target = model_config.setdefault("kwargs", {}) if "kwargs" in model_config \
                else model_config
            for key, value in model_defaults.items():
                target.setdefault(key, value)
        run["model"] = model_config
        task_kwargs = {"seed": run["task"].get("seed", 0)}
        eval_kwargs = {"held_out": True}
    else:
        task_kwargs = {k: v for k, v in run["task"].items() if k != "name"}
        make_data = getattr(data, _TASKS[run["task"]["name"]])
        eval_kwargs = {}
    model = build_model(run["model"], "train", where="config model")
    if run["task"]["name"] in _TASKS:
        _check_toy_task_fits(run["task"], model._model_config)
    opt_names = [n for n in optimizers.__all__
                 if isinstance(getattr(optimizers, n), type)
                 and issubclass(getattr(optimizers, n), Optimizer) and n != "Optimizer"]
    optimizer = _named("optimizer", run["optimizer"], optimizers, opt_names, "optimizer")
    schedule = None
    if isinstance(run["lr_schedule"], dict) and run["lr_schedule"].get("name") == "cosine":
        # Like examples/train_lm.py: decay over the run, from the optimizer's rate.
        run["lr_schedule"] = {"n_steps": run["steps"], **run["lr_schedule"]}
        if isinstance(run["optimizer"], dict) and "learning_rate" in run["optimizer"]:
            run["lr_schedule"].setdefault("max_value", run["optimizer"]["learning_rate"])
    if run["lr_schedule"] is not None:
        schedule = _named("lr_schedule", run["lr_schedule"], lr_schedules,
                          lr_schedules.__all__, "schedule")
    layer_names = [n for n in dir(tl) if n[:1].isupper()]
    loss = _named("loss", run["loss"], tl, layer_names, "loss layer")
    train_task = training.TrainTask(make_data(**task_kwargs), loss, optimizer,
                                    lr_schedule=schedule,
                                    n_steps_per_checkpoint=run["n_steps_per_checkpoint"])
    eval_tasks = []
    if run["eval"] is not None:
        seed = run["eval"]["seed"]
        seed = task_kwargs.get("seed", 0) + 1 if seed is None else seed
        metrics = [_named("eval.metrics", m, tl, layer_names, "metric layer")
                   for m in run["eval"]["metrics"]]
        eval_data = make_data(**{**task_kwargs, "seed": seed, **eval_kwargs})
        eval_tasks.append(training.EvalTask(eval_data, metrics,
                                            n_eval_batches=run["eval"]["n_batches"]))
    callbacks = []
    if run["plot"]:
        from retrax.visualize import PlotHistoryCallback

        callbacks.append(PlotHistoryCallback.configured(
            filename=run["plot"] if isinstance(run["plot"], str) else "history.png"))
    every = (run["eval"] or {}).get("every")
    eval_at = None if every is None else (lambda step: step == 1 or step % every == 0)
    _check_output_path(output_dir, "output directory", directory=True)
    try:
        loop = training.Loop(model, train_task, eval_tasks=eval_tasks, output_dir=output_dir,
                             random_seed=run["random_seed"], callbacks=callbacks,
                             eval_at=eval_at, overwrite=args.force)
    except (FileExistsError, NotADirectoryError, PermissionError, OutputDirLockedError) as err:
        # Foreign files in the directory (--force overrides), another run holding it, or a
        # path that cannot be a writable directory.
        raise UsageError(_one_line(err)) from None
    if tokenizer is not None:  # next to the checkpoints, for `retrax sample --text`
        tokenizer.save(output_dir)
    write_bytes_atomic(os.path.join(output_dir, "train_config.json"),
                       json.dumps(run, indent=2).encode("utf-8"))
    remaining = run["steps"] - loop.step
    if remaining <= 0:
        print(f"{output_dir} is already at step {loop.step} (steps={run['steps']}); nothing to do.")
        return 0
    if loop.step:
        print(f"Resuming from step {loop.step} in {output_dir}.")
    loop.run(remaining)
    print(f"Trained to step {loop.step}; checkpoints in {output_dir}")
    return 0


def _text_lm_data(task: dict) -> tuple[Any, Any, dict]:
    """``(make_data(seed, held_out=False), tokenizer, model defaults)`` for a text task."""
    from retrax import data

    corpus = "stdlib" if task["name"] == "stdlib_lm" else task["corpus"]
    try:
        files = data.corpus_files(corpus)
        tokenizer = data.make_tokenizer(task.get("tokenizer", "byte"))
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(f"config task: {_one_line(err)}") from None
    root = data.stdlib_files()[0] if corpus == "stdlib" else os.path.commonpath(
        [os.path.dirname(f) for f in files])
    train_files, held_files = data.split_by_hash(root, files, task.get("held_out_percent", 10))
    if not train_files or not held_files:
        raise UsageError(f"config task: the corpus ({len(files)} files) gives no train or no "
                         f"held-out files; add files or change held_out_percent.")
    seq_len, batch_size = task.get("seq_len", 128), task.get("batch_size", 16)

    def make_data(seed: int, held_out: bool = False) -> Any:
        return data.text_lm_batches(held_files if held_out else train_files, tokenizer,
                                    seq_len, batch_size, seed=seed, shuffle=not held_out,
                                    shuffle_queue=task.get("shuffle_queue", 1024))()

    return make_data, tokenizer, {"vocab_size": tokenizer.vocab_size, "max_len": seq_len}


def _parse_prompt(text: str) -> list[int]:
    items = [s for s in re.split(r"[\s,]+", text.strip().strip("[]")) if s]
    try:
        ids = [int(s) for s in items]
    except ValueError:
        raise UsageError(f"--prompt must be token ids separated by spaces or commas, "
                         f"e.g. \"0 3 15 14 9 0\"; got {text!r}.") from None
    if not ids or min(ids) < 0:
        raise UsageError(f"--prompt needs at least one non-negative token id; got {text!r}.")
    return ids


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from retrax.supervised import decoding

    if args.prompt is not None and args.text is not None:
        raise UsageError("give either --prompt (token ids) or --text, not both.")
    prompt = None if args.prompt is None else _parse_prompt(args.prompt)
    info = resolve_checkpoint(args.checkpoint)
    tokenizer = None
    if args.text is not None:
        tokenizer = _find_tokenizer(args, info)
        prompt = list(tokenizer.encode(args.text))
        if not prompt:
            raise UsageError("--text is empty; give some text to continue.")
    flag = "--text" if tokenizer is not None else "--prompt"
    config = _model_from_args(args, info["model"])
    vocab = (config or {}).get("kwargs", {}).get("vocab_size")
    if prompt is not None and isinstance(vocab, int) and max(prompt) >= vocab:
        raise UsageError(f"{flag} token {max(prompt)} is outside the model's vocabulary "
                         f"[0, {vocab}).")
    max_length = args.max_length
    if max_length is None:  # The task's answer length when known (toy tasks: 4).
        length = ((info["run"] or {}).get("task") or {}).get("length")
        max_length = length if isinstance(length, int) and length > 0 else 4
    model = load_model(info, config, "predict", args.checkpoint)
    vocab, max_len = model_limits(model)
    if prompt is not None and vocab is not None and max(prompt) >= vocab:
        raise UsageError(f"{flag} token {max(prompt)} is outside the model's vocabulary "
                         f"[0, {vocab}).")
    if prompt is not None and max(prompt) >= 2**31:
        raise UsageError(f"{flag} token {max(prompt)} does not fit a 32-bit token id.")
    _check_lengths(model, len(prompt or ()), max_length, max_len, flag,
                   "--max-length" if args.max_length is not None
                   else f"--max-length (default {max_length})")
    eos = None if args.eos_id is None or args.eos_id < 0 else args.eos_id
    if eos is not None and vocab is not None and eos >= vocab:
        raise UsageError(f"--eos-id {eos} is outside the model's vocabulary [0, {vocab}), so "
                         f"no row could stop there; give an id below {vocab} (or a negative "
                         f"one for no end token).")
    inputs = None if prompt is None else np.array([prompt], np.int32)
    output = decoding.autoregressive_sample(
        model, inputs, temperature=args.temperature, max_length=max_length, eos_id=eos,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    for row in np.asarray(output):
        if tokenizer is not None:
            ids = [int(t) for t in row]
            if eos is not None and eos in ids:
                ids = ids[:ids.index(eos)]
            print(args.text + tokenizer.decode(ids))
        else:
            print(" ".join(str(int(t)) for t in row))
    return 0


def model_limits(model: Any) -> tuple[int | None, int | None]:
    """``(vocab_size, max_len)`` read off the weights of a model's first Embedding and its
    PositionalEncodings (the smallest table): None where the model has no such layer."""
    import numpy as np

    vocab = max_len = None
    stack = [model]
    while stack:
        layer = stack.pop()
        kind = type(layer).__name__
        if kind in ("Embedding", "PositionalEncoding"):
            weights = layer.weights
            table = weights[0] if isinstance(weights, (tuple, list)) and weights else weights
            shape = np.shape(table) if hasattr(table, "shape") else ()
            if kind == "Embedding" and vocab is None and len(shape) == 2:
                vocab = int(shape[0])
            elif kind == "PositionalEncoding" and len(shape) >= 2:
                max_len = int(shape[-2]) if max_len is None else min(max_len, int(shape[-2]))
        stack.extend(reversed(layer.sublayers))  # Depth first, in order.
    return vocab, max_len


def _check_lengths(model: Any, n_prompt: int, max_length: int, max_len: int | None,
                   prompt_flag: str, length_flag: str) -> None:
    """Refuses a prompt or --max-length that does not fit the model's max_len positions."""
    if max_len is None:
        return
    if model.n_in == 2:  # Encoder-decoder: the prompt is the encoder's input.
        if n_prompt > max_len:
            raise UsageError(f"{prompt_flag} has {n_prompt} tokens but the model reads at most "
                             f"max_len={max_len}; shorten it to {max_len} tokens or fewer.")
        if max_length + 1 > max_len:
            raise UsageError(f"{length_flag} is {max_length} but the model's decoder holds at "
                             f"most max_len={max_len} positions (the start token and the new "
                             f"tokens); use --max-length {max_len - 1} or less.")
        return
    # A language model reads the start token, the prompt, then each new token.
    if n_prompt + 2 > max_len:
        raise UsageError(f"{prompt_flag} has {n_prompt} tokens but the model holds at most "
                         f"max_len={max_len} positions (the start token, the prompt and at "
                         f"least one new token); shorten it to {max_len - 2} tokens or fewer.")
    if n_prompt + 1 + max_length > max_len:
        raise UsageError(f"{length_flag} is {max_length}, too long after {n_prompt} prompt "
                         f"tokens: the start token, the prompt and the new tokens need "
                         f"{n_prompt + 1 + max_length} positions but the model's max_len is "
                         f"{max_len}; use --max-length {max_len - 1 - n_prompt} or less.")


def _find_tokenizer(args: argparse.Namespace, info: dict) -> Any:
    """The tokenizer given by --tokenizer, or the one saved next to the checkpoint."""
    from retrax.data.tokenizers import load_tokenizer

    candidates = [args.tokenizer] if args.tokenizer else []
    if not args.tokenizer:
        if os.path.isdir(args.checkpoint):
            candidates.append(args.checkpoint)
        candidates.append(os.path.dirname(os.path.abspath(info["path"])))
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            try:
                return load_tokenizer(directory)
            except (OSError, ValueError, KeyError) as err:
                raise UsageError(f"cannot load the tokenizer in {directory}: "
                                 f"{_one_line(err)}") from None
    where = args.tokenizer or " or ".join(candidates)
    raise UsageError(f"--text needs a tokenizer, but {where} holds no tokenizer.json; pass "
                     f"--tokenizer DIR (a directory written by tokenizer.save(DIR)).")


def _print_weights_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("path", "layer", "weight shapes", "params")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  "
              f"{r[3]:>{widths[3]}}")


def cmd_show(args: argparse.Namespace) -> int:
    import numpy as np

    from retrax import visualize

    source = args.model_or_checkpoint
    if args.svg:  # Before any work: the error names the target.
        _check_output_path(args.svg, "--svg")
    is_spec = not (os.path.exists(source) or "://" in source or _is_pretrained(source))
    if is_spec and ":" not in source and source not in _model_names():
        from retrax import pretrained

        raise UsageError(f"{source!r} is not a checkpoint file, an output directory, a pretrained "
                         f"model ({', '.join(pretrained.available())}) or a model spec such as "
                         f"TransformerLM:vocab_size=32,d_model=32.")
    if is_spec:
        config = _model_from_args(args, parse_model_spec(source))
        model = build_model(config, args.mode, where=source)
        model.init(_signature_for(model))
    else:
        info = resolve_checkpoint(source)
        config = _model_from_args(args, info["model"])
        if config is None:  # Still useful: the arrays in the file.
            if args.svg:
                raise UsageError(f"{source}: drawing needs the model; pass --model NAME:k=v,...")
            flat = info["ckpt"]["flat_weights"]
            print(f"{source}: no model config (pass --model to see the layer tree); "
                  f"{len(flat)} weight arrays:")
            rows = [(str(i), "", visualize.format_shape(np.shape(w)), f"{int(np.size(w)):,}")
                    for i, w in enumerate(flat)]
            _print_weights_table(rows)
            print(f"Total: {sum(int(np.size(w)) for w in flat):,} parameters")
            return 0
        model = load_model(info, config, args.mode, source)
    print(model)
    print()
    tree = visualize.layer_tree(model)
    rows = [(n.path, n.name, " ".join(visualize.format_shape(s) for s in n.weight_shapes),
             f"{n.n_params:,}") for n in tree.walk() if n.weight_shapes]
    rows += [(n.path, n.name, f"shared with {n.shared_with}", "0")
             for n in tree.walk() if n.shared_with is not None]
    print(f"Layers with weights ({len(rows)}):")
    _print_weights_table(rows)
    total = sum(n.n_params for n in tree.walk())
    n_layers = sum(1 for n in tree.walk() if n.is_layer)
    print(f"Total: {total:,} parameters in {sum(len(n.weight_shapes) for n in tree.walk())} "
          f"arrays; {n_layers} layers in the tree")
    if args.svg:
        try:
            visualize.layer_diagram(model, args.svg)
        except OSError as err:
            raise _write_failed(err, args.svg, "the --svg diagram") from None
        print(f"Wrote {args.svg}")
    return 0


def _is_pretrained(name: str) -> bool:
    from retrax import pretrained

    return name in pretrained.MODELS


def cmd_convert(args: argparse.Namespace) -> int:
    from retrax import checkpoints

    src, dst = args.input, args.output
    if os.path.isdir(src):
        raise UsageError(f"input checkpoint {src} is a directory; pass its model.pkl.gz or "
                         f"checkpoint_*.safetensors file.")
    if not (os.path.isfile(src) or "://" in src):
        raise UsageError(f"input checkpoint not found: {src}")
    info = resolve_checkpoint(src)  # Reads (and so checks) it; a config.json next to it too.
    to_native = info["ckpt"]["meta"].get("format") == "trax"
    if to_native and not dst.endswith(".safetensors"):
        raise UsageError(f"{src} is a Trax checkpoint; the output must be a native "
                         f".safetensors file, not {dst!r}.")
    if not to_native and not dst.endswith(".pkl.gz"):
        raise UsageError(f"{src} is a native checkpoint; the output must be a Trax "
                         f".pkl.gz file, not {dst!r}.")
    _check_output_path(dst, "output")
    try:
        if to_native:
            checkpoints.trax_to_native(src, dst)
            if info["model"] is not None:  # The model config travels along.
                ckpt = checkpoints.read_any(dst)
                checkpoints.save_native(
                    dst, tuple(ckpt["flat_weights"]),
                    None if ckpt["flat_state"] is None else tuple(ckpt["flat_state"]),
                    input_signature=ckpt["input_signature"], model_config=info["model"],
                    extra=ckpt["meta"].get("extra"))
            print(f"Wrote {dst} (native) from Trax checkpoint {src}")
        else:
            written = checkpoints.native_to_trax(src, dst)
            print(f"Wrote {written} (Trax) from native checkpoint {src}")
    except OSError as err:
        raise _write_failed(err, dst, "the output") from None
    return 0


# --------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    problem = _seed_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(f"the seed {problem}, got {text}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:  # (False for NaN too.)
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", metavar="NAME[:k=v,...]",
                   help="the model, when the checkpoint does not record it "
                        "(e.g. TransformerLM:vocab_size=32,d_model=32)")
    p.add_argument("--config", metavar="JSON",
                   help="model arguments as JSON or a JSON file (with \"name\": the whole "
                        "model config); overrides the recorded ones")


_TRAIN_EPILOG = """\
config sections (defaults in brackets):
  model           {"name": "TransformerLM", "vocab_size": 32, "d_model": 32, ...}
  task            {"name": "reverse" | "sort" | "copy", "batch_size", "length", "seed"}
  optimizer       {"name": "Adam", "learning_rate": 0.01}  [Adam(0.01)]
  lr_schedule     {"name": "warmup_and_rsqrt_decay", "n_warmup_steps": 100,
                   "max_value": 0.01} or null  [null: the optimizer's rate]
  loss            "CrossEntropyLoss"
  eval            {"metrics": [...], "n_batches": 10, "seed": task seed + 1} or null
  steps           total steps [1000]
  n_steps_per_checkpoint  [100]; evals run at the same steps
  random_seed     [0]
  output_dir      where checkpoints go (or --output-dir)
  plot            true (or a file name) writes history.png at each checkpoint [false]
"""


def build_parser() -> argparse.ArgumentParser:
    from retrax import __version__

    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of errors")
    parser = _Parser(prog="retrax", description="Trax's TransformerLM quick start, training, "
                     "sampling and inspection on modern JAX.", parents=[debug])
    parser.add_argument("--version", action="version", version=f"retrax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("quickstart", parents=[debug], help="run the TransformerLM quick start",
                       description="Runs every cell of the TransformerLM quick-start notebook: "
                       "the pretrained sort model, training a reverse model for 1000 steps, "
                       "decoding with it, and the model's layers.")
    p.add_argument("--output-dir", help="training directory (default: $RETRAX_TRAIN_DIR or "
                   "~/train_dir/)")
    p.add_argument("--steps", type=_positive, default=1000, help="training steps (default 1000)")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("train", parents=[debug], help="train a model from a JSON/YAML config",
                       description="Trains the config's model on a toy task (reverse, sort, "
                       "copy). Resumes when the output directory holds a checkpoint; `steps` "
                       "is the total to reach. A non-empty directory that holds no retrax "
                       "run is refused unless --force. Example: examples/configs/reverse.json.",
                       epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="JSON or YAML config file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set model.d_model=64 (value parsed "
                        "as JSON, else a string); repeatable")
    p.add_argument("--output-dir", help="where checkpoints go (overrides output_dir)")
    p.add_argument("--steps", type=_positive, help="total steps (overrides steps)")
    p.add_argument("--force", action="store_true",
                   help="train in an output directory that holds files but no retrax run "
                        "(default: refuse, so that no file retrax did not write is replaced)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", parents=[debug], help="decode from a checkpoint",
                       description="Decodes after --prompt with a checkpoint: a native "
                       ".safetensors, a Trax .pkl.gz, an output directory, or a pretrained "
                       "name (sort-transformer). Prints the generated ids, one row per line.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--prompt", help='token ids, e.g. "0 3 15 14 9 0" (default: none)')
    p.add_argument("--text", help="a text prompt, encoded with the tokenizer saved next to the "
                   "checkpoint (tokenizer.json); the continuation is printed as text")
    p.add_argument("--tokenizer", metavar="DIR",
                   help="directory holding tokenizer.json (default: next to the checkpoint)")
    p.add_argument("--max-length", type=_positive,
                   help="tokens to generate (default: the trained task's length, else 4)")
    p.add_argument("--temperature", type=_non_negative_float, default=0.0,
                   help="0 is greedy (default); otherwise sample softmax(logits / T)")
    p.add_argument("--top-k", type=_positive, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=_probability, help="nucleus sampling probability mass")
    p.add_argument("--seed", type=_seed, default=0,
                   help="random seed in [0, 2**32 - 1] (default 0)")
    p.add_argument("--eos-id", type=int, default=None,
                   help="stop a row after this id (default: never; the toy tasks use 1 as a token)")
    _add_model_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("show", parents=[debug], help="print a model's layers and parameters",
                       description="Prints the layer tree, the layers with weights (path, "
                       "shapes, parameter count) and the total. MODEL_OR_CHECKPOINT: a "
                       "pretrained name, a checkpoint or output directory, or a spec like "
                       "TransformerLM:d_model=32,n_layers=2,vocab_size=32.")
    p.add_argument("model_or_checkpoint", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--svg", metavar="FILE", help="also draw the layer tree into this SVG file")
    p.add_argument("--mode", choices=["train", "eval", "predict"], default="train",
                   help="mode to build the model in (default train, as Trax prints it)")
    _add_model_args(p)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("convert", parents=[debug], help="Trax .pkl.gz <-> native .safetensors",
                       description="Converts a Trax checkpoint (.pkl.gz) into retrax's native "
                       "format (.safetensors), or back; the direction follows the input.")
    p.add_argument("input", metavar="IN")
    p.add_argument("output", metavar="OUT")
    p.set_defaults(func=cmd_convert)
    return parser


def _one_line(err: BaseException | str) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _silence_stdout() -> None:
    """Points stdout at /dev/null so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # Not a real file (captured output): nothing will be flushed to a closed pipe.


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``retrax`` command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("missing command; choose one of quickstart, train, sample, show, convert")
    prog = f"retrax {args.command}"
    args.debug = getattr(args, "debug", False)  # Given before or after the command.
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # The reader went away (`retrax show X | head`): stop quietly.
        _silence_stdout()
        return 141  # What a shell reports for a process ended by SIGPIPE.
    except Exception as err:
        if args.debug:
            raise
        print(f"{prog}: error: {type(err).__name__}: {_one_line(err)} (run with --debug for "
              f"the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
