"""Read and write Trax checkpoints without running arbitrary pickle code.

Trax checkpoints are gzip'd pickles, and ``pickle.load`` runs whatever a file
says. Here they are read with the restricted unpickler of
:mod:`retrax.compat.safe_unpickle`, which resolves only the globals real Trax
files contain (NumPy arrays, ``ShapeDtype``, ``History``, containers), and their
gzip and ``.npy`` streams with :mod:`retrax.compat.npy_stream`.
Layouts (TRAX_REFERENCE.md section 10.1): ``'save_to_file'`` (``Layer.save_to_file``),
``'loop'`` (``training.Loop``: weights in ``<base>.weights.npy.gz``, slots in
``<base>.opt_slots{i}.npy.gz``) and ``'trainer'`` (older, all inline).
``write_trax_loop_checkpoint`` writes the Loop layout, readable by real Trax.

Faults: a damaged, truncated or hostile file raises :class:`retrax.io.CheckpointError`
naming it (errors from the pickle itself are :class:`TraxPickleError`, which is
also a ``pickle.UnpicklingError``). What a pickle may call and hold is
checked by :mod:`retrax.compat.safe_unpickle`; arrays or gzip streams larger than
:func:`retrax.io.expansion_limit` allows are refused before they are allocated.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import io
import operator
import os
import pickle
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrax.compat.npy_stream import (
    COMPRESSLEVEL,
    GzipReader,
    read_file,
    read_npy_stream,
    write_gzip_atomic,
    write_npy_stream,
)
from retrax.compat.safe_unpickle import (
    ALLOWED_GLOBALS,
    TraxHistory,
    TraxPickleError,
    TraxUnpickler,
    dtype_problem,
    load_trax_pickle,
)
from retrax.io import CheckpointError, expansion_limit, filesystem
from retrax.shapes import ShapeDtype

__all__ = [
    "ALLOWED_GLOBALS",
    "TraxCheckpoint",
    "TraxHistory",
    "TraxPickleError",
    "TraxUnpickler",
    "load_trax_pickle",
    "read_trax_checkpoint",
    "write_trax_loop_checkpoint",
]

# Trax's version string for the Loop layout; real Trax does not check it.
_LOOP_VERSION = "Mar-10-2021"


@dataclasses.dataclass
class TraxCheckpoint:
    """The contents of a Trax ``.pkl.gz`` checkpoint, as NumPy arrays and plain data.

    ``slots`` is a list with one flat list of arrays per train task (the order
    of Trax's ``opt_slots{i}`` files; for Adam ``[m0, v0, m1, v1, ...]``), or
    ``None`` when the checkpoint has no optimizer slots. ``history`` is
    ``{'train': {metric: [(step, value), ...]}, 'eval': {...}}``.
    """

    layout: str
    flat_weights: list[np.ndarray]
    flat_state: list | None = None
    flat_eval_state: list | None = None
    input_signature: Any = None
    step: int | None = None
    history: dict | None = None
    slots: list[list[np.ndarray]] | None = None
    version_timestamp: str | None = None
    opt_params: dict | None = None  # only the old trainer layout has it


_filesystem = filesystem


def _numeric(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    problem = dtype_problem(arr.dtype)
    if problem:
        raise TypeError(f"{what} has {problem}")
    return arr


def _flat_arrays(tree: Any) -> list[np.ndarray]:
    """Depth-first leaves of a slots tree, skipping ``None`` and ``()`` like Trax."""
    if tree is None:
        return []
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _flat_arrays(item)]
    return [_numeric(tree, "an optimizer slot")]


def _normalise_history(history: Any) -> dict | None:
    """Turns a History object / ``{'_values': ...}`` / mode dict into plain lists of floats."""
    if history is None:
        return None
    values = getattr(history, "_values", history)
    if isinstance(values, dict) and isinstance(values.get("_values"), dict):
        values = values["_values"]
    if not isinstance(values, dict):
        raise TypeError(f"unrecognised Trax history of type {type(history).__name__}")
    out: dict[str, dict[str, list[tuple[int, float]]]] = {"train": {}, "eval": {}}
    for mode, metrics in values.items():
        # Values are Python floats, np.float64 or 0-d (jax) arrays: all become floats.
        out[str(mode)] = {
            str(name): [(int(step), float(np.asarray(value))) for step, value in pairs]
            for name, pairs in metrics.items()
        }
    return out


def _check_signature(sig: Any, depth: int = 0) -> None:
    if sig is None or isinstance(sig, ShapeDtype):
        return
    if isinstance(sig, (tuple, list)) and depth < 8:
        for item in sig:
            _check_signature(item, depth + 1)
        return
    raise TypeError(f"input_signature holds a {type(sig).__name__}, not ShapeDtype")


def read_trax_checkpoint(
    path: str | os.PathLike, *, uint16_as_bfloat16: bool = False,
    max_expansion: float | None = None,
) -> TraxCheckpoint:
    """Reads a Trax checkpoint (``.pkl.gz`` plus its side files) without unsafe unpickling.

    Args:
      path: the ``.pkl.gz`` file; a local path or any fsspec URL (``gs://`` needs gcsfs).
      uint16_as_bfloat16: Trax's Loop stores bfloat16 weights/slots as uint16
        bit patterns in the ``.npy.gz`` streams. By default they are returned as
        uint16 (a real uint16 weight cannot be told apart); set this to view
        every uint16 array from those streams as ``ml_dtypes.bfloat16``.
      max_expansion: how many times its size on disk each file may expand to
        (default ``retrax.io.MAX_EXPANSION``; see :func:`retrax.io.expansion_limit`).

    Raises:
      TraxPickleError: the pickle references a global outside ``ALLOWED_GLOBALS``,
        holds object/string arrays, refers to itself, nests too deeply or is damaged
        (a ``CheckpointError`` and a ``pickle.UnpicklingError``).
      CheckpointError: a file is not gzip, is truncated, expands past the limit, or
        does not have a Trax checkpoint's layout (a ``ValueError``).
      FileNotFoundError: the checkpoint or its weights file is missing.
    """
    fs, p = _filesystem(path)
    name = os.fspath(path)
    what = "Trax checkpoint"
    compressed = read_file(fs, p)
    limit = expansion_limit(len(compressed), max_expansion)
    f = GzipReader(compressed, limit, name, what)
    try:
        d = load_trax_pickle(f, source=name, max_array_bytes=limit)  # type: ignore[arg-type]
        f.drain()
    finally:
        f.close()
    if not isinstance(d, dict) or "flat_weights" not in d:
        found = (f"a dict with keys {sorted(map(str, d))[:8]}" if isinstance(d, dict)
                 else f"a {type(d).__name__}")
        raise CheckpointError(
            f"{name!r} is not a Trax checkpoint (no flat_weights): its pickle holds {found}, "
            f"where Trax writes a dict with 'flat_weights', 'flat_state' and "
            f"'input_signature'. Check that the path names a checkpoint written by Trax or "
            f"retrax.")
    try:
        return _checkpoint_from_dict(d, fs, p, uint16_as_bfloat16, max_expansion)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, OverflowError) as err:
        raise CheckpointError(
            f"Cannot read {what} {name}: its contents are not laid out the way Trax writes "
            f"them ({type(err).__name__}: {err}). The file is damaged or was written by "
            f"another program.") from err


def _checkpoint_from_dict(d: dict, fs: Any, p: str, uint16_as_bfloat16: bool,
                          max_expansion: float | None) -> TraxCheckpoint:
    if "slots" in d or "opt_params" in d:
        layout = "trainer"
    elif "step" in d or "slots_per_task" in d:
        layout = "loop"
    else:
        layout = "save_to_file"
    base = p.removesuffix(".pkl.gz")

    weights = d["flat_weights"]
    if isinstance(weights, int) and not isinstance(weights, bool):
        # The int is the compresslevel; the arrays are in a companion file
        # named as Layer.init_from_file names it, with the same fallback.
        companion = p[:-6] + "weights.npy.gz" if p.endswith(".pkl.gz") else p + ".npy"
        if not fs.exists(companion) and fs.exists(p + ".npy"):
            companion = p + ".npy"
        flat_weights = read_npy_stream(fs, companion, uint16_as_bfloat16, max_expansion)
    elif isinstance(weights, (list, tuple)):
        flat_weights = [_numeric(w, f"flat_weights[{i}]") for i, w in enumerate(weights)]
    else:
        raise TypeError(f"flat_weights is a {type(weights).__name__}, not a list of arrays")

    slots: list[list[np.ndarray]] | None = None
    if "slots" in d:  # old single-task layout: a tuple of per-weight slot tuples
        slots = [_flat_arrays(d["slots"])]
    elif isinstance(d.get("slots_per_task"), int):
        slots = []
        while fs.exists(f"{base}.opt_slots{len(slots)}.npy.gz"):
            slot_path = f"{base}.opt_slots{len(slots)}.npy.gz"
            slots.append(read_npy_stream(fs, slot_path, uint16_as_bfloat16, max_expansion))
        slots = slots or None  # Trax needs them to resume training, not to load weights
    elif isinstance(d.get("slots_per_task"), (list, tuple)):
        slots = [_flat_arrays(task) for task in d["slots_per_task"]]

    def arrays(key: str) -> Any:
        if d.get(key) is None:
            return None
        return [_numeric(x, f"{key}[{i}]") for i, x in enumerate(d[key])]

    _check_signature(d.get("input_signature"))
    opt = d.get("opt_params")
    return TraxCheckpoint(
        layout=layout,
        flat_weights=flat_weights,
        flat_state=arrays("flat_state"),
        flat_eval_state=arrays("flat_eval_state"),
        input_signature=d.get("input_signature"),
        step=None if d.get("step") is None else operator.index(d["step"]),
        history=_normalise_history(d.get("history")),
        slots=slots,
        version_timestamp=d.get("version_timestamp"),
        opt_params=None if opt is None else {
            k: _numeric(v, f"opt_params[{k!r}]") for k, v in opt.items()},
    )


class _TraxShapeDtypeRef:
    """Placeholder that the pickler writes as the global ``trax.shapes.ShapeDtype``."""


class TraxPickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickler that writes ``retrax.shapes.ShapeDtype`` as ``trax.shapes.ShapeDtype``.

    The C pickler insists that a global be importable (trax is not installed
    here) and has no hook to write opcodes, so this uses the pure-Python
    pickler, whose ``save_global`` can be overridden. The checkpoint pickle is
    small (weights go to the ``.npy.gz`` file), so its speed does not matter.
    """

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, ShapeDtype):
            # ShapeDtype(shape, dtype) is a valid call for both Trax and retrax.
            return _TraxShapeDtypeRef, (tuple(obj.shape), np.dtype(obj.dtype))
        return NotImplemented

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is not _TraxShapeDtypeRef or self.proto < 4:
            super().save_global(obj, name)
            return
        # What save_global itself writes for protocol >= 4, minus the import check.
        self.save("trax.shapes")
        self.save("ShapeDtype")
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)


