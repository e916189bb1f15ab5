"""The ``trax`` -> ``retrax`` import shim of scripts/trax_conformance.py (issue 16).

:func:`install_shim` puts a :class:`TraxAliasFinder` first on ``sys.meta_path``:
``import trax.X.Y`` gives the very module object ``retrax.X.Y``. A module retrax
lacks raises :class:`MissingRetraxModuleError` (strict) or becomes a placeholder
whose first use raises :class:`PlaceholderUseError` (lenient). In lenient mode
``from trax.X import name`` with a name retrax lacks binds a placeholder through a
proxy, leaving the retrax module unchanged. The harness also gets a
``tensorflow.test`` stub, ``jax.config`` as a module and placeholders for missing
third-party test dependencies (gym). :meth:`Shim.uninstall` undoes all of it.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import sys
import types

THIRD_PARTY_PLACEHOLDERS = ("gym", "gin")


class MissingRetraxModuleError(ImportError):
    """Strict mode: importing a ``trax.X`` module whose ``retrax.X`` does not exist."""


class PlaceholderUseError(AttributeError):
    """Lenient mode: using a name of a placeholder module (a missing retrax module or test
    dependency). An ``AttributeError``, so ``from trax.rl import x`` still reaches the finder."""


class NeedsTensorFlowError(PlaceholderUseError):
    """A ``tf.*`` name beyond what the harness's TensorFlow stub provides."""


# ---------------------------------------------------------------------------- the shim


class _Placeholder(types.ModuleType):
    """A module that raises ``error(message)`` on the first public attribute access."""

    def __init__(self, name: str, error: type, message: str):
        super().__init__(name)
        self.__path__ = []  # a package, so submodule imports also get placeholders
        self.__dict__["_error"] = (error, message)

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        error, message = self.__dict__["_error"]
        raise error(f"{message} (needed for {self.__name__}.{attr})")


class _ModuleLoader(importlib.abc.Loader):
    """Hands the import system an existing module object."""

    def __init__(self, module: types.ModuleType):
        self.module = module

    def create_module(self, spec):
        return self.module

    def exec_module(self, module):
        pass


def make_tensorflow_stub() -> dict[str, types.ModuleType]:
    """``tensorflow``, ``tensorflow.test``, ``tensorflow.compat(.v2(.test))`` modules."""
    import unittest

    import numpy as np
    try:
        from absl.testing import absltest
    except ImportError:  # absl-py is a test dependency of Trax's tests, not of retrax
        absltest = None
    base = unittest.TestCase if absltest is None else absltest.TestCase

    class TestCase(base):
        """What Trax's tests use of ``tf.test.TestCase``."""

        def assertAllClose(self, a, b, rtol=1e-6, atol=1e-6, msg=None):  # noqa: N802
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol,
                                       err_msg=msg or "")

        def assertAllEqual(self, a, b, msg=None):  # noqa: N802
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=msg or "")

        def get_temp_dir(self):
            return self.create_tempdir().full_path

    message = "needs TensorFlow: the harness's stub has only tf.test"
    modules = {}
    for name in ("tensorflow", "tensorflow.compat", "tensorflow.compat.v2"):
        modules[name] = _Placeholder(name, NeedsTensorFlowError, message)
    for name in ("tensorflow.test", "tensorflow.compat.v2.test"):
        test = types.ModuleType(name)
        test.TestCase, test.main = TestCase, (unittest if absltest is None else absltest).main
        modules[name] = test
    for name, module in modules.items():
        parent, _, child = name.rpartition(".")
        if parent:
            modules[parent].__dict__[child] = module
    return modules


