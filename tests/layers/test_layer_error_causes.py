"""A LayerError never hides the error raised inside a layer, whatever its type.

For every exception type in ``builtins`` (and a few user-defined and JAX ones),
raised inside a layer nested two combinators deep, the caller gets an
exception that is an instance of the original type, whose message holds the
original message and the layer path, and whose cause is the original.
"""

from __future__ import annotations

import builtins
import errno
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes

PATH = "Serial[1] > Serial[1] > Raise"
# Exception groups are built in from Python 3.11 (retrax supports 3.10).
_BASE_GROUP = getattr(builtins, "BaseExceptionGroup", None)
_GROUP = getattr(builtins, "ExceptionGroup", None)
needs_groups = pytest.mark.skipif(_GROUP is None, reason="exception groups need Python 3.11")
X = np.ones((3,), np.float32)


def _raise_when_concrete(exc: BaseException) -> tl.Layer:
    """A 1 -> 1 layer that raises ``exc`` on concrete inputs (init's shape pass is fine)."""

    def f(x):
        if not isinstance(x, jax.core.Tracer):
            raise exc
        return x

    return tl.Fn("Raise", f)


def _two_deep(layer: tl.Layer) -> tl.Layer:
    return tl.Serial(tl.Fn("Id", lambda x: x), tl.Serial(tl.Fn("Id2", lambda x: x), layer))


def _raised_by_model(exc: BaseException) -> BaseException:
    model = _two_deep(_raise_when_concrete(exc))
    model.init(shapes.ShapeDtype(X.shape, X.dtype))
    with pytest.raises(BaseException) as info:
        model(X)
    return info.value


# -- every built-in exception type --------------------------------------------


def _builtin_types() -> list[type]:
    found = {v for v in vars(builtins).values()
             if isinstance(v, type) and issubclass(v, BaseException)}
    return sorted(found, key=lambda t: t.__name__)


def _instance(t: type) -> BaseException:
    """An instance of ``t`` built the way real code builds one (all arguments)."""
    if issubclass(t, UnicodeDecodeError):
        return t("utf-8", b"ab\xff", 2, 3, "invalid start byte")
    if issubclass(t, UnicodeEncodeError):
        return t("ascii", "ab\xe9", 2, 3, "ordinal not in range(128)")
    if issubclass(t, UnicodeTranslateError):
        return t("ab\xe9", 2, 3, "character maps to <undefined>")
    if _BASE_GROUP is not None and t is _BASE_GROUP:
        return t("a group of interrupts", [KeyboardInterrupt()])
    if _BASE_GROUP is not None and issubclass(t, _BASE_GROUP):
        return t("a group of errors", [ValueError("first"), KeyError("second")])
    if issubclass(t, OSError):
        return t(errno.EIO, f"{t.__name__} strerror", "some/file.txt")
    if issubclass(t, SyntaxError):
        return t(f"{t.__name__} msg", ("model.py", 3, 5, "x = = 1\n", 3, 7))
    if issubclass(t, ImportError):
        return t(f"{t.__name__} msg", name="missing_mod", path="/no/such/missing_mod.py")
    if t is AttributeError:
        return t("no attribute 'w'", name="w", obj=[1, 2])
    if issubclass(t, NameError):
        return t(f"{t.__name__}: name 'w' is not defined", name="w")
    if t is StopIteration:
        return t("the stop value")
    if t is SystemExit:
        return t(3)
    return t(f"the original {t.__name__} message")


# Attributes each family keeps on the LayerError (beyond ``args``).
_FIELDS = {
    OSError: ("errno", "strerror", "filename", "filename2"),
    (UnicodeDecodeError, UnicodeEncodeError, UnicodeTranslateError): (
        "encoding", "object", "start", "end", "reason"),
    SyntaxError: ("msg", "filename", "lineno", "offset", "text", "end_lineno", "end_offset"),
    ImportError: ("msg", "name"),  # ``path`` is LayerError's; the module path is on cause
    AttributeError: ("name", "obj"),
    NameError: ("name",),
    StopIteration: ("value",),
}
if _BASE_GROUP is not None:
    _FIELDS[_BASE_GROUP] = ("exceptions",)

_EXCEPTIONS = [t for t in _builtin_types() if issubclass(t, Exception)]
_NOT_EXCEPTIONS = [t for t in _builtin_types() if not issubclass(t, Exception)]