def _to_storable(x: Any) -> np.ndarray:
    """NumPy copy of an array for a checkpoint; bfloat16 becomes its uint16 bits as in Trax."""
    arr = np.asarray(x)  # jax Arrays become NumPy arrays here
    if arr.dtype.name == "bfloat16":
        arr = arr.view(np.uint16)
    if arr.dtype.kind not in "biufc" or arr.dtype.fields is not None:
        # ml_dtypes (kind 'V'), structured, string and object dtypes would need
        # globals or pickled objects that no Trax reader should accept.
        raise ValueError(f"cannot store dtype {arr.dtype} in a Trax checkpoint")
    return arr


def write_trax_loop_checkpoint(
    base_path: str | os.PathLike,
    flat_weights: Sequence[Any],
    *,
    flat_state: Sequence[Any] = (),
    flat_eval_state: Sequence[Any] | None = None,
    step: int = 0,
    history: Any = None,
    input_signature: Any = None,
    flat_slots: Sequence[Any] | None = None,
    inline: bool = False,
) -> str:
    """Writes a checkpoint in the layout of Trax's ``training.Loop``; returns the ``.pkl.gz`` path.

    Files: ``<base>.weights.npy.gz``, ``<base>.opt_slots0.npy.gz`` (only when
    ``flat_slots`` is given; a list of per-task lists writes one file per task)
    and, last, ``<base>.pkl.gz``, so a ``.pkl.gz`` on disk always has its side
    files. Each is replaced atomically, but not all together: a crash between
    two renames leaves side files one step ahead of the ``.pkl.gz``.

    ``inline=True`` puts the weights and slots inside the ``.pkl.gz`` instead
    (``flat_weights`` and ``slots_per_task`` as lists, which Trax's
    ``Loop.load_checkpoint`` and ``Layer.init_from_file`` both read), writes
    that one file atomically and removes side files of an earlier write: no
    reader, crash or kill can then see weights and metadata of different
    steps. The retrax ``Loop`` writes this form. ``flat_eval_state=None`` stores
    ``flat_state`` again, which is what Trax falls back to when it is missing.
    ``history`` may be a History-like object, ``{'_values': ...}`` or
    ``{'train': {...}, 'eval': {...}}``. Note that Trax's ``Loop`` resume reads
    ``opt_slots{i}`` files unconditionally; ``Layer.init_from_file`` does not.
    """
    base = os.fspath(base_path).removesuffix(".pkl.gz")
    filesystem(base)  # fail early on a URL whose backend is missing

    # Convert and check everything before touching the disk.
    weights = [_to_storable(w) for w in flat_weights]
    state = eval_state = [_to_storable(x) for x in flat_state]
    if flat_eval_state is not None:
        eval_state = [_to_storable(x) for x in flat_eval_state]
    if flat_slots is None:
        slots_per_task: list[list[np.ndarray]] = []
    elif len(flat_slots) and all(isinstance(s, (list, tuple)) for s in flat_slots):
        slots_per_task = [[_to_storable(x) for x in task] for task in flat_slots]
    else:
        slots_per_task = [[_to_storable(x) for x in flat_slots]]
    hist = _normalise_history(history) or {"train": {}, "eval": {}}
    payload = {
        "step": int(step),
        "flat_weights": weights if inline else COMPRESSLEVEL,
        "flat_state": state,
        "flat_eval_state": eval_state,
        # Trax's History.to_dict(): per-mode defaultdict(list) of (step, value) pairs.
        "history": {"_values": {m: collections.defaultdict(list, v) for m, v in hist.items()}},
        "slots_per_task": slots_per_task if inline else COMPRESSLEVEL,
        "input_signature": input_signature,
        "version_timestamp": _LOOP_VERSION,
    }
    buffer = io.BytesIO()
    TraxPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    data = buffer.getvalue()
    # Anything our own safe reader refuses (e.g. a retrax class in the
    # signature) would be unreadable by Trax too: fail before writing.
    load_trax_pickle(io.BytesIO(data))

    if inline:
        write_gzip_atomic(base + ".pkl.gz", lambda f: f.write(data))
        _remove_side_files(base)
        return base + ".pkl.gz"
    write_gzip_atomic(base + ".weights.npy.gz", write_npy_stream(weights))
    for i, task_slots in enumerate(slots_per_task):
        write_gzip_atomic(f"{base}.opt_slots{i}.npy.gz", write_npy_stream(task_slots))
    write_gzip_atomic(base + ".pkl.gz", lambda f: f.write(data))
    return base + ".pkl.gz"


def _remove_side_files(base: str) -> None:
    """Deletes ``<base>.weights.npy.gz`` and ``<base>.opt_slots<i>.npy.gz`` (stale after inline)."""
    fs, _ = filesystem(base)
    for path in [base + ".weights.npy.gz", *fs.glob(glob.escape(base) + ".opt_slots*.npy.gz")]:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
