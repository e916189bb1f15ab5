"""The layer contract: Trax's data-stack layers on pure JAX functions.

A layer takes ``n_in`` inputs from the top of a stack and pushes ``n_out``
outputs. One input is passed as a bare array, several as a tuple; the same for
outputs. The pure core is::

    weights, state = layer.init(input_signature, rng=None)
    outputs, new_state = layer.pure_fn(x, weights, state, rng)

``pure_fn`` can be wrapped in ``jax.jit``, ``jax.grad``, ``jax.vmap`` and
``lax.scan``. ``layer(x)`` is a convenience that keeps weights on the layer.

Subclasses write Trax-style code: ``forward(self, inputs)`` reads
``self.weights``, ``self.state`` and ``self.rng`` (installed only for the
duration of the call) and may assign ``self.state``;
``init_weights_and_state(self, input_signature)`` assigns ``self.weights``
and/or ``self.state``.

>>> import numpy as np
>>> from retrax import layers as tl
>>> layer = tl.Fn('Twice', lambda x: 2 * x)
>>> layer(np.array([1.0, 2.0])).tolist()
[2.0, 4.0]
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax import shapes
from retrax.fastmath import random as _random

__all__ = [
    "Layer",
    "PureLayer",
    "Fn",
    "LayerError",
    "EMPTY_WEIGHTS",
    "EMPTY_STATE",
    "GET_WEIGHTS_FROM_CACHE",
    "GET_STATE_FROM_CACHE",
    "flatten_weights_and_state",
    "unflatten_weights_and_state",
    "to_list",
]

EMPTY_WEIGHTS: tuple = ()
EMPTY_STATE: tuple = ()
# Placed in a combinator's weight/state tuple where a shared layer occurs again:
# its weights are stored once, at the first occurrence.
GET_WEIGHTS_FROM_CACHE = {"__marker_for_cached_weights_": ()}
GET_STATE_FROM_CACHE = {"__marker_for_cached_state_": ()}

_DEFAULT_SEED = 0
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _is_weights_marker(x: Any) -> bool:
    return isinstance(x, dict) and x == GET_WEIGHTS_FROM_CACHE


def _is_state_marker(x: Any) -> bool:
    return isinstance(x, dict) and x == GET_STATE_FROM_CACHE


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class _Field:
    """A ``LayerError`` attribute stored in the instance dict under a private key.

    It is a data descriptor on ``LayerError`` itself, so in the subclass made
    for a cause's type it wins over any same-named attribute of that type
    (``ImportError.path``, a user exception's read-only ``cause`` property):
    recording where an error happened can never fail or clobber the cause.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self._key = f"_layer_error_{name}"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self._key]
        except KeyError:
            raise AttributeError(
                f"This LayerError has no {self._name!r} attribute: it was not made by "
                f"LayerError(layer, function_name, input_signature, cause)."
            ) from None

    def __set__(self, obj: Any, value: Any) -> None:
        obj.__dict__[self._key] = value


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set for classes made by `class` or type().


