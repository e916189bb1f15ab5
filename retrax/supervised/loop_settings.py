"""A Loop's layout and precision settings, and how a resumed run gets them back.

``Loop(..., sharding=..., compute_dtype=...)`` (see
:mod:`retrax.supervised.sharding` and :mod:`retrax.supervised.mixed_precision`)
are saved in the run's ``config.json``. Left at None, a run resuming from a
checkpoint in ``output_dir`` takes the recorded values; a fresh run takes the
defaults (``'replicated'``, ``'float32'``). A value passed explicitly wins, and
the Loop notes when it differs from the recorded one: the checkpoints hold
whole float32 arrays, so they load into either layout and precision.

In a multi-process run every process uses process 0's settings (process 0
writes ``config.json``; the others may not see it), so all compile the same
program.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from retrax.supervised import mixed_precision
from retrax.supervised import sharding as sharding_rules
from retrax.supervised.loop_checkpoints import native_checkpoints

__all__ = ["CHOICES", "check_setting", "run_settings", "recorded_settings"]

# Each setting's allowed values, the default first ('tensor:K': K a positive integer).
CHOICES = {"sharding": (*sharding_rules.SHARDINGS, "tensor:K"),
           "compute_dtype": mixed_precision.COMPUTE_DTYPES}
_CHECKS = {"sharding": sharding_rules.check_sharding,
           "compute_dtype": mixed_precision.check_compute_dtype}


def check_setting(key: str, value: Any) -> str:
    """``value`` checked as setting ``key`` (a ValueError naming the choices if it is not one).

    >>> check_setting('sharding', 'tensor:4')
    'tensor:4'
    """
    return _CHECKS[key](value)


def _valid(key: str, value: Any) -> bool:
    try:
        return value is not None and check_setting(key, value) == value
    except ValueError:
        return False


def recorded_settings(output_dir: str | None) -> dict[str, str]:
    """The settings ``output_dir/config.json`` recorded, when it holds a checkpoint to resume."""
    if output_dir is None or not (native_checkpoints(output_dir) or os.path.exists(
            os.path.join(output_dir, "model.pkl.gz"))):
        return {}
    try:
        with open(os.path.join(output_dir, "config.json"), encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return {}
    if not isinstance(recorded, dict):
        return {}
    return {key: recorded[key] for key in CHOICES if _valid(key, recorded.get(key))}


def run_settings(output_dir: str | None, sharding: Any,
                 compute_dtype: Any) -> tuple[dict[str, str], str | None]:
    """``({'sharding': ..., 'compute_dtype': ...}, note or None)`` for a new Loop.

    Raises a ValueError listing the choices for a value that is not one.

    >>> run_settings(None, None, 'bfloat16')
    ({'sharding': 'replicated', 'compute_dtype': 'bfloat16'}, None)
    """
    asked = {key: None if value is None else check_setting(key, value)
             for key, value in (("sharding", sharding), ("compute_dtype", compute_dtype))}
    recorded = recorded_settings(output_dir)
    settings, changed = {}, []
    for key, allowed in CHOICES.items():
        saved = recorded.get(key)
        if asked[key] is None:
            settings[key] = saved if saved is not None else allowed[0]
        else:
            settings[key] = asked[key]
            if saved is not None and saved != asked[key]:
                changed.append(f"{key}={saved!r} -> {asked[key]!r}")
    settings = _agreed(settings)
    note = None
    if changed:
        note = (f"Note: resuming with {', '.join(changed)} (config.json recorded the first "
                f"values); checkpoints hold whole float32 arrays, so this one loads either way.")
    return settings, note


def _code(key: str, value: str) -> int:
    """A setting as an int for broadcasting: its index in CHOICES, or -K for 'tensor:K'."""
    if value in CHOICES[key]:
        return CHOICES[key].index(value)
    return -sharding_rules.model_axis_size(value)


def _decode(key: str, code: int) -> str:
    return CHOICES[key][code] if code >= 0 else f"tensor:{-code}"


def _agreed(settings: dict[str, str]) -> dict[str, str]:
    """Process 0's settings in every process (a collective when there are several)."""
    if jax.process_count() == 1:
        return settings
    from jax.experimental import multihost_utils

    codes = np.array([_code(key, settings[key]) for key in CHOICES], np.int32)
    chief = np.asarray(multihost_utils.broadcast_one_to_all(codes))
    return {key: _decode(key, int(code)) for key, code in zip(CHOICES, chief)}