def test_the_type_lists_cover_what_the_issue_names():
    names = {t.__name__ for t in _EXCEPTIONS}
    groups = {"ExceptionGroup"} if _GROUP is not None else set()
    assert {"FileNotFoundError", "TimeoutError", "MemoryError", "UnicodeDecodeError",
            "UnicodeEncodeError", "UnicodeTranslateError", "KeyError", "StopIteration",
            "ModuleNotFoundError", "BlockingIOError"} | groups <= names
    base_groups = {"BaseExceptionGroup"} if _GROUP is not None else set()
    assert {t.__name__ for t in _NOT_EXCEPTIONS} == {
        "BaseException", "GeneratorExit", "KeyboardInterrupt", "SystemExit"} | base_groups


@pytest.mark.parametrize("exc_type", _EXCEPTIONS, ids=lambda t: t.__name__)
def test_every_builtin_exception_survives_two_combinators(exc_type):
    original = _instance(exc_type)
    err = _raised_by_model(original)
    assert isinstance(err, tl.LayerError) and isinstance(err, exc_type)
    assert err.cause is original and err.__cause__ is original
    message = str(err)
    assert f"layer {PATH} (in pure_fn)" in message
    assert f"{exc_type.__name__}: {original}" in message
    assert err.args == original.args
    for family, fields in _FIELDS.items():
        if isinstance(original, family):
            for field in fields:
                assert getattr(err, field) == getattr(original, field), field
    assert err.path == ["Serial[1]", "Serial[1]"]
    # Pickling still works: the message travels (as a plain Exception).
    restored = pickle.loads(pickle.dumps(err))
    assert str(restored) == message


@pytest.mark.parametrize("exc_type", _NOT_EXCEPTIONS, ids=lambda t: t.__name__)
def test_base_exceptions_that_are_not_exceptions_pass_through_untouched(exc_type):
    original = _instance(exc_type)
    err = _raised_by_model(original)
    assert err is original
    assert not hasattr(err, "__notes__") and err.__cause__ is None


def test_oserror_errno_mapping_survives():
    original = OSError(errno.ENOENT, "No such file or directory", "vocab.txt")
    assert type(original) is FileNotFoundError  # Python maps the errno
    err = _raised_by_model(original)
    assert isinstance(err, FileNotFoundError) and isinstance(err, OSError)
    assert (err.errno, err.strerror, err.filename) == (errno.ENOENT, "No such file or directory",
                                                       "vocab.txt")
    assert "[Errno 2] No such file or directory: 'vocab.txt'" in str(err)
    with pytest.raises(FileNotFoundError, match=r"Serial\[1\] > Serial\[1\] > Raise"):
        _two_deep_called(OSError(errno.ENOENT, "gone", "vocab.txt"))
    timeout = _raised_by_model(OSError(errno.ETIMEDOUT, "timed out"))
    assert isinstance(timeout, TimeoutError) and timeout.errno == errno.ETIMEDOUT


def _two_deep_called(exc):
    model = _two_deep(_raise_when_concrete(exc))
    model.init(shapes.ShapeDtype(X.shape, X.dtype))
    model(X)


def test_module_not_found_keeps_its_path_on_the_cause():
    original = ModuleNotFoundError("No module named 'tokenizers'", name="tokenizers",
                                   path="/site/tokenizers")
    err = _raised_by_model(original)
    assert isinstance(err, ModuleNotFoundError) and err.name == "tokenizers"
    assert err.path == ["Serial[1]", "Serial[1]"]  # LayerError's path wins the name
    assert err.cause.path == "/site/tokenizers"


@needs_groups
def test_exception_group_still_splits():
    original = _GROUP("two problems", [ValueError("v"), KeyError("k")])
    err = _raised_by_model(original)
    assert isinstance(err, _GROUP) and err.exceptions == original.exceptions
    keys, rest = err.split(KeyError)  # what ``except* KeyError`` does
    assert [str(e) for e in keys.exceptions] == ["'k'"]
    assert [str(e) for e in rest.exceptions] == ["v"]


# -- user-defined exceptions --------------------------------------------------


class NeedsArgsError(Exception):
    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class CustomNewError(Exception):
    """``__new__`` needs an argument and refuses subclasses."""

    def __new__(cls, code):
        if cls is not CustomNewError:
            raise TypeError("CustomNewError cannot be subclassed")
        self = super().__new__(cls, code)
        self.code = code
        return self

    def __str__(self):
        return f"custom new with code {self.code}"


class FinalError(Exception):
    def __init_subclass__(cls, **kwargs):
        raise TypeError("FinalError cannot be subclassed")


class SlotsError(Exception):
    __slots__ = ("value",)

    def __init__(self, value):
        super().__init__(f"slots value {value}")
        self.value = value


class ClashingNamesError(Exception):
    """Read-only properties with the names of LayerError's attributes."""

    cause = property(lambda self: "my own cause")
    path = property(lambda self: "my own path")
    layer_name = property(lambda self: "my own layer")