class LayerError(Exception):
    """An exception raised inside a layer, with where it happened.

    The message names, in this order: the failing layer's path inside the
    model, the file and line where the failing layer was created, the shapes
    it received, and the original error (type and message).

    Path convention: outermost layer first, joined by ``' > '``. Each enclosing
    combinator is shown by its printed name (with ``_in``/``_out`` suffixes, as
    ``print(model)`` shows it) followed by the index, in brackets, of its child
    that the error came from, counted in the order ``print`` lists the
    children. The last element is the failing layer's printed name. For
    example ``Serial[2] > Branch_out2[1] > Dense_4`` is ``Dense_4``, the second
    branch of the ``Branch`` that is the third sublayer of the outer
    ``Serial``. (A ``Branch`` is a ``Serial(Select, Parallel)`` inside; the
    ``Parallel`` is hidden from the path so the index is the branch's.)

    Attributes: ``layer_name``, ``function_name`` (``init``, ``pure_fn`` or
    ``__call__``), ``caller`` (``(filename, lineno)``), ``input_signature``,
    ``cause`` (the original exception or a message) and ``path`` (the
    ``Name[index]`` entries of the enclosing combinators).

    What reaches the caller when a layer raises ``err``:

    * ``err`` is an ``Exception``: a ``LayerError`` that is also an instance of
      ``type(err)`` (a subclass of both is made once per type), so
      ``except FileNotFoundError`` or ``except jax.errors.TracerBoolConversionError``
      still catches it. Its ``args`` and the attributes of ``err`` (``errno``,
      ``filename``, ``encoding``/``start``/``end``, ``exceptions``, the
      instance dict, ...) are copied; ``cause`` and ``__cause__`` are ``err``
      itself. The constructors of ``type(err)`` are not called again, so
      exceptions whose ``__init__`` needs arguments or whose ``__new__`` is
      custom are kept whole. Where ``LayerError``'s own attributes share a
      name with one of ``err``'s (``ImportError.path``,
      ``ExceptionGroup.message``), ``LayerError``'s wins; ``err``'s is on
      ``cause``.
    * ``err``'s type cannot be subclassed (its ``__init_subclass__`` refuses,
      a metaclass conflict, ...): ``err`` itself is re-raised at the outermost
      layer, with this message (path included) added as a note
      (``err.__notes__``).
    * ``err`` is a ``BaseException`` but not an ``Exception``
      (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``, a
      ``BaseExceptionGroup``): it passes through untouched, no note added.
    """

    _subclasses: dict[type, type | None] = {}

    layer_name = _Field()
    function_name = _Field()
    caller = _Field()
    input_signature = _Field()
    cause = _Field()
    path = _Field()
    _hidden_index = _Field()

    def __new__(cls, layer: Any = None, function_name: Any = None, input_signature: Any = None,
                cause: Any = None, *args: Any, **kwargs: Any):
        # A LayerError is also an instance of its cause's type, so code that
        # catches ValueError / FileNotFoundError keeps working through layers.
        if cls is LayerError and isinstance(cause, Exception) and not isinstance(cause, LayerError):
            sub = _layer_error_subclass(type(cause))
            if sub is not None:
                try:
                    return _instance_like(sub, cause)
                except Exception:  # the cause's type refuses: plain LayerError, surfaced later
                    pass
        return Exception.__new__(cls)

    def __reduce__(self):
        return (_plain_layer_error, (self.message,))

    def __init__(
        self,
        layer: Layer,
        function_name: str,
        input_signature: Any,
        cause: BaseException | str,
    ):
        # BaseException's own __init__, never the cause type's (which may need
        # arguments we do not have, e.g. TracerBoolConversionError(tracer)).
        args = BaseException.args.__get__(cause) if isinstance(cause, BaseException) else ()
        BaseException.__init__(self, *args)
        self.layer_name = layer.name_with_arity or type(layer).__name__
        self.function_name = function_name
        self.caller = layer._caller
        self.input_signature = input_signature
        self.cause = cause
        self.path = []
        self._hidden_index = None

    def push_parent(self, parent: Layer, index: int) -> None:
        """Records that the failing layer sits at ``index`` inside ``parent``."""
        if parent._hidden_in_path:
            # Keep the index for the next (visible) parent, e.g. Branch.
            if self._hidden_index is None:
                self._hidden_index = index
            return
        if self._hidden_index is not None:
            index, self._hidden_index = self._hidden_index, None
        self.path.insert(0, f"{parent.name_with_arity or type(parent).__name__}[{index}]")

    @property
    def layer_path(self) -> str:
        return " > ".join(self.path + [self.layer_name])

    @property
    def message(self) -> str:
        if isinstance(self.cause, BaseException):
            try:
                text = str(self.cause)
            except Exception:  # a cause whose __str__ fails still gets reported
                text = repr(self.cause)
            cause = f"{type(self.cause).__name__}: {text}"
        else:
            cause = str(self.cause)
        # JAX appends a note about its traceback filtering; it is noise here.
        cause = cause.split("\n--------------------\nFor simplicity, JAX has removed")[0]
        filename, lineno = self.caller
        return (
            f"Exception passing through layer {self.layer_path} (in {self.function_name}):\n"
            f"  layer created in file {_short_path(filename)}, line {lineno}\n"
            f"  layer input shapes: {_sig_str(self.input_signature)}\n\n"
            f"  {cause}"
        )

    def __str__(self) -> str:
        return self.message

    def _to_raise(self) -> BaseException:
        """What the outermost layer raises: ``self``, or the cause if ``self`` is not one."""
        cause = self.cause
        if isinstance(cause, BaseException) and not isinstance(self, type(cause)):
            note = self.message
            notes = getattr(cause, "__notes__", None)
            if not isinstance(notes, list):
                notes = []
            if note not in notes:
                # What add_note does (Python 3.11+); on 3.10 the list is kept
                # too, readable from the exception though not printed.
                try:
                    cause.__notes__ = [*notes, note]
                except Exception:  # a cause that refuses attributes: unchanged
                    pass
            return cause
        return self


def _layer_error_subclass(base_type: type) -> type | None:
    """``LayerError`` subclass that is also a ``base_type``; None if Python refuses one."""
    try:
        return LayerError._subclasses[base_type]
    except KeyError:
        pass
    try:
        sub: type | None = type("LayerError", (LayerError, base_type),
                                {"__module__": __name__, "__qualname__": "LayerError"})
    except Exception:  # final classes, metaclass or layout conflicts
        sub = None
    LayerError._subclasses[base_type] = sub
    return sub


def _instance_like(sub: type, cause: BaseException) -> BaseException:
    """A ``sub`` instance carrying ``cause``'s args and attributes; no constructor of
    ``type(cause)`` written in Python runs.

    The object is made by a built-in ``__new__`` that CPython accepts for
    ``sub`` (``OSError.__new__`` for ``FileNotFoundError``, ``Exception.__new__``
    for most; see ``_static_news``); then the C-level fields (``errno``,
    ``encoding``, ...) and the instance dict (notes aside) are copied from
    ``cause``. Raises if no built-in ``__new__`` accepts ``sub``.
    """
    args = BaseException.args.__get__(cause)
    obj = None
    for maker in _static_news(type(cause), sub):
        for maker_args in (args, ()):
            try:
                made = maker.__new__(sub, *maker_args)
            except Exception:  # "X.__new__(LayerError) is not safe", wrong arguments
                continue
            if type(made) is sub:
                obj = made
                break
        if obj is not None:
            break
    if obj is None:
        raise TypeError(f"no built-in __new__ makes a {type(cause).__name__} LayerError")
    own = vars(LayerError)
    for klass in type(cause).__mro__:
        if klass in (BaseException, object):
            continue
        for name, desc in vars(klass).items():
            if name.startswith("__") or name in own:
                continue
            if isinstance(desc, (types.MemberDescriptorType, types.GetSetDescriptorType)):
                try:
                    desc.__set__(obj, desc.__get__(cause))
                except Exception:  # read-only (set by __new__ already) or unset
                    pass
    try:
        attrs = dict(object.__getattribute__(cause, "__dict__"))
    except Exception:
        attrs = {}
    # The cause's notes stay on the cause (printed with it in the chain).
    obj.__dict__.update({k: v for k, v in attrs.items()
                         if k != "__notes__" and not k.startswith("_layer_error_")})
    return obj