class TraxAliasFinder(importlib.abc.MetaPathFinder):
    """Resolves ``trax`` / ``trax.X.Y`` to the module object ``retrax`` / ``retrax.X.Y``.

    ``lenient=False``: a module retrax lacks raises :class:`MissingRetraxModuleError`
    at import. ``lenient=True``: it becomes a placeholder raising that error on
    first use (:class:`PlaceholderUseError`). ``extra`` maps further module names
    to ready module objects (used only when no other finder can import that
    name); ``third_party`` names become placeholders when not installed.
    """

    def __init__(self, lenient: bool = False, extra: dict | None = None,
                 third_party: tuple[str, ...] = ()):
        self.lenient = lenient
        self.extra = dict(extra or {})
        self.third_party = tuple(third_party)
        self.placeholders: list[str] = []

    @staticmethod
    def retrax_name(fullname: str) -> str | None:
        if fullname == "trax" or fullname.startswith("trax."):
            return "retrax" + fullname[len("trax"):]
        return None

    def _others_find(self, fullname, path, target) -> bool:
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            if finder.find_spec(fullname, path, target) is not None:
                return True
        return False

    def _spec(self, fullname: str, module: types.ModuleType):
        is_package = hasattr(module, "__path__")
        return importlib.machinery.ModuleSpec(fullname, _ModuleLoader(module), is_package=is_package)

    def find_spec(self, fullname, path=None, target=None):
        name = self.retrax_name(fullname)
        if name is not None:
            try:
                return self._spec(fullname, importlib.import_module(name))
            except ModuleNotFoundError as e:
                if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                    raise  # retrax has the module; something it imports is missing
                message = f"trax shim: retrax has no module '{e.name}' (Trax's '{fullname}')"
                if not self.lenient:
                    raise MissingRetraxModuleError(message, name=fullname) from None
                self.placeholders.append(fullname)
                return self._spec(fullname, _Placeholder(fullname, PlaceholderUseError, message))
        top = fullname.partition(".")[0]
        if fullname in self.extra or top in self.third_party:
            if self._others_find(fullname, path, target):
                return None
            if fullname in self.extra:
                return self._spec(fullname, self.extra[fullname])
            message = f"test dependency '{top}' is not installed"
            self.placeholders.append(fullname)
            return self._spec(fullname, _Placeholder(fullname, PlaceholderUseError, message))
        return None


class _MissingName:
    """Stands for a name ``from trax.X import name`` wanted that retrax lacks (lenient mode)."""

    def __init__(self, message: str):
        self._message = message

    def _fail(self, *args, **kwargs):
        raise PlaceholderUseError(self._message)

    __call__ = __getitem__ = __iter__ = __mro_entries__ = _fail

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        self._fail()

    def __repr__(self):
        return f"<missing: {self._message}>"


class _FromProxy(types.ModuleType):
    """What ``from trax.X import a, b`` reads names from when ``retrax.X`` lacks one of them.

    Python reads those names with ``getattr`` on what ``__import__`` returned; this
    proxy hands out the real attributes and a :class:`_MissingName` for the rest, so
    the retrax module itself is never changed.
    """

    def __init__(self, module: types.ModuleType, trax_name: str, finder: TraxAliasFinder):
        super().__init__(trax_name)
        self.__dict__.update(_module=module, _finder=finder)

    def __getattr__(self, attr):
        module, finder = self.__dict__["_module"], self.__dict__["_finder"]
        try:
            return getattr(module, attr)
        except AttributeError:
            wanted = f"{self.__name__}.{attr}"
            finder.placeholders.append(wanted)
            return _MissingName(f"trax shim: retrax has no '{finder.retrax_name(wanted)}' "
                                f"(Trax's '{wanted}')")


class Shim:
    """The installed finder and import hook plus what they put in ``sys.modules``.

    ``uninstall()`` undoes all of it.
    """

    def __init__(self, finder: TraxAliasFinder, preset: dict[str, types.ModuleType], original_import):
        self.finder, self.preset, self.original_import = finder, preset, original_import

    def import_hook(self, name, globals=None, locals=None, fromlist=(), level=0):  # noqa: A002
        module = self.original_import(name, globals, locals, fromlist, level)
        if (level or not fromlist or not self.finder.lenient
                or self.finder.retrax_name(name) is None or isinstance(module, _Placeholder)):
            return module
        if all(x == "*" or hasattr(module, x) for x in fromlist):
            return module
        return _FromProxy(module, name, self.finder)

    def uninstall(self) -> None:
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        if builtins.__import__ == self.import_hook:
            builtins.__import__ = self.original_import
        ours = {**self.preset, **self.finder.extra}
        for name, module in list(sys.modules.items()):
            if (ours.get(name) is module or self.finder.retrax_name(name) is not None
                    or isinstance(module, _Placeholder)):
                del sys.modules[name]


def install_shim(lenient: bool = True) -> Shim:
    """Puts a :class:`TraxAliasFinder` first on ``sys.meta_path``; returns a :class:`Shim`.

    In lenient mode it also wraps ``builtins.__import__`` so that ``from trax.X import
    name`` with a name retrax lacks binds a placeholder instead of failing the import.
    """
    finder = TraxAliasFinder(lenient=lenient, extra=make_tensorflow_stub(),
                             third_party=THIRD_PARTY_PLACEHOLDERS)
    sys.meta_path.insert(0, finder)
    preset = {}
    import jax
    try:
        importlib.import_module("jax.config")
    except ModuleNotFoundError:  # preset, so importing it does not replace jax.config
        preset["jax.config"] = types.ModuleType("jax.config")
        preset["jax.config"].config = jax.config
        sys.modules.update(preset)
    shim = Shim(finder, preset, builtins.__import__)
    if lenient:
        builtins.__import__ = shim.import_hook
    return shim
