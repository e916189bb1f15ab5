"""The restricted unpickler that reads Trax checkpoint pickles without running their code.

Trax checkpoints are gzip'd pickles, and ``pickle.load`` runs whatever a file
says. Here they are read with an unpickler that resolves only the globals real
Trax files contain (NumPy arrays, ``ShapeDtype``, ``History``, containers).
The gzip streams around the pickles are read by :mod:`retrax.compat.npy_stream`,
and the checkpoint layouts by :mod:`retrax.compat.trax_pickle`.

Faults: errors from the pickle itself are :class:`TraxPickleError` (a
:class:`retrax.io.CheckpointError` that is also a ``pickle.UnpicklingError``)
naming the file. The pickle may only call NumPy's array rebuilders (with
numeric dtypes), ``_codecs.encode`` in the latin-1 form that protocols 0-2 use
for bytes, and the containers listed in ``ALLOWED_GLOBALS``; self-referencing
or deeply nested data, object/string/structured arrays and arrays larger than
:func:`retrax.io.expansion_limit` allows are refused before they are used (or,
for sizes, before they are allocated).
"""

from __future__ import annotations

import collections
import contextvars
import math
import operator
import pickle
from collections.abc import Callable
from typing import Any, BinaryIO

import numpy as np

import retrax.io as _rio
from retrax.io import CheckpointError
from retrax.shapes import ShapeDtype

__all__ = [
    "ALLOWED_GLOBALS",
    "TraxHistory",
    "TraxPickleError",
    "TraxUnpickler",
    "dtype_problem",
    "load_trax_pickle",
    "rebuild_jax_array",
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
# Nesting depth and number of nodes (counting every path to a shared object)
# that a loaded pickle may have. Real Trax pickles nest about 6 deep and hold a
# few thousand nodes; the limits stop self-referencing and exponentially
# shared ("billion laughs") structures before code that walks them recurses
# or loops for ever.
_MAX_DEPTH = 100
_MAX_NODES = 10_000_000
# The dtype kinds an array in a checkpoint may have: bool, int, uint, float, complex.
_NUMERIC_KINDS = "biufc"


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


def dtype_problem(dtype: np.dtype) -> str | None:
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
    problem = dtype_problem(dtype)
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


def rebuild_jax_array(fun: Any, args: tuple, arr_state: Any, aval_state: Any) -> Any:
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
        rebuild_jax_array, "jax array rebuild")
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
        problem = dtype_problem(obj.dtype)
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