def _static_news(cause_type: type, sub: type) -> list[type]:
    """Built-in types whose ``__new__`` may make a ``sub``, most specific first.

    CPython accepts ``T.__new__(sub)`` only for the ``T`` whose C constructor
    ``sub`` inherits: ``OSError`` for an OSError subclass, ``Exception`` when
    the cause's own constructor is written in Python or adds no C fields
    (``MemoryError``). Both chains are tried, as is the cause's first built-in.
    """
    out: list[type] = []
    chains = ([t for t in cause_type.__mro__ if not t.__flags__ & _HEAPTYPE][:1],
              _base_chain(sub), sub.__mro__)
    for chain in chains:
        for t in chain:
            if not t.__flags__ & _HEAPTYPE and issubclass(t, BaseException) and t not in out:
                out.append(t)
    return out


def _base_chain(t: type | None) -> list[type]:
    chain = []
    while t is not None:
        chain.append(t)
        t = t.__base__
    return chain


def _surface_causes(method: Callable) -> Callable:
    """Wraps a public entry point (``init``, ``pure_fn``, ...) of a layer.

    At the outermost call (no pass running), a ``LayerError`` that could not be
    made an instance of its cause's type is replaced by the cause itself, with
    the layer path added as a note; anything else propagates unchanged.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _stack():
            return method(*args, **kwargs)
        return _outermost(method, *args, **kwargs)

    return wrapper


def _outermost(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Runs ``fn``; a ``LayerError`` that is not an instance of its cause's type
    becomes the cause re-raised with the layer path as a note."""
    try:
        return fn(*args, **kwargs)
    except LayerError as e:
        error = e._to_raise()
        if error is e:
            raise
    # Raised outside the handler so the cause's __context__ stays its own.
    raise error


def _plain_layer_error(message: str) -> Exception:
    return Exception(message)


def _short_path(filename: str) -> str:
    parts = filename.replace("\\", "/").split("/")
    return filename if len(parts) <= 3 else "[...]/" + "/".join(parts[-3:])


def _sig_str(sig: Any) -> str:
    try:
        return str(_signature_or_none(sig))
    except Exception:
        return repr(sig)


def _signature_or_none(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, (tuple, list)):
        return type(x)(_signature_or_none(v) for v in x)
    if isinstance(x, shapes.ShapeDtype):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return shapes.ShapeDtype(tuple(x.shape), np.dtype(x.dtype))
    return type(x).__name__


