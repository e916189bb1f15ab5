"""``LayerError``: an exception raised inside a layer, with where it happened.

The message names the failing layer's path inside the model (``Serial[2] >
Branch_out2[1] > Dense_4``), the file and line where that layer was created,
the shapes it received, and the original error. A ``LayerError`` made from an
exception is also an instance of that exception's type, so ``except
ValueError`` keeps working through layers.

Who raises it: ``Layer`` wraps what its own ``init``/``forward`` raise; a
combinator adds its entry to the path as the error passes through it
(``retrax.layers.pass_context.apply_child``); the outermost call hands the
result to the user (``call_outermost``).

>>> import numpy as np
>>> from retrax import layers as tl
>>> model = tl.Serial(tl.Fn('Boom', lambda x: x.missing))
>>> try:
...     model(np.zeros(1))
... except AttributeError as e:
...     print(e.layer_path, isinstance(e, tl.LayerError))
Serial[0] > Boom True
"""

from __future__ import annotations

import inspect
import os
import types
from collections.abc import Callable
from typing import Any

from retrax.layers.trees import signature_or_none

__all__ = ["LayerError", "call_outermost", "find_caller"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        layer: Any,  # the failing Layer
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
        self.caller = layer.caller
        self.input_signature = input_signature
        self.cause = cause
        self.path = []
        self._hidden_index = None

    def push_parent(self, parent: Any, index: int) -> None:
        """Records that the failing layer sits at ``index`` inside ``parent``."""
        if parent.hidden_in_path:
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


def call_outermost(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    """Runs ``fn`` as the outermost layer call, handing errors to the user.

    A ``LayerError`` that could not be made an instance of its cause's type
    becomes the cause re-raised with the layer path as a note; anything else
    propagates unchanged. ``Layer``'s public entry points go through it when no
    pass is running (``retrax.layers.pass_context.surface_causes``).
    """
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
        return str(signature_or_none(sig))
    except Exception:
        return repr(sig)


def find_caller() -> tuple[str, int]:
    """File and line of the innermost frame outside the retrax package.

    ``Layer.__init__`` records it as the layer's creation site (``Layer.caller``),
    which ``LayerError`` messages name.
    """
    frame = inspect.currentframe()
    while frame is not None:
        filename = frame.f_code.co_filename
        if not os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep):
            return filename, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", 0
