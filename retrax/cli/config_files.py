"""Config files and values of the ``retrax`` command: JSON/YAML files, ``--set`` overrides.

>>> cfg = {'model': {'d_model': 32}}
>>> apply_override(cfg, 'model.d_model=64'); apply_override(cfg, 'task.name=sort')
>>> cfg
{'model': {'d_model': 64}, 'task': {'name': 'sort'}}
>>> parse_value('0.5'), parse_value('null'), parse_value('Gelu')
(0.5, None, 'Gelu')
"""

from __future__ import annotations

import json
import os
from typing import Any

from retrax.cli.errors import UsageError, one_line

__all__ = ["parse_value", "apply_override", "read_text", "strict_json", "load_config"]


def parse_value(text: str) -> Any:
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
    node[parts[-1]] = parse_value(value)


def read_text(path: str, what: str) -> str:
    """The UTF-8 text of the file ``path``; a UsageError naming ``what`` and ``path`` if not."""
    if os.path.isdir(path):
        raise UsageError(f"{what} {path} is a directory; pass a file.")
    if not os.path.isfile(path):
        raise UsageError(f"{what} not found: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise UsageError(f"cannot read {what} {path}: {err.strerror or one_line(err)}.") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise UsageError(f"{what} {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at "
                         f"offset {err.start}); save it as UTF-8.") from None


def strict_json(text: str) -> Any:
    """``json.loads`` without the NaN / Infinity extension (not JSON; they break training)."""
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number; write a finite number")

    return json.loads(text, parse_constant=refuse)


def load_config(path: str) -> dict:
    """Reads a JSON or YAML (``.yaml``/``.yml``, needs PyYAML) config file."""
    text = read_text(path, "config file")
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise UsageError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); "
                             f"or write the config as JSON.") from None
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UsageError(f"{path} is not valid YAML: {one_line(err)}") from None
    else:
        try:
            config = strict_json(text)
        except ValueError as err:  # json.JSONDecodeError is a ValueError
            raise UsageError(f"{path} is not valid JSON: {one_line(err)}") from None
    if not isinstance(config, dict):
        raise UsageError(f"{path}: the config must be a mapping of sections; "
                         f"got {type(config).__name__}.")
    return config