def _find_caller() -> tuple[str, int]:
    """File and line of the first frame outside the retrax package."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            return filename, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", 0


# --------------------------------------------------------------------------
# Per-pass context: resolves shared layers (the same instance used twice).
# --------------------------------------------------------------------------


class _Pass:
    def __init__(self, weights: dict[int, Any] | None = None):
        self.weights: dict[int, Any] = dict(weights or {})
        self.state: dict[int, Any] = {}
        self.initialized: set[int] = set()
        self.key_index = 0
        # Output signatures found while initializing combinators, so a parent
        # need not trace a whole subtree again to learn its output shapes.
        self.outputs: dict[tuple, list[Any]] = {}


    def next_key_index(self) -> int:
        self.key_index += 1
        return self.key_index


class _DerivedKey:
    """The key of one leaf layer in a pass: ``hash_fold_in(rng, index)``, made lazily.

    Combinators hand the same key to all their sublayers; every leaf applied in
    a pass has its own index, so leaves still get distinct keys, and only the
    few that read ``self.rng`` (dropout) pay for deriving one. (Splitting at
    every combinator, as Trax does, put dozens of key derivations into every
    compiled step.)
    """

    __slots__ = ("base", "index", "key")

    def __init__(self, base: Any, index: int):
        self.base, self.index, self.key = base, index, None

    def get(self) -> Any:
        if self.key is None:
            self.key = _random.hash_fold_in(self.base, self.index)
        return self.key


def _to_device(tree: Any) -> Any:
    """NumPy leaves to JAX arrays, keeping the tree (and cache markers) as it is."""
    if _is_weights_marker(tree) or _is_state_marker(tree):
        return tree
    if isinstance(tree, tuple):
        return tuple(_to_device(t) for t in tree)
    if isinstance(tree, list):
        return [_to_device(t) for t in tree]
    if isinstance(tree, dict):
        return {k: _to_device(v) for k, v in tree.items()}
    if isinstance(tree, np.ndarray):
        return jnp.asarray(tree)
    return tree


def signature_key(sig: Any) -> Any:
    """A hashable key for a (tree of) signature(s)."""
    if isinstance(sig, (tuple, list)):
        return tuple(signature_key(s) for s in sig)
    if hasattr(sig, "shape") and hasattr(sig, "dtype"):
        return (tuple(sig.shape), np.dtype(sig.dtype).name)
    return repr(sig)


_local = threading.local()


def _stack() -> list[_Pass]:
    if not hasattr(_local, "passes"):
        _local.passes = []
    return _local.passes


@contextlib.contextmanager
def _new_pass(seed_weights: dict[int, Any] | None = None) -> Iterator[_Pass]:
    ctx = _Pass(seed_weights)
    _stack().append(ctx)
    try:
        yield ctx
    finally:
        _stack().pop()


@contextlib.contextmanager
def _current_or_new_pass() -> Iterator[_Pass]:
    stack = _stack()
    if stack:
        yield stack[-1]
    else:
        with _new_pass() as ctx:
            yield ctx


# --------------------------------------------------------------------------
# Stack helpers
# --------------------------------------------------------------------------


def inputs_from_stack(stack: Any, n: int) -> Any:
    """The top ``n`` items of ``stack``: ``()``, a bare item, or a tuple."""
    stack = _as_stack(stack)
    return _pack(stack[:n])


def outputs_onto_stack(outputs: Any, stack: Any, n: int) -> Any:
    """Replaces the top ``n`` items of ``stack`` with ``outputs``."""
    stack = _as_stack(stack)
    return _pack(_as_stack(outputs) + stack[n:])


def _as_stack(x: Any) -> list[Any]:
    return list(x) if isinstance(x, (tuple, list)) else [x]


def _pack(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else tuple(items)


def _outputs_as_list(layer: Layer, outputs: Any) -> list[Any]:
    """Checks that ``layer`` returned ``n_out`` items; returns them as a list."""
    n_out = layer.n_out
    if n_out == 1:
        return [outputs]
    if not isinstance(outputs, (tuple, list)) or len(outputs) != n_out:
        got = f"{len(outputs)} items" if isinstance(outputs, (tuple, list)) else "one array"
        raise ValueError(
            f"{layer.name_with_arity} declares n_out={n_out} but its forward returned {got}. "
            f"Return a tuple of {n_out} arrays or change n_out."
        )
    return list(outputs)


# --------------------------------------------------------------------------
# Layer
# --------------------------------------------------------------------------


class Layer:
    """Base class for layers: ``n_in`` inputs from the stack, ``n_out`` outputs.

    Args:
      n_in: number of inputs taken from the top of the stack (default 1).
      n_out: number of outputs pushed onto the stack (default 1).
      name: the name shown when printing; defaults to the class name.
      sublayers_to_print: children to show when printing, if not ``sublayers``.

    Subclass it Trax's way: override ``forward(self, x)`` (reading
    ``self.weights``, ``self.state``, ``self.rng``) and, for layers with
    weights, ``init_weights_and_state(self, input_signature)``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> class Scale(tl.Layer):
    ...     def init_weights_and_state(self, input_signature):
    ...         self.weights = np.full(input_signature.shape[-1:], 2.0, np.float32)
    ...     def forward(self, x):
    ...         return x * self.weights
    >>> layer = Scale()
    >>> weights, state = layer.init(shapes.ShapeDtype((1, 3)))
    >>> layer(np.ones((1, 3))).tolist()
    [[2.0, 2.0, 2.0]]
    >>> y, state = layer.pure_fn(np.ones((1, 3)), np.zeros(3), state, None)
    >>> y.tolist()
    [[0.0, 0.0, 0.0]]
    """

    _SETTABLE = ("weights", "state", "rng")

    def __init__(
        self,
        n_in: int = 1,
        n_out: int = 1,
        name: str | None = None,
        sublayers_to_print: Any = None,
    ):
        for arg, value in (("n_in", n_in), ("n_out", n_out)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"{name or type(self).__name__}: {arg} must be a non-negative int; "
                    f"got {value!r}."
                )
        self._n_in = int(n_in)
        self._n_out = int(n_out)
        self._name = type(self).__name__ if name is None else name
        self._sublayers_to_print = sublayers_to_print
        self._sublayers: tuple[Layer, ...] = ()
        self._weights: Any = EMPTY_WEIGHTS
        self._state: Any = EMPTY_STATE
        self._rng: Any = None
        self._initialized = False
        # True for a combinator built inside another one and not shown by
        # print (Branch's Parallel); error paths then skip it.
        self._hidden_in_path = False
        # True while this layer's own init_weights_and_state/forward runs: then
        # self.weights/self.state read and write the installed values only
        # (also for a Trax-style layer that has sublayers), never the sublayers.
        self._in_hook = False
        self._caller = _find_caller()

    # -- attributes ---------------------------------------------------------

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr.startswith("_") or attr in self._SETTABLE:
            object.__setattr__(self, attr, value)
        else:
            raise ValueError(
                f"Layer {getattr(self, '_name', type(self).__name__)} allows setting only "
                f"{self._SETTABLE} as public attributes, not {attr!r}. Store other values "
                f"under a name starting with '_'."
            )

    @property
    def name(self) -> str:
        return self._name

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def sublayers(self) -> tuple[Layer, ...]:
        return self._sublayers

    @property
    def name_with_arity(self) -> str:
        """The printed name: ``name`` plus ``_in{n}``/``_out{n}`` where not 1."""
        s = self._name
        if self._n_in != 1:
            s += f"_in{self._n_in}"
        if self._n_out != 1:
            s += f"_out{self._n_out}"
        return s

    @property
    def has_backward(self) -> bool:
        return False

    # -- printing -----------------------------------------------------------

    def __repr__(self) -> str:
        children = self._sublayers if self._sublayers_to_print is None else self._sublayers_to_print
        parts = [s for s in (str(c) for c in children) if s]
        if not parts:
            return self.name_with_arity
        body = "\n".join(parts).replace("\n", "\n  ")
        return f"{self.name_with_arity}[\n  {body}\n]"

    # -- weights, state, rng --------------------------------------------------

    @property
    def weights(self) -> Any:
        if self._in_hook:
            return self._weights
        return self._weights_tree(set())

    @weights.setter
    def weights(self, weights: Any) -> None:
        if self._in_hook:
            self._weights = weights
            return
        if _is_weights_marker(weights):
            return
        self._check_weights_structure(weights, "weights")
        self._assign_weights(weights, set())

    @property
    def state(self) -> Any:
        if self._in_hook:
            return self._state
        return self._state_tree(set())

    @state.setter
    def state(self, state: Any) -> None:
        if self._in_hook:
            self._state = state
            return
        if _is_state_marker(state):
            return
        self._assign_state(state, set())

    @property
    def rng(self) -> Any:
        rng = self._rng
        if rng is None:
            return _random.get_prng(_DEFAULT_SEED)
        if isinstance(rng, _DerivedKey):
            return rng.get()
        return rng

    @rng.setter
    def rng(self, rng: Any) -> None:
        self._rng = rng

    def _weights_tree(self, seen: set[int]) -> Any:
        if not self._sublayers:
            return self._weights
        out = []
        for layer in self._sublayers:
            if id(layer) in seen:
                out.append(GET_WEIGHTS_FROM_CACHE)
            else:
                seen.add(id(layer))
                out.append(layer._weights_tree(seen))
        return tuple(out)

    def _state_tree(self, seen: set[int]) -> Any:
        """The state tree; combinators with their own layout override this."""
        if not self._sublayers:
            return self._state
        return tuple(_child_state(layer, seen) for layer in self._sublayers)

    def _assign_weights(self, weights: Any, seen: set[int]) -> None:
        self._initialized = True
        if not self._sublayers:
            self._weights = weights
            return
        if not isinstance(weights, (tuple, list)) or len(weights) != len(self._sublayers):
            got = len(weights) if isinstance(weights, (tuple, list)) else type(weights).__name__
            raise ValueError(
                f"Number of weight elements ({got}) does not equal the number of sublayers "
                f"({len(self._sublayers)}) in {self.name_with_arity}. Pass a tuple with one "
                f"entry per sublayer, e.g. the weights returned by init()."
            )
        for layer, w in zip(self._sublayers, weights):
            if _is_weights_marker(w) or id(layer) in seen:
                continue
            seen.add(id(layer))
            layer._assign_weights(w, seen)

    def _assign_state(self, state: Any, seen: set[int]) -> None:
        """Stores ``state`` on this layer and its sublayers (inverse of ``_state_tree``)."""
        if not self._sublayers:
            self._state = state
            return
        if not isinstance(state, (tuple, list)) or len(state) != len(self._sublayers):
            got = len(state) if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(
                f"Number of state elements ({got}) does not equal the number of sublayers "
                f"({len(self._sublayers)}) in {self.name_with_arity}. Pass a tuple with one "
                f"entry per sublayer, e.g. the state returned by init()."
            )
        for layer, s in zip(self._sublayers, state):
            _assign_child_state(layer, s, seen)

    def _check_weights_structure(self, weights: Any, what: str) -> None:
        """Raises if ``weights`` differs in structure or shapes from the current ones."""
        if self._sublayers and (not isinstance(weights, (tuple, list))
                                or len(weights) != len(self._sublayers)):
            got = len(weights) if isinstance(weights, (tuple, list)) else type(weights).__name__
            raise ValueError(
                f"Number of weight elements ({got}) does not equal the number of sublayers "
                f"({len(self._sublayers)}) in {self.name_with_arity}. Pass a tuple with one "
                f"entry per sublayer, e.g. the weights returned by init()."
            )
        if not self._initialized:
            return
        expected = self.weights
        problem = _tree_mismatch(expected, weights)
        if problem:
            raise ValueError(
                f"{self.name_with_arity}: the {what} given do not match the layer's "
                f"weights: {problem}. Use weights from init() or from a checkpoint of the "
                f"same model configuration."
            )

    # -- init ---------------------------------------------------------------

    def init_weights_and_state(self, input_signature: Any) -> None:
        """Override to assign ``self.weights`` / ``self.state`` (use ``self.rng``)."""

    @_surface_causes
    def init(self, input_signature: Any, rng: Any = None, use_cache: bool = False):
        """Initializes weights and state for inputs of ``input_signature``.

        Args:
          input_signature: a ``ShapeDtype`` (or tuple of them, one per input).
          rng: a PRNG key; defaults to the layer's key (seed 0), so calling
            ``init`` twice gives the same weights.
          use_cache: inside a combinator's init pass, return cache markers for a
            layer already initialized in this pass (weight sharing).

        Returns:
          ``(weights, state)``; they are also stored on the layer.
        """
        if rng is None:
            rng = self.rng
        else:
            self._rng = rng
        stack = _stack()
        if stack:  # Inside another layer's init: part of that pass.
            ctx = stack[-1]
            if use_cache and id(self) in ctx.initialized:
                return GET_WEIGHTS_FROM_CACHE, GET_STATE_FROM_CACHE
            weights, state = self._init_in_pass(input_signature, rng, ctx)
        else:
            with _new_pass() as ctx:
                weights, state = self._init_in_pass(input_signature, rng, ctx)
            # Initializers may return NumPy arrays; hand out device arrays.
            weights, state = _to_device(weights), _to_device(state)
        self._assign_weights(weights, set())
        self._assign_state(state, set())
        return weights, state

    def _init_in_pass(self, input_signature: Any, rng: Any, ctx: _Pass) -> tuple[Any, Any]:
        """Pure: computes ``(weights, state)`` without storing them on the layer."""
        if id(self) in ctx.initialized:
            return GET_WEIGHTS_FROM_CACHE, GET_STATE_FROM_CACHE
        ctx.initialized.add(id(self))
        try:
            self._check_n_inputs(input_signature)
            weights, state = self._init_tree(input_signature, rng, ctx)
        except LayerError:
            raise
        except Exception as e:
            raise LayerError(self, "init", input_signature, e) from e
        ctx.weights[id(self)] = weights
        ctx.state[id(self)] = state
        return weights, state

    def _init_tree(self, input_signature: Any, rng: Any, ctx: _Pass) -> tuple[Any, Any]:
        # Run the Trax-style init_weights_and_state with fields installed, then
        # put the layer back the way it was: the result is returned, not kept.
        saved = (self._weights, self._state, self._rng, self._in_hook)
        self._weights, self._state, self._rng = EMPTY_WEIGHTS, EMPTY_STATE, rng
        self._in_hook = True
        try:
            self.init_weights_and_state(input_signature)
            return self._weights, self._state
        finally:
            self._weights, self._state, self._rng, self._in_hook = saved

    @_surface_causes
    def weights_and_state_signature(self, input_signature: Any,
                                    unsafe: bool = False) -> tuple[Any, Any]:
        """Shapes of ``init``'s result, computed abstractly (no arrays made).

        The layer is never modified (``unsafe`` is accepted for Trax
        compatibility and ignored).
        """
        del unsafe
        rng = self.rng

        def f():
            with _new_pass() as ctx:
                return self._init_in_pass(input_signature, rng, ctx)

        return _to_shape_dtype(jax.eval_shape(f))

    @_surface_causes
    def output_signature(self, input_signature: Any) -> Any:
        """Shapes of the outputs for inputs of ``input_signature``."""
        rng = self.rng
        use_stored = self._initialized

        def f(x):
            with _new_pass() as ctx:
                if use_stored:
                    w, s = self.weights, self.state
                else:
                    w, s = self._init_in_pass(input_signature, rng, ctx)
                return self._apply(x, w, s, rng, ctx)[0]

        return _to_shape_dtype(jax.eval_shape(f, _abstract(input_signature)))

    # -- apply ----------------------------------------------------------------

    def forward(self, inputs: Any) -> Any:
        """Override: computes outputs from ``inputs`` using ``self.weights``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement forward(self, inputs)."
        )

    @_surface_causes
    def pure_fn(self, x: Any, weights: Any, state: Any, rng: Any, use_cache: bool = False):
        """Pure apply: returns ``(outputs, new_state)``; nothing on the layer changes."""
        del use_cache  # Shared weights are resolved through the pass context.
        with _current_or_new_pass() as ctx:
            return self._apply(x, weights, state, rng, ctx)

    def _apply(self, x: Any, weights: Any, state: Any, rng: Any, ctx: _Pass) -> tuple[Any, Any]:
        key = id(self)
        if _is_weights_marker(weights):
            if key not in ctx.weights:
                raise LayerError(
                    self, "pure_fn", x,
                    "got the shared-weights marker but this layer's weights were not passed "
                    "earlier in the same call; pass the weight tree returned by init().",
                )
            weights = ctx.weights[key]
        else:
            ctx.weights[key] = weights
        if _is_state_marker(state):
            state = ctx.state.get(key, EMPTY_STATE)
        try:
            self._check_n_inputs(x)
            if not self._sublayers and self._initialized and weights is not self._weights:
                problem = _tree_mismatch(self._weights, weights)
                if problem:
                    raise ValueError(
                        f"the weights passed do not match the layer's weights: {problem}. "
                        f"Pass the weights returned by init() for this layer."
                    )
            outputs, new_state = self._forward_pure(x, weights, state, rng, ctx)
        except LayerError:
            raise
        except Exception as e:
            raise LayerError(self, "pure_fn", x, e) from e
        ctx.state[key] = new_state
        return outputs, new_state

    def _forward_pure(self, x: Any, weights: Any, state: Any, rng: Any, ctx: _Pass):
        # Trax-style forward reads its weights from the layer; install them for
        # the duration of the call only.
        saved = (self._weights, self._state, self._rng, self._in_hook)
        self._weights, self._state = weights, state
        # Each leaf of a pass gets its own key, derived only if it reads it.
        self._rng = None if rng is None else _DerivedKey(rng, ctx.next_key_index())
        self._in_hook = True
        try:
            outputs = self.forward(x)
            new_state = self._state
        finally:
            self._weights, self._state, self._rng, self._in_hook = saved
        _outputs_as_list(self, outputs)
        return outputs, new_state

    def _check_n_inputs(self, x: Any) -> None:
        if self._n_in <= 1:
            return
        if not isinstance(x, (tuple, list)) or len(x) < self._n_in:
            got = f"{len(x)} items" if isinstance(x, (tuple, list)) else "a single array"
            raise ValueError(
                f"{self.name_with_arity} takes {self._n_in} inputs from the stack but got "
                f"{got}. Pass a tuple of {self._n_in} arrays (or put enough layers before "
                f"it to produce them)."
            )

    def __call__(self, x: Any, weights: Any = None, state: Any = None, rng: Any = None) -> Any:
        """Runs the layer on ``x`` with its stored weights (for tests and notebooks)."""
        if weights is None:
            if not self._initialized:
                self._init_if_weightless(x)
            weights = self.weights
        if state is not None:
            self.state = state
        state = self.state
        if rng is None:
            rng = self.rng
        outputs, new_state = self.pure_fn(x, weights, state, rng)
        self._assign_state(new_state, set())
        return outputs

    def _init_if_weightless(self, x: Any) -> None:
        sig = _signature_or_none(x)
        w_sig, _ = self.weights_and_state_signature(sig)
        if any(True for _ in _leaves(w_sig)):
            raise LayerError(
                self, "__call__", x,
                f"{self.name_with_arity} has weights that are not initialized yet. "
                f"Call layer.init(trax.shapes.signature(x)) (or init_from_file) first, "
                f"or pass weights=... explicitly.",
            )
        self.init(sig)

    # -- checkpoints (implemented in retrax.checkpoints) ------------------------

    def save_to_file(self, file_name: str, weights_only: bool = False, input_signature: Any = None):
        """Saves weights (and state unless ``weights_only``) to ``file_name``."""
        from retrax import checkpoints

        return checkpoints.save_layer(self, file_name, weights_only, input_signature)

    def init_from_file(self, file_name: str, weights_only: bool = False, input_signature: Any = None):
        """Loads weights (and state unless ``weights_only``) from a checkpoint file.

        Reads retrax's own format and Trax's ``.pkl.gz`` layouts.
        """
        from retrax import checkpoints

        return checkpoints.load_layer(self, file_name, weights_only, input_signature)


