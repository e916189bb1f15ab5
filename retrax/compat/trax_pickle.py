"""Read and write Trax checkpoints without running arbitrary pickle code.

Trax checkpoints are gzip'd pickles, and ``pickle.load`` runs whatever a file
says. Here they are read with an unpickler that resolves only the globals real
Trax files contain (NumPy arrays, ``ShapeDtype``, ``History``, containers).
Layouts (TRAX_REFERENCE.md section 10.1): ``'save_to_file'`` (``Layer.save_to_file``),
``'loop'`` (``training.Loop``: weights in ``<base>.weights.npy.gz``, slots in
``<base>.opt_slots{i}.npy.gz``) and ``'trainer'`` (older, all inline).
``write_trax_loop_checkpoint`` writes the Loop layout, readable by real Trax.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import gzip
import io
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import fsspec
import numpy as np

from retrax.io import filesystem, write_atomic
from retrax.shapes import ShapeDtype

__all__ = [
    "ALLOWED_GLOBALS",
    "TraxCheckpoint",
    "TraxHistory",
    "TraxUnpickler",
    "load_trax_pickle",
    "read_trax_checkpoint",
    "write_trax_loop_checkpoint",
]

# NumPy's private rebuild functions, taken from what NumPy itself puts in its
# reduce tuples. This is the public route to them: it works whether they live
# in numpy.core (1.x) or numpy._core (2.x) and never touches the deprecated
# numpy.core shim, so files pickled under NumPy 1.x load under NumPy 2.
_NP_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NP_SCALAR = np.float32(0).__reduce__()[0]
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_NP_SCALAR_TYPES = [f"{u}int{n}" for u in ("", "u") for n in (8, 16, 32, 64)]
_NP_SCALAR_TYPES += ["float16", "float32", "float64", "complex64", "complex128"]
_NP_SCALAR_TYPES += ["bool_", "bool"]  # NumPy 2 pickles np.bool_ as numpy.bool
# Trax's version string for the Loop layout; real Trax does not check it.
_LOOP_VERSION = "Mar-10-2021"
# Trax writes every gzip stream at compresslevel 2 and stores that int in
# place of the data it moved to a side file.
_COMPRESSLEVEL = 2


class TraxHistory:
    """Stand-in for ``trax.supervised.history.History``: only holds ``_values``.

    ``_values`` maps a mode (``'train'``/``'eval'``) to ``{metric: [(step, value), ...]}``.
    """

    def __init__(self, values: dict[str, Any] | None = None):
        self._values: dict[str, Any] = dict(values or {})

    def __setstate__(self, state: Any) -> None:
        # Trax pickles History by its __dict__; accept (None, dict) too, as for slots.
        if isinstance(state, tuple) and len(state) == 2:
            state = state[1] or state[0]
        if not isinstance(state, dict) or not isinstance(state.get("_values"), dict):
            msg = "Trax History state must be a dict with '_values'"
            raise pickle.UnpicklingError(msg)
        self._values = state["_values"]


def _rebuild_jax_array(fun: Any, args: tuple, arr_state: Any, aval_state: Any) -> Any:
    """Replaces ``jax._src.array._reconstruct_array``: rebuilds a NumPy array.

    jax pickles an Array as ``(ndarray reduce tuple..., aval_state)``; ``aval_state``
    (``weak_type``) only matters while tracing, so it is dropped.
    """
    del aval_state
    ok = fun is _NP_RECONSTRUCT or fun is _NP_FROMBUFFER
    arr = fun(*args) if ok else None
    if not isinstance(arr, np.ndarray):
        raise pickle.UnpicklingError("a jax array in the pickle is not NumPy data")
    if arr_state is not None:
        arr.__setstate__(arr_state)
    return arr


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _NP_RECONSTRUCT
        allowed[(f"{core}.multiarray", "scalar")] = _NP_SCALAR
        allowed[(f"{core}.numeric", "_frombuffer")] = _NP_FROMBUFFER
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in _NP_SCALAR_TYPES:
        allowed[("numpy", name)] = getattr(np, name)
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    # Builtin types appear as defaultdict factories (defaultdict(list)).
    for typ in (list, dict, tuple, set, int, float):
        allowed[("builtins", typ.__name__)] = typ
    allowed[("jax._src.array", "_reconstruct_array")] = _rebuild_jax_array
    allowed[("trax.shapes", "ShapeDtype")] = ShapeDtype
    allowed[("trax.supervised.history", "History")] = TraxHistory
    return allowed


_ALLOWED = _allowed_globals()
#: Every ``(module, name)`` global a Trax checkpoint pickle may reference.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_ALLOWED)


class TraxUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``ALLOWED_GLOBALS``.

    Every callable a pickle can invoke comes from ``find_class``, so refusing
    unknown globals here stops ``os.system``-style payloads before they run.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}': the file is not a Trax "
                "checkpoint or may be unsafe (only NumPy arrays, ShapeDtype, History "
                "and plain containers are allowed)"
            ) from None


def _reject_object_arrays(obj: Any) -> None:
    """Raises if any array in the loaded tree has an object dtype.

    Object arrays are not data a checkpoint should hold, and code that later
    does arithmetic on them would call methods of arbitrary Python objects.
    """
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed in a Trax checkpoint")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _reject_object_arrays(key)
            _reject_object_arrays(value)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _reject_object_arrays(item)
    elif isinstance(obj, TraxHistory):
        _reject_object_arrays(obj._values)


def load_trax_pickle(file: BinaryIO) -> Any:
    """Loads one pickle from an (already decompressed) binary file, safely."""
    obj = TraxUnpickler(file).load()
    _reject_object_arrays(obj)
    return obj


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


def _open_read(fs: fsspec.AbstractFileSystem, path: str) -> BinaryIO:
    try:
        return fs.open(path, "rb")
    except FileNotFoundError as err:
        msg = "Trax checkpoint file not found"
        raise FileNotFoundError(errno.ENOENT, msg, path) from err


def _read_npy_stream(fs: Any, path: str, bfloat16: bool) -> list[np.ndarray]:
    """Reads a gzip stream of back-to-back ``.npy`` records (Trax's ``np_from_file``).

    ``read_array`` never seeks backwards (``np.load`` does, and a backwards
    seek on a gzip stream decompresses it again from the start).
    """
    arrays = []
    with _open_read(fs, path) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        while f.peek(1):
            arr = np.lib.format.read_array(f, allow_pickle=False)
            if bfloat16 and arr.dtype == np.uint16:
                import ml_dtypes  # jax's dependency; only needed on request

                arr = arr.view(ml_dtypes.bfloat16)
            arrays.append(arr)
    return arrays


def _flat_arrays(tree: Any) -> list[np.ndarray]:
    """Depth-first leaves of a slots tree, skipping ``None`` and ``()`` like Trax."""
    if tree is None:
        return []
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in _flat_arrays(item)]
    return [np.asarray(tree)]


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


def read_trax_checkpoint(
    path: str | os.PathLike, *, uint16_as_bfloat16: bool = False
) -> TraxCheckpoint:
    """Reads a Trax checkpoint (``.pkl.gz`` plus its side files) without unsafe unpickling.

    Args:
      path: the ``.pkl.gz`` file; a local path or any fsspec URL (``gs://`` needs gcsfs).
      uint16_as_bfloat16: Trax's Loop stores bfloat16 weights/slots as uint16
        bit patterns in the ``.npy.gz`` streams. By default they are returned as
        uint16 (a real uint16 weight cannot be told apart); set this to view
        every uint16 array from those streams as ``ml_dtypes.bfloat16``.

    Raises:
      pickle.UnpicklingError: the pickle references a global outside ``ALLOWED_GLOBALS``
        or holds object arrays.
      FileNotFoundError: the checkpoint or its weights file is missing.
    """
    fs, p = _filesystem(path)
    with _open_read(fs, p) as raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        d = load_trax_pickle(f)
    if not isinstance(d, dict) or "flat_weights" not in d:
        raise ValueError(f"{os.fspath(path)!r} is not a Trax checkpoint (no flat_weights)")

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
        flat_weights = _read_npy_stream(fs, companion, uint16_as_bfloat16)
    else:
        flat_weights = [np.asarray(w) for w in weights]

    slots: list[list[np.ndarray]] | None = None
    if "slots" in d:  # old single-task layout: a tuple of per-weight slot tuples
        slots = [_flat_arrays(d["slots"])]
    elif isinstance(d.get("slots_per_task"), int):
        slots = []
        while fs.exists(f"{base}.opt_slots{len(slots)}.npy.gz"):
            slot_path = f"{base}.opt_slots{len(slots)}.npy.gz"
            slots.append(_read_npy_stream(fs, slot_path, uint16_as_bfloat16))
        slots = slots or None  # Trax needs them to resume training, not to load weights
    elif isinstance(d.get("slots_per_task"), (list, tuple)):
        slots = [_flat_arrays(task) for task in d["slots_per_task"]]

    def arrays(key: str) -> Any:
        return None if d.get(key) is None else [np.asarray(x) for x in d[key]]

    opt = d.get("opt_params")
    return TraxCheckpoint(
        layout=layout,
        flat_weights=flat_weights,
        flat_state=arrays("flat_state"),
        flat_eval_state=arrays("flat_eval_state"),
        input_signature=d.get("input_signature"),
        step=None if d.get("step") is None else int(d["step"]),
        history=_normalise_history(d.get("history")),
        slots=slots,
        version_timestamp=d.get("version_timestamp"),
        opt_params=None if opt is None else {k: np.asarray(v) for k, v in opt.items()},
    )


class _TraxShapeDtypeRef:
    """Placeholder that the pickler writes as the global ``trax.shapes.ShapeDtype``."""


class _TraxPickler(pickle._Pickler):  # type: ignore[name-defined]
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


def _write_gzip_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Writes a gzip file (compresslevel 2) atomically (see :func:`retrax.io.write_atomic`)."""

    def write_gzip(raw: BinaryIO) -> None:
        # filename='' keeps the temp name out of the gzip header; mtime=0 makes
        # the bytes reproducible.
        kw = {"compresslevel": _COMPRESSLEVEL, "mtime": 0, "filename": ""}
        with gzip.GzipFile(fileobj=raw, mode="wb", **kw) as gz:
            write(gz)

    write_atomic(path, write_gzip)


def _write_npy_stream(arrays: Sequence[np.ndarray]) -> Callable[[BinaryIO], None]:
    def write(f: BinaryIO) -> None:
        for arr in arrays:
            np.lib.format.write_array(f, arr, allow_pickle=False)

    return write


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
) -> str:
    """Writes a checkpoint in the layout of Trax's ``training.Loop``; returns the ``.pkl.gz`` path.

    Files: ``<base>.weights.npy.gz``, ``<base>.opt_slots0.npy.gz`` (only when
    ``flat_slots`` is given; a list of per-task lists writes one file per task)
    and, last, ``<base>.pkl.gz``, so a ``.pkl.gz`` on disk always has its side
    files. Each is replaced atomically. ``flat_eval_state=None`` stores
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
        "flat_weights": _COMPRESSLEVEL,
        "flat_state": state,
        "flat_eval_state": eval_state,
        # Trax's History.to_dict(): per-mode defaultdict(list) of (step, value) pairs.
        "history": {"_values": {m: collections.defaultdict(list, v) for m, v in hist.items()}},
        "slots_per_task": _COMPRESSLEVEL,
        "input_signature": input_signature,
        "version_timestamp": _LOOP_VERSION,
    }
    buffer = io.BytesIO()
    _TraxPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    data = buffer.getvalue()
    # Anything our own safe reader refuses (e.g. a retrax class in the
    # signature) would be unreadable by Trax too: fail before writing.
    load_trax_pickle(io.BytesIO(data))

    _write_gzip_atomic(base + ".weights.npy.gz", _write_npy_stream(weights))
    for i, task_slots in enumerate(slots_per_task):
        _write_gzip_atomic(f"{base}.opt_slots{i}.npy.gz", _write_npy_stream(task_slots))
    _write_gzip_atomic(base + ".pkl.gz", lambda f: f.write(data))
    return base + ".pkl.gz"