def test_user_exception_whose_init_needs_arguments():
    original = NeedsArgsError(404, "vocabulary file missing")
    err = _raised_by_model(original)
    assert isinstance(err, NeedsArgsError) and isinstance(err, tl.LayerError)
    assert (err.code, err.detail) == (404, "vocabulary file missing")
    assert err.cause is original and err.__cause__ is original
    assert "NeedsArgsError: code 404: vocabulary file missing" in str(err) and PATH in str(err)
    assert pickle.loads(pickle.dumps(err)).args == (str(err),)


def test_user_exception_with_custom_new():
    original = CustomNewError(7)
    err = _raised_by_model(original)
    assert isinstance(err, CustomNewError) and err.code == 7 and err.cause is original
    assert "CustomNewError: custom new with code 7" in str(err) and PATH in str(err)


def test_user_exception_with_slots():
    original = SlotsError(5)
    err = _raised_by_model(original)
    assert isinstance(err, SlotsError) and err.value == 5 and err.cause is original
    assert "SlotsError: slots value 5" in str(err)


def test_user_exception_with_clashing_attribute_names():
    original = ClashingNamesError("clash")
    err = _raised_by_model(original)
    assert isinstance(err, ClashingNamesError)
    assert err.cause is original and err.layer_name == "Raise"
    assert err.path == ["Serial[1]", "Serial[1]"]
    assert "ClashingNamesError: clash" in str(err)


def test_type_that_refuses_subclasses_is_reraised_itself_with_the_path_as_a_note():
    original = FinalError("final message")
    err = _raised_by_model(original)
    assert err is original
    assert str(err) == "final message"
    (note,) = err.__notes__
    assert f"layer {PATH} (in pure_fn)" in note and "FinalError: final message" in note
    restored = pickle.loads(pickle.dumps(err))
    assert type(restored) is FinalError and restored.__notes__ == [note]


def test_type_that_refuses_subclasses_under_jit_and_at_init():
    def f(x):
        raise FinalError("refused")

    model = _two_deep(tl.Fn("Raise", f))
    with pytest.raises(FinalError) as info:
        jax.jit(lambda x: model(x))(X)
    assert any(f"layer {PATH} (in init)" in n for n in info.value.__notes__)
    with pytest.raises(FinalError) as info:
        model.init(shapes.ShapeDtype(X.shape, X.dtype))
    assert any(PATH in n for n in info.value.__notes__)


# -- JAX's tracer errors --------------------------------------------------------


def test_tracer_bool_conversion_under_jit():
    model = _two_deep(tl.Fn("Raise", lambda x: x if x.sum() > 0 else -x))
    with pytest.raises(jax.errors.TracerBoolConversionError) as info:
        jax.jit(lambda x: model(x))(X)
    err = info.value
    assert isinstance(err, tl.LayerError) and isinstance(err, TypeError)
    assert isinstance(err.cause, jax.errors.TracerBoolConversionError)
    assert err.__cause__ is err.cause
    assert f"layer {PATH}" in str(err)
    assert "Attempted boolean conversion of traced array" in str(err)
    assert "missing 1 required positional argument" not in str(err)


def test_concretization_error_under_jit():
    model = _two_deep(tl.Fn("Raise", lambda x: jnp.zeros(x.sum().astype(int))))
    with pytest.raises(TypeError) as info:
        jax.jit(lambda x: model(x))(X)
    err = info.value
    assert isinstance(err, tl.LayerError) and f"layer {PATH}" in str(err)
    assert "Shapes must be 1D sequences of concrete values" in str(err)

    concretization = _two_deep(tl.Fn("Raise", lambda x: jnp.arange(x.sum())))
    with pytest.raises(jax.errors.ConcretizationTypeError) as info:
        jax.jit(lambda x: concretization(x))(X)
    err = info.value
    assert isinstance(err, tl.LayerError) and f"layer {PATH}" in str(err)
    assert err.cause is err.__cause__
    assert isinstance(err.cause, jax.errors.ConcretizationTypeError)
    assert str(err.cause).splitlines()[0] in str(err)


def test_errors_raised_at_init_are_wrapped_the_same_way():
    def f(x):
        raise TimeoutError("the data server timed out")

    model = _two_deep(tl.Fn("Raise", f))
    with pytest.raises(TimeoutError) as info:
        model.init(shapes.ShapeDtype(X.shape, X.dtype))
    err = info.value
    assert isinstance(err, tl.LayerError) and f"layer {PATH} (in init)" in str(err)
    assert "TimeoutError: the data server timed out" in str(err)