def _child_state(layer: Layer, seen: set[int]) -> Any:
    """``layer``'s state tree, or the cache marker if it was already visited."""
    if id(layer) in seen:
        return GET_STATE_FROM_CACHE
    seen.add(id(layer))
    return layer._state_tree(seen)


def _assign_child_state(layer: Layer, state: Any, seen: set[int]) -> None:
    if _is_state_marker(state) or id(layer) in seen:
        return
    seen.add(id(layer))
    layer._assign_state(state, seen)


def _apply_child(parent: Layer, index: int, layer: Layer, x: Any, weights: Any, state: Any,
                 rng: Any, ctx: _Pass) -> tuple[Any, Any]:
    """``layer._apply`` that adds ``parent[index]`` to the path of a LayerError."""
    try:
        return layer._apply(x, weights, state, rng, ctx)
    except LayerError as e:
        e.push_parent(parent, index)
        raise


def _init_child(parent: Layer, index: int, layer: Layer, input_signature: Any, rng: Any,
                ctx: _Pass) -> tuple[Any, Any]:
    """``layer._init_in_pass`` that adds ``parent[index]`` to the path of a LayerError."""
    try:
        return layer._init_in_pass(input_signature, rng, ctx)
    except LayerError as e:
        e.push_parent(parent, index)
        raise


