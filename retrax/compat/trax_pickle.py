"""Read and write Trax checkpoints without running arbitrary pickle code.

Trax checkpoints are gzip'd pickles, and ``pickle.load`` runs whatever a file
says. Here they are read with an unpickler that resolves only the globals real
Trax files contain (NumPy arrays, ``ShapeDtype``, ``History``, containers).
Layouts (TRAX_REFERENCE.md section 10.1): ``'save_to_file'`` (``Layer.save_to_file``),
``'loop'`` (``training.Loop``: weights in ``<base>.weights.npy.gz``, slots in
``<base>.opt_slots{i}.npy.gz``) and ``'trainer'`` (older, all inline).
``write_trax_loop_checkpoint`` writes the Loop layout, readable by real Trax.

Faults: a damaged, truncated or hostile file raises :class:`retrax.io.CheckpointError`
naming it (errors from the pickle itself are :class:`TraxPickleError`, which is
also a ``pickle.UnpicklingError``). The pickle may only call NumPy's array
rebuilders (with numeric dtypes), ``_codecs.encode`` in the latin-1 form that
protocols 0-2 use for bytes, and the containers listed in ``ALLOWED_GLOBALS``;
self-referencing or deeply nested data, object/string/structured arrays and
arrays or gzip streams larger than :func:`retrax.io.expansion_limit` allows are
refused before they are used (or, for sizes, before they are allocated).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import dataclasses
import errno
import glob
import gzip
import io
import math
import operator
import os
import pickle
import zlib
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import fsspec
import numpy as np

import retrax.io as _rio
from retrax.io import CheckpointError, expansion_limit, filesystem, write_atomic
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


# Nesting depth and number of nodes (counting every path to a shared object)
# that a loaded pickle may have. Real Trax pickles nest about 6 deep and hold a
# few thousand nodes; the limits stop self-referencing and exponentially
# shared ("billion laughs") structures before code that walks them recurses
# or loops for ever.
_MAX_DEPTH = 100
_MAX_NODES = 10_000_000
# The dtype kinds an array in a checkpoint may have: bool, int, uint, float, complex.
_NUMERIC_KINDS = "biufc"
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 24


class TraxPickleError(CheckpointError, pickle.UnpicklingError):
    """A Trax pickle that is refused: unsafe, damaged, or not a checkpoint.

    It is a :class:`retrax.io.CheckpointError` (so a ``ValueError``) and, for
    code written against ``pickle``, an ``UnpicklingError``.
    """


class _Refused(pickle.UnpicklingError):
    """Raised while unpickling by this module's checks (a full sentence, no file name)."""


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
            raise _Refused(msg)
        self._values = state["_values"]


def _dtype_problem(dtype: np.dtype) -> str | None:
    """Why an array of ``dtype`` may not come out of a checkpoint, or None."""
    if dtype.kind in _NUMERIC_KINDS and dtype.fields is None and dtype.subdtype is None:
        return None
    return (f"dtype {dtype}, which is not allowed: a checkpoint may only hold numeric arrays "
            f"(bool, int, uint, float, complex), never object, string, void, structured or "
            f"datetime data")


def _as_dtype(spec: Any, what: str, verb: str = "has") -> np.dtype:
    """``np.dtype(spec)`` for a spec a NumPy pickle uses, refused unless numeric.

    ``what`` is the subject of the message (``an array in the pickle``).
    """
    numpy_type = isinstance(spec, type) and issubclass(spec, np.generic)
    if not (isinstance(spec, (str, bytes, np.dtype)) or numpy_type):
        raise _Refused(f"{what} names its dtype with a {type(spec).__name__}, which NumPy "
                       f"never writes")
    try:
        dtype = np.dtype(spec.decode("latin-1") if isinstance(spec, bytes) else spec)
    except (TypeError, ValueError) as err:
        raise _Refused(f"{what} has an invalid dtype {spec!r} ({err})") from None
    problem = _dtype_problem(dtype)
    if problem:
        raise _Refused(f"{what} {verb} {problem}")
    return dtype


def _as_shape(shape: Any, what: str) -> tuple[int, ...]:
    items = shape if isinstance(shape, (tuple, list)) else (shape,)
    try:
        dims = tuple(operator.index(d) for d in items)
    except TypeError:
        raise _Refused(f"{what} has shape {shape!r}; a shape is a tuple of ints") from None
    if any(d < 0 for d in dims) or len(dims) > 64:
        raise _Refused(f"{what} has shape {shape!r}; dimensions must be >= 0 (at most 64)")
    return dims