# --------------------------------------------------------------------------
# Function layers
# --------------------------------------------------------------------------


class PureLayer(Layer):
    """A weightless layer from a function of its inputs.

    ``forward_fn`` receives a bare array for ``n_in == 1``, otherwise a tuple.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> diff = tl.PureLayer(lambda xs: xs[0] - xs[1], n_in=2, name='Diff')
    >>> diff
    Diff_in2
    >>> diff((np.array(5.0), np.array(3.0))).item()
    2.0
    """

    def __init__(self, forward_fn: Callable[[Any], Any], n_in: int = 1, n_out: int = 1,
                 name: str = "PureLayer"):
        super().__init__(n_in=n_in, n_out=n_out, name=name)
        self._forward_fn = forward_fn

    def forward(self, inputs: Any) -> Any:
        if self._n_in != 1:
            if not isinstance(inputs, (tuple, list)):
                raise TypeError(f"{self.name_with_arity} expects a tuple of {self._n_in} inputs.")
            if len(inputs) != self._n_in:
                raise ValueError(
                    f"{self.name_with_arity} expects {self._n_in} inputs; got {len(inputs)}."
                )
        result = self._forward_fn(inputs)
        if isinstance(result, (tuple, list)) and len(result) == 0:
            return ()
        return result


def Fn(name: str, f: Callable[..., Any], n_out: int = 1) -> Layer:  # noqa: N802
    """A weightless layer computing ``f(*inputs)``; ``n_in`` is ``f``'s arity.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> diff = tl.Fn('Diff', lambda a, b: a - b)
    >>> diff.n_in, diff.n_out
    (2, 1)
    >>> diff((np.array(5.0), np.array(3.0))).item()
    2.0
    """
    spec = inspect.getfullargspec(f)
    if spec.defaults:
        raise ValueError(f"Fn {name!r}: function has default arguments (not allowed).")
    if spec.varkw:
        raise ValueError(f"Fn {name!r}: function has keyword arguments (not allowed).")
    if spec.varargs:
        raise ValueError(f"Fn {name!r}: function has variable args (not allowed).")
    n_in = len(spec.args)
    if inspect.ismethod(f):
        n_in -= 1

    def forward(xs: Any) -> Any:
        if n_in == 1:
            return f(xs)
        return f(*xs)

    return PureLayer(forward, n_in=n_in, n_out=n_out, name=name or "Fn")


# --------------------------------------------------------------------------
# Weight trees
# --------------------------------------------------------------------------


def _is_empty_or_marker(x: Any) -> bool:
    return (isinstance(x, tuple) and len(x) == 0) or _is_weights_marker(x) or _is_state_marker(x)


def _leaves(tree: Any) -> Iterator[Any]:
    if _is_weights_marker(tree) or _is_state_marker(tree):
        return
    if isinstance(tree, (tuple, list)):
        for t in tree:
            yield from _leaves(t)
    elif isinstance(tree, dict):
        for t in tree.values():
            yield from _leaves(t)
    else:
        yield tree


def flatten_weights_and_state(weights: Any, state: Any) -> tuple[list[Any], list[Any]]:
    """Depth-first leaves of the weight and state trees (Trax checkpoint order)."""
    return list(_leaves(weights)), list(_leaves(state))


def unflatten_weights_and_state(flat_weights: Any, flat_state: Any, weights_and_state_signature: Any,
                                weights_only: bool = False) -> tuple[Any, Any]:
    """Rebuilds the trees of ``weights_and_state_signature`` from flat lists."""
    w_sig, s_sig = weights_and_state_signature
    weights = _fill(list(flat_weights), w_sig, "weights")
    state = None if weights_only else _fill(list(flat_state), s_sig, "state")
    return weights, state