# Bytes that arrays made from a shape alone (not from data in the pickle) may
# still take during the current load; see TraxUnpickler.load.
_ARRAY_BUDGET: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "retrax_trax_pickle_array_budget", default=None)


def _claim(n_bytes: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuses an allocation the current load has no budget for, before it is made."""
    budget = _ARRAY_BUDGET.get()
    left = budget[0] if budget is not None else int(_rio.EXPANSION_FLOOR)
    if n_bytes > left:
        raise _Refused(
            f"an array of shape {shape} and dtype {dtype} asks for {n_bytes} bytes, more than "
            f"the {left} bytes this file may still expand to (a likely memory bomb; raise "
            f"retrax.io.MAX_EXPANSION or pass max_expansion= if the file is genuine)")
    if budget is not None:
        budget[0] -= n_bytes


class _Callable:
    """A function a pickle may call, behind an object that unpickling cannot alter.

    The real function objects would let a pickle's BUILD opcode set their
    attributes (``__defaults__`` ...); this wrapper has no ``__dict__`` and
    refuses ``setattr``.
    """

    __slots__ = ("_fn", "_label")

    def __init__(self, fn: Callable[..., Any], label: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_label", label)

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Refused(f"the pickle tries to set attribute {name!r} on {self._label}")

    def __delattr__(self, name: str) -> None:
        raise _Refused(f"the pickle tries to delete attribute {name!r} of {self._label}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<checked {self._label}>"


class _NdarrayType:
    """What the global ``numpy.ndarray`` resolves to: an argument for ``_reconstruct``.

    The real class would let a pickle call ``ndarray(shape)`` and allocate any
    amount of memory; this stand-in cannot be called or changed.
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise _Refused("the pickle calls numpy.ndarray(...) directly, which would allocate an "
                       "array of whatever size it names; NumPy's own pickles only pass "
                       "numpy.ndarray to _reconstruct")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


class _ObjectType:
    """What the global ``builtins.object`` resolves to: an argument for ``_reconstructor``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "builtins.object"


_OBJECT = _ObjectType()


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    # Protocols 0 and 1 write instances of plain classes (ShapeDtype, History)
    # as copyreg._reconstructor(cls, object, None), then BUILD their state.
    if cls not in (ShapeDtype, TraxHistory) or base is not _OBJECT or state is not None:
        raise _Refused(f"copyreg._reconstructor is only allowed for ShapeDtype and History "
                       f"instances; got _reconstructor({cls!r}, {base!r}, {state!r:.40})")
    return object.__new__(cls)


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # NumPy writes _reconstruct(ndarray, (0,), b'b') and fills the array with
    # __setstate__, which checks the data against the shape itself.
    if subtype is not _NDARRAY:
        raise _Refused(f"numpy _reconstruct is called with {subtype!r}; only numpy.ndarray is "
                       f"allowed")
    dims = _as_shape(shape, "an array in the pickle")
    dt = _as_dtype(dtype, "an array in the pickle")
    _claim(math.prod(dims) * dt.itemsize, dims, dt)
    return _NP_RECONSTRUCT(np.ndarray, dims, dt)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, *rest: Any) -> np.ndarray:
    # Protocol 5: the data is in the pickle; only the dtype needs checking.
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise _Refused(f"an array's data is a {type(buf).__name__}, not bytes")
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"an array's dtype is a {type(dtype).__name__}, not numpy.dtype")
    dims = _as_shape(shape, "an array in the pickle")
    dt = _as_dtype(dtype, "an array in the pickle")
    if len(memoryview(buf).cast("B")) != math.prod(dims) * dt.itemsize:
        raise _Refused(f"an array of shape {dims} and dtype {dt} comes with "
                       f"{len(memoryview(buf).cast('B'))} bytes of data, which does not fit")
    return _NP_FROMBUFFER(buf, dt, dims, order, *rest)


def _scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype):
        raise _Refused(f"a NumPy scalar's dtype is a {type(dtype).__name__}, not numpy.dtype")
    dt = _as_dtype(dtype, "a NumPy scalar in the pickle")
    if not isinstance(data, bytes) or len(data) != dt.itemsize:
        raise _Refused(f"a NumPy scalar of dtype {dt} needs {dt.itemsize} bytes of data")
    return _NP_SCALAR(dt, data)


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    del copy  # NumPy pickles pass copy=True; the dtype made below is always a fresh one
    if not isinstance(spec, str):
        raise _Refused(f"numpy.dtype is called with a {type(spec).__name__}; NumPy pickles "
                       f"call it with a type string such as 'f4'")
    dt = _as_dtype(spec, "the pickle", "asks for")
    return np.dtype(dt, align=bool(align), copy=True)


def _latin1_encode(text: Any, encoding: Any = None) -> bytes:
    # Protocols 0-2 write bytes as _codecs.encode(<str>, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"_codecs.encode is only allowed as _codecs.encode(<str>, 'latin1'), "
                       f"which is how protocols 0-2 write bytes; got "
                       f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    # Protocols 0-2 write b'' as bytes().
    if args:
        raise _Refused("builtins.bytes is only allowed with no arguments (protocols 0-2 "
                       "write b'' as bytes())")
    return b""


def _rebuild_jax_array(fun: Any, args: tuple, arr_state: Any, aval_state: Any) -> Any:
    """Replaces ``jax._src.array._reconstruct_array``: rebuilds a NumPy array.

    jax pickles an Array as ``(ndarray reduce tuple..., aval_state)``; ``aval_state``
    (``weak_type``) only matters while tracing, so it is dropped.
    """
    del aval_state
    if not (fun is _ALLOWED_RECONSTRUCT or fun is _ALLOWED_FROMBUFFER) or not isinstance(args, tuple):
        raise _Refused("a jax array in the pickle is not NumPy data")
    arr = fun(*args)
    if arr_state is not None:
        arr.__setstate__(arr_state)
    return arr


_ALLOWED_RECONSTRUCT = _Callable(_reconstruct, "numpy _reconstruct")
_ALLOWED_FROMBUFFER = _Callable(_frombuffer, "numpy _frombuffer")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    scalar = _Callable(_scalar, "numpy scalar")
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _ALLOWED_RECONSTRUCT
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _ALLOWED_FROMBUFFER
    allowed[("numpy", "ndarray")] = _NDARRAY
    allowed[("numpy", "dtype")] = _Callable(_dtype, "numpy.dtype")
    for name in _NP_SCALAR_TYPES:
        allowed[("numpy", name)] = getattr(np, name)
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    # Builtin types appear as defaultdict factories (defaultdict(list)).
    for typ in (list, dict, tuple, set, int, float):
        allowed[("builtins", typ.__name__)] = typ
    # Protocols 0-2 name builtins as __builtin__ (Python 2); pickle's own
    # find_class maps the names, which this one replaces.
    for name in ("list", "dict", "tuple", "set", "int", "float"):
        allowed[("__builtin__", name)] = allowed[("builtins", name)]
    allowed[("builtins", "bytes")] = _Callable(_empty_bytes, "builtins.bytes")
    allowed[("__builtin__", "bytes")] = allowed[("builtins", "bytes")]
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = _Callable(_reconstructor, "copyreg._reconstructor")
    for module in ("__builtin__", "builtins"):
        allowed[(module, "object")] = _OBJECT
    allowed[("_codecs", "encode")] = _Callable(_latin1_encode, "_codecs.encode")
    allowed[("jax._src.array", "_reconstruct_array")] = _Callable(
        _rebuild_jax_array, "jax array rebuild")
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
    NumPy's rebuilders are replaced by checked versions: numeric dtypes only,
    and arrays made from a shape alone may take at most ``max_array_bytes``
    in all (default ``retrax.io.EXPANSION_FLOOR``). Use :func:`load_trax_pickle`,
    which also checks the loaded data, rather than ``load`` alone.
    """

    def __init__(self, file: BinaryIO, *, max_array_bytes: int | None = None, **kwargs: Any):
        super().__init__(file, **kwargs)
        self.max_array_bytes = max_array_bytes

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(
                f"refusing to load global '{module}.{name}': the file is not a Trax "
                "checkpoint or may be unsafe (only NumPy arrays, ShapeDtype, History "
                "and plain containers are allowed)"
            ) from None

    def load(self) -> Any:
        limit = self.max_array_bytes
        budget = [int(_rio.EXPANSION_FLOOR) if limit is None else int(limit)]
        token = _ARRAY_BUDGET.set(budget)
        try:
            return super().load()
        finally:
            _ARRAY_BUDGET.reset(token)


_FACTORIES = (None, list, dict, tuple, set, int, float)
_LEAF_TYPES = (type(None), bool, int, float, complex, str, bytes)


def _children(obj: Any) -> list[Any] | None:
    """The objects inside a container of a loaded pickle; None for a leaf (checked here)."""
    if isinstance(obj, dict):
        factory = getattr(obj, "default_factory", None)
        if factory not in _FACTORIES:
            raise _Refused(f"a defaultdict in the pickle has factory {factory!r}; Trax only "
                           f"uses builtin containers")
        return [x for item in obj.items() for x in item]
    if isinstance(obj, (list, tuple, set)):
        return list(obj)
    if isinstance(obj, TraxHistory):
        return [obj._values]
    if isinstance(obj, ShapeDtype):
        _as_shape(getattr(obj, "shape", None), "a ShapeDtype in the pickle")
        _as_dtype(getattr(obj, "dtype", None), "a ShapeDtype in the pickle")
        return [obj.shape]
    if type(obj) is np.ndarray or isinstance(obj, np.generic):
        problem = _dtype_problem(obj.dtype)
        if problem:
            raise _Refused(f"an array in the pickle has {problem}")
        return None
    if isinstance(obj, np.dtype) or (isinstance(obj, type) and issubclass(obj, np.generic)):
        _as_dtype(obj, "a dtype in the pickle", "is")
        return None
    if isinstance(obj, _LEAF_TYPES):
        return None
    raise _Refused(f"the pickle holds a {type(obj).__name__} object ({obj!r:.80}), which a "
                   f"Trax checkpoint never contains")


def _check_loaded(root: Any) -> None:
    """Refuses cycles, deep nesting, huge shared structures and non-numeric arrays.

    Iterative, so a hostile pickle cannot exhaust the Python stack; shared
    objects are visited once but counted once per path, which bounds the
    work of any later code that walks the tree.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, int, list[Any] | None]] = [(root, 0, None)]
    while stack:
        obj, depth, kids = stack.pop()
        key = id(obj)
        if kids is not None:  # every child has been sized
            on_path.discard(key)
            size = 1 + sum(sizes[id(kid)] for kid in kids)
            if size > _MAX_NODES:
                raise _Refused(
                    f"the pickle expands to more than {_MAX_NODES} objects once its shared "
                    f"references are followed (a Trax checkpoint holds a few thousand)")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise _Refused(f"the pickle holds a {type(obj).__name__} that contains itself; "
                           f"Trax checkpoints never refer back to their own containers")
        if depth > _MAX_DEPTH:
            raise _Refused(f"the pickle nests containers more than {_MAX_DEPTH} deep (a Trax "
                           f"checkpoint nests fewer than 10)")
        children = _children(obj)
        if children is None:
            sizes[key] = 1
            continue
        on_path.add(key)
        stack.append((obj, depth, children))
        stack.extend((kid, depth + 1, None) for kid in children)


def load_trax_pickle(file: BinaryIO, *, source: str | None = None,
                     max_array_bytes: int | None = None) -> Any:
    """Loads one pickle from an (already decompressed) binary file, safely.

    Args:
      file: the decompressed pickle.
      source: the file's name, for error messages.
      max_array_bytes: what arrays made from a shape alone may take in all
        (see :class:`TraxUnpickler`).

    Raises:
      TraxPickleError: a global outside ``ALLOWED_GLOBALS``, a non-numeric
        array, a self-referencing or too deeply nested structure, an array
        over budget, or a damaged pickle.
    """
    name = f"Trax checkpoint {source}" if source else "the Trax pickle stream"
    try:
        obj = TraxUnpickler(file, max_array_bytes=max_array_bytes).load()
        _check_loaded(obj)
    except CheckpointError:  # from the stream itself (a damaged or oversized gzip)
        raise
    except _Refused as err:
        raise TraxPickleError(f"Cannot read {name}: {err}.") from None
    except RecursionError:
        raise TraxPickleError(
            f"Cannot read {name}: the pickle nests too deeply to read; it is "
            f"damaged or not a Trax checkpoint.") from None
    except MemoryError:
        raise TraxPickleError(
            f"Cannot read {name}: the pickle asks for more memory than is "
            f"available; it is damaged or not a Trax checkpoint.") from None
    except Exception as err:  # the unpickler raises many types on damaged input
        raise TraxPickleError(
            f"Cannot read {name}: the pickle is damaged or is not a Trax "
            f"checkpoint ({type(err).__name__}: {err}). Copy the file again from where it "
            f"was written.") from err
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


def _read_file(fs: Any, path: str) -> bytes:
    with _open_read(fs, path) as raw:
        return raw.read()


def _not_gzip(data: bytes, name: str, what: str) -> CheckpointError:
    start = "it is empty" if not data else f"it starts with {data[:8]!r}"
    return CheckpointError(
        f"Cannot read {what} {name}: it is not gzip data ({start}), but Trax writes its "
        f".pkl.gz and .npy.gz files gzip-compressed. Check that the path names the "
        f"checkpoint itself and that the file was copied completely.")


def _damaged_gzip(name: str, what: str, err: BaseException) -> CheckpointError:
    return CheckpointError(
        f"Cannot read {what} {name}: its gzip stream is damaged or truncated "
        f"({type(err).__name__}: {err}). Copy the file again from where it was written.")


def _bomb(name: str, what: str, compressed: int, limit: int) -> CheckpointError:
    return CheckpointError(
        f"Cannot read {what} {name}: it expands to more than {limit} bytes from {compressed} "
        f"bytes on disk, more than retrax.io.MAX_EXPANSION (now {_rio.MAX_EXPANSION}) times "
        f"its size allows, so it is refused as a likely decompression bomb. If the file is "
        f"genuine, pass max_expansion= (or set retrax.io.MAX_EXPANSION) to allow more.")


class _GzipReader:
    """A gzip file's decompressed stream that refuses to give out more than ``limit`` bytes.

    Its errors (a damaged or truncated stream, or more data than the limit)
    are CheckpointErrors naming the file. Reading to the end (``drain``) makes
    gzip check the stream's CRC and length, which a reader that stops early
    (the unpickler stops at STOP) would never see.
    """

    def __init__(self, data: bytes, limit: int, name: str, what: str):
        if data[:2] != _GZIP_MAGIC:
            raise _not_gzip(data, name, what)
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self.left, self.limit = limit, limit
        self._size, self._name, self._what = len(data), name, what

    def _guarded(self, fn: Callable[[int], bytes], n: int | None) -> bytes:
        try:
            out = fn(self.left + 1 if n is None or n < 0 else min(n, self.left + 1))
        except (OSError, EOFError, zlib.error) as err:
            raise _damaged_gzip(self._name, self._what, err) from err
        self.left -= len(out)
        if self.left < 0:
            raise _bomb(self._name, self._what, self._size, self.limit)
        return out

    def read(self, n: int | None = -1) -> bytes:
        return self._guarded(self._gz.read, n)

    def readline(self, n: int | None = -1) -> bytes:
        return self._guarded(self._gz.readline, n)

    def at_end(self) -> bool:
        try:
            return not self._gz.peek(1)
        except (OSError, EOFError, zlib.error) as err:
            raise _damaged_gzip(self._name, self._what, err) from err

    def drain(self) -> None:
        while self.read(_READ_CHUNK):
            pass

    def close(self) -> None:
        self._gz.close()


def _read_npy_record(f: _GzipReader, index: int, name: str) -> np.ndarray:
    """One ``.npy`` record, its size checked against the budget before it is allocated."""
    fmt = np.lib.format
    version = fmt.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = fmt.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = fmt.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not one Trax writes")
    problem = _dtype_problem(dtype)
    if problem:
        raise CheckpointError(f"Cannot read Trax weights file {name}: array {index} has "
                              f"{problem}.")
    n_bytes = math.prod(shape) * dtype.itemsize
    if n_bytes > f.left:
        raise CheckpointError(
            f"Cannot read Trax weights file {name}: array {index} (shape {shape}, dtype "
            f"{dtype}) asks for {n_bytes} bytes, more than the {f.left} bytes left of the "
            f"{f.limit} a file of {f._size} bytes may expand to (retrax.io.MAX_EXPANSION is "
            f"{_rio.MAX_EXPANSION}), so it is refused as a likely memory bomb. If the file is "
            f"genuine, pass max_expansion= (or set retrax.io.MAX_EXPANSION) to allow more.")
    flat = np.empty(math.prod(shape), dtype)
    view = memoryview(flat.view(np.uint8))
    done = 0
    while done < n_bytes:
        chunk = f.read(min(_READ_CHUNK, n_bytes - done))
        if not chunk:
            raise CheckpointError(
                f"Cannot read Trax weights file {name}: it ends inside array {index} (shape "
                f"{shape}, {done} of {n_bytes} bytes present), so it is truncated. Copy the "
                f"file again from where it was written.")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    if fortran:
        return flat.reshape(shape[::-1]).transpose()
    return flat.reshape(shape)


def _read_npy_stream(fs: Any, path: str, bfloat16: bool,
                     max_expansion: float | None = None) -> list[np.ndarray]:
    """Reads a gzip stream of back-to-back ``.npy`` records (Trax's ``np_from_file``).

    Records are read forwards only (``np.load`` seeks backwards, and a
    backwards seek on a gzip stream decompresses it again from the start).
    """
    what = "Trax weights file"
    data = _read_file(fs, path)
    f = _GzipReader(data, expansion_limit(len(data), max_expansion), path, what)
    arrays: list[np.ndarray] = []
    try:
        while not f.at_end():
            arr = _read_npy_record(f, len(arrays), path)
            if bfloat16 and arr.dtype == np.uint16:
                import ml_dtypes  # jax's dependency; only needed on request

                arr = arr.view(ml_dtypes.bfloat16)
            arrays.append(arr)
    except CheckpointError:
        raise
    except (ValueError, SyntaxError, TypeError, EOFError) as err:  # np.lib.format's errors
        raise CheckpointError(
            f"Cannot read {what} {path}: record {len(arrays)} is not a valid .npy array "
            f"({type(err).__name__}: {err}). The file is damaged or not a Trax weights "
            f"file; copy it again from where it was written.") from err
    finally:
        f.close()
    return arrays


def _numeric(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    problem = _dtype_problem(arr.dtype)
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
    compressed = _read_file(fs, p)
    limit = expansion_limit(len(compressed), max_expansion)
    f = _GzipReader(compressed, limit, name, what)
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
        flat_weights = _read_npy_stream(fs, companion, uint16_as_bfloat16, max_expansion)
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
            slots.append(_read_npy_stream(fs, slot_path, uint16_as_bfloat16, max_expansion))
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
        "flat_weights": weights if inline else _COMPRESSLEVEL,
        "flat_state": state,
        "flat_eval_state": eval_state,
        # Trax's History.to_dict(): per-mode defaultdict(list) of (step, value) pairs.
        "history": {"_values": {m: collections.defaultdict(list, v) for m, v in hist.items()}},
        "slots_per_task": slots_per_task if inline else _COMPRESSLEVEL,
        "input_signature": input_signature,
        "version_timestamp": _LOOP_VERSION,
    }
    buffer = io.BytesIO()
    _TraxPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(payload)
    data = buffer.getvalue()
    # Anything our own safe reader refuses (e.g. a retrax class in the
    # signature) would be unreadable by Trax too: fail before writing.
    load_trax_pickle(io.BytesIO(data))

    if inline:
        _write_gzip_atomic(base + ".pkl.gz", lambda f: f.write(data))
        _remove_side_files(base)
        return base + ".pkl.gz"
    _write_gzip_atomic(base + ".weights.npy.gz", _write_npy_stream(weights))
    for i, task_slots in enumerate(slots_per_task):
        _write_gzip_atomic(f"{base}.opt_slots{i}.npy.gz", _write_npy_stream(task_slots))
    _write_gzip_atomic(base + ".pkl.gz", lambda f: f.write(data))
    return base + ".pkl.gz"


def _remove_side_files(base: str) -> None:
    """Deletes ``<base>.weights.npy.gz`` and ``<base>.opt_slots<i>.npy.gz`` (stale after inline)."""
    fs, _ = filesystem(base)
    for path in [base + ".weights.npy.gz", *fs.glob(glob.escape(base) + ".opt_slots*.npy.gz")]:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(path)