def _fill(flat: list[Any], tree: Any, what: str) -> Any:
    pos = [0]

    def rec(t: Any) -> Any:
        if _is_weights_marker(t) or _is_state_marker(t):
            return t
        if isinstance(t, (tuple, list)):
            return type(t)(rec(x) for x in t)
        if isinstance(t, dict):
            return {k: rec(v) for k, v in t.items()}
        if pos[0] >= len(flat):
            raise ValueError(f"Not enough {what} arrays: the model needs more than {len(flat)}.")
        x = flat[pos[0]]
        pos[0] += 1
        return x

    out = rec(tree)
    if pos[0] != len(flat):
        raise ValueError(f"Too many {what} arrays: the model needs {pos[0]}, got {len(flat)}.")
    return out


def _tree_mismatch(expected: Any, got: Any, path: str = "") -> str | None:
    """Describes the first difference in structure or shape, or returns None."""
    if _is_weights_marker(expected) or _is_state_marker(expected):
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"at {path or 'top'} expected a tuple of {len(expected)}, got {type(got).__name__}"
        if len(expected) != len(got):
            return f"at {path or 'top'} expected {len(expected)} entries, got {len(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            p = _tree_mismatch(e, g, f"{path}[{i}]")
            if p:
                return p
        return None
    if isinstance(expected, dict):
        return None
    e_shape = getattr(expected, "shape", None)
    if e_shape is None:
        return None
    g_shape = getattr(got, "shape", None)
    if g_shape is None:
        return f"at {path or 'top'} expected an array of shape {tuple(e_shape)}, got {type(got).__name__}"
    if tuple(e_shape) != tuple(g_shape):
        return f"at {path or 'top'} expected shape {tuple(e_shape)}, got {tuple(g_shape)}"
    return None


def _abstract(sig: Any) -> Any:
    if isinstance(sig, shapes.ShapeDtype):
        return jax.ShapeDtypeStruct(sig.shape, np.dtype(sig.dtype))
    if isinstance(sig, (tuple, list)):
        return type(sig)(_abstract(s) for s in sig)
    if hasattr(sig, "shape") and hasattr(sig, "dtype"):
        return jax.ShapeDtypeStruct(tuple(sig.shape), sig.dtype)
    return sig


def _to_shape_dtype(tree: Any) -> Any:
    if isinstance(tree, (tuple, list)):
        return type(tree)(_to_shape_dtype(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _to_shape_dtype(v) for k, v in tree.items()}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return shapes.ShapeDtype(tuple(tree.shape), np.dtype(tree.dtype))
    return tree


def to_list(outputs: Any) -> Any:
    """Converts an array or a tuple of arrays to nested Python lists."""
    if isinstance(outputs, (tuple, list)):
        return [to_list(o) for o in outputs]
    return np.asarray(outputs).tolist()


def init_rng_split(rng: Any, n: int) -> list[Any]:
    """``n`` keys from ``rng`` for initialization.

    A concrete key is split with NumPy (``SeedSequence``), which costs
    microseconds instead of one XLA compilation per distinct ``n``; a traced
    key (init under ``jit``/``eval_shape``) is split with ``jax.random``.
    Either way the same key gives the same keys.
    """
    if rng is None:
        return [None] * n
    if isinstance(rng, jax.core.Tracer):
        return list(jax.random.split(rng, n)) if n > 1 else [rng] * n
    raw = np.asarray(jax.random.key_data(rng) if jax.dtypes.issubdtype(
        getattr(rng, "dtype", np.uint32), jax.dtypes.prng_key) else rng, np.uint32)
    seq = np.random.SeedSequence([int(v) for v in raw.ravel()])
    return list(seq.generate_state(2 * n, np.uint32).reshape(n, 2))


def numpy_generator(rng: Any) -> np.random.Generator | None:
    """A NumPy generator seeded from a concrete key, or None for a traced key."""
    if isinstance(rng, jax.core.Tracer):
        return None
    raw = np.asarray(jax.random.key_data(rng) if jax.dtypes.issubdtype(
        getattr(rng, "dtype", np.uint32), jax.dtypes.prng_key) else rng, np.uint32)
    return np.random.default_rng([int(v) for v in raw.ravel()])


def split_rng(rng: Any, n: int) -> list[Any]:
    """The keys a combinator hands its ``n`` sublayers in a forward pass.

    All get the same key: each *leaf* derives its own from it and its index in
    the pass (see ``_DerivedKey``), so no key is split per combinator.
    """
    return [rng] * n

