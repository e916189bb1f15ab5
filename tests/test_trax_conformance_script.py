"""scripts/trax_conformance.py: the ``trax`` -> ``retrax`` shim and the harness end to end.

Self-contained: the end-to-end test builds a tiny fake Trax mirror (a git repo
with one test file) instead of reading the real one.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "trax_conformance_under_test", os.path.join(ROOT, "scripts", "trax_conformance.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


harness = _load_script()


@pytest.fixture
def shim(request):
    installed = harness.install_shim(lenient=request.param)
    yield installed
    installed.uninstall()


@pytest.mark.parametrize("shim", [False], indirect=True)
def test_strict_shim_aliases_trax_names_to_the_retrax_module_objects(shim):
    import trax  # noqa: F401  (resolved by the shim)
    import trax.layers as tl
    from trax import fastmath
    from trax.layers import base

    import retrax
    import retrax.fastmath.numpy
    import retrax.layers
    import retrax.layers.base

    assert sys.modules["trax"] is retrax
    assert tl is retrax.layers and base is retrax.layers.base
    assert fastmath.numpy is retrax.fastmath.numpy
    assert importlib.import_module("trax.fastmath.numpy") is retrax.fastmath.numpy
    with pytest.raises(harness.MissingRetraxModuleError,
                       match=r"retrax has no module 'retrax.no_such_module' \(Trax's 'trax.no_such_module"):
        importlib.import_module("trax.no_such_module.child")


@pytest.mark.parametrize("shim", [True], indirect=True)
def test_lenient_shim_defers_missing_modules_and_names_to_their_use(shim):
    import retrax.shapes

    placeholder = importlib.import_module("trax.no_such_module.child")
    with pytest.raises(harness.PlaceholderUseError, match=r"retrax has no module 'retrax.no_such_module'"):
        placeholder.run()
    assert not hasattr(placeholder, "__file__")

    namespace = {}
    exec("from trax.shapes import ShapeDtype, NoSuchName", namespace)  # noqa: S102
    assert namespace["ShapeDtype"] is retrax.shapes.ShapeDtype
    with pytest.raises(harness.PlaceholderUseError, match=r"retrax has no 'retrax.shapes.NoSuchName'"):
        namespace["NoSuchName"]()
    assert not hasattr(retrax.shapes, "NoSuchName")  # the retrax module is left as it was


def test_uninstall_restores_the_import_system():
    before_import, before_path = builtins.__import__, list(sys.meta_path)
    installed = harness.install_shim(lenient=True)
    importlib.import_module("trax.layers")
    importlib.import_module("trax.missing_for_uninstall")
    import jax
    from jax.config import config  # JAX removed this module; the shim provides it
    assert config is jax.config and not isinstance(jax.config, type(sys))
    installed.uninstall()
    assert builtins.__import__ is before_import and sys.meta_path == before_path
    assert not [name for name in sys.modules if name == "trax" or name.startswith("trax.")]
    with pytest.raises(ImportError):
        importlib.import_module("trax")


def test_third_party_placeholder_only_when_not_installed():
    finder = harness.TraxAliasFinder(lenient=True, third_party=("numpy", "surely_not_installed_xyz"))
    assert finder.find_spec("numpy") is None  # installed: the normal import takes it
    spec = finder.find_spec("surely_not_installed_xyz")
    module = spec.loader.create_module(spec)
    with pytest.raises(harness.PlaceholderUseError, match="'surely_not_installed_xyz' is not installed"):
        _ = module.spaces


def test_tensorflow_stub_has_only_the_test_case():
    stub = harness.make_tensorflow_stub()
    assert stub["tensorflow"].test is stub["tensorflow.test"]
    assert stub["tensorflow"].compat.v2.test is stub["tensorflow.compat.v2.test"]
    case_type = stub["tensorflow.test"].TestCase

    class Case(case_type):
        def test_nothing(self):
            pass

    case = Case("test_nothing")
    case.assertAllClose([1.0, 2.0], [1.0, 2.0 + 1e-7])
    with pytest.raises(AssertionError):
        case.assertAllClose([1.0], [1.1])
    with pytest.raises(AssertionError):
        case.assertAllEqual([1, 2], [1, 3])
    with pytest.raises(harness.NeedsTensorFlowError, match="needs TensorFlow"):
        _ = stub["tensorflow"].constant


def _named_case(function):
    """What absl's named_parameters leaves on a generated case (absl-py is not needed here)."""
    @functools.wraps(function)
    def case(self):
        return function(self, "tensorflow-numpy")
    case.__name__ = function.__name__ + "_tf"
    case.__doc__ = f"{case.__name__}('tensorflow-numpy')"
    return case


@_named_case
def _case_named_after_tensorflow(self, backend):
    del self, backend


def _tag(*labels):
    return lambda function: function


@_tag("TFNP", "tensorflow-numpy")
def _decorated_case(self):
    return 1 + 1


def test_tensorflow_is_seen_in_parameters_and_body_not_decorators():
    case = _case_named_after_tensorflow
    assert harness.params_of(case) == "_case_named_after_tensorflow_tf('tensorflow-numpy')"
    assert harness.needs_tensorflow(case)

    def repr_case(self):
        pass

    repr_case.__x_params_repr__ = "(<Backend.TFNP: 'tensorflow-numpy'>)"
    assert harness.needs_tensorflow(repr_case)

    def body_case(self):
        import tensorflow as tf  # noqa: F401
        return tf.constant(1)

    assert harness.params_of(body_case) == "" and harness.needs_tensorflow(body_case)
    assert not harness.needs_tensorflow(_decorated_case)


def test_cause_keys_name_what_is_missing():
    key = harness.cause_key
    assert key({"root_message": "module 'retrax.layers' has no attribute 'Foo'"}) == (
        "missing name Foo in retrax.layers")
    assert key({"root_message": "cannot import name 'Shuffle' from 'retrax.data.inputs' (x.py)"}) == (
        "missing name Shuffle in retrax.data.inputs")
    assert key({"root_message": "Loop.__init__() got an unexpected keyword argument 'adasum'"}) == (
        "Loop.__init__() has no argument adasum")
    assert key({"root_type": "AssertionError", "root_message": "1 != 2"}) == (
        "AssertionError (different values or behaviour)")
    assert key({"root_type": "ValueError", "root_message": "shape (3, 4) bad"}) == (
        "ValueError: shape (N, N) bad")


FAKE_TEST = '''\
import unittest

from tensorflow import test
from trax import shapes
from trax.no_such_pkg import thing
from trax.shapes import NoSuchName
import trax.layers as tl


class FakeTest(unittest.TestCase):

  def test_alias_is_retrax(self):
    import retrax
    self.assertIs(shapes, retrax.shapes)
    self.assertIs(tl, retrax.layers)

  def test_fails(self):
    self.assertEqual(shapes.ShapeDtype((2,)).shape, (3,))

  def test_missing_module(self):
    thing.run()

  def test_missing_name(self):
    NoSuchName()

  def test_tf_backend(self):
    import tensorflow as tf
    tf.constant(1)

  def test_skipped(self):
    self.skipTest('not here')


class TfStyleTest(test.TestCase):

  def test_all_close(self):
    self.assertAllClose([1.0, 2.0], [1.0, 2.0])
'''


def _git(cwd, *args):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   cwd=cwd, check=True, capture_output=True)


def test_harness_end_to_end_on_a_fake_mirror(tmp_path, capsys):
    mirror = tmp_path / "mirror"
    (mirror / "trax").mkdir(parents=True)
    (mirror / "trax" / "shapes_test.py").write_text(FAKE_TEST)
    _git(mirror, "init", "-q")
    _git(mirror, "add", "trax/shapes_test.py")
    _git(mirror, "commit", "-q", "-m", "fake")
    _git(mirror, "tag", "v1.4.1")
    out = tmp_path / "result.json"
    code = harness.main(["--mirror", str(mirror), "--out", str(out), "--keep", str(tmp_path / "run"),
                         "--repo", ROOT, "--timeout", "300"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["files"]["found"] == ["trax/shapes_test.py"]
    assert "trax/layers/core_test.py" in result["files"]["missing"]
    tests = {t["id"].split("::", 1)[1]: t for t in result["tests"]}
    assert len(tests) == 7
    assert tests["FakeTest::test_alias_is_retrax"]["outcome"] == "passed"
    assert tests["TfStyleTest::test_all_close"]["outcome"] == "passed"
    assert tests["FakeTest::test_fails"]["outcome"] == "failed"
    assert tests["FakeTest::test_fails"]["root_type"] == "AssertionError"
    assert tests["FakeTest::test_missing_module"]["cause"] == "missing module retrax.no_such_pkg"
    assert tests["FakeTest::test_missing_name"]["cause"] == (
        "missing name (or module) retrax.shapes.NoSuchName")
    assert tests["FakeTest::test_tf_backend"]["excluded"] == "needs TensorFlow"
    assert tests["FakeTest::test_tf_backend"]["root_type"] == "NeedsTensorFlowError"
    assert tests["FakeTest::test_skipped"]["outcome"] == "skipped"
    (row,) = [r for r in result["table"] if r["module"] == "trax.shapes"]
    assert (row["tests"], row["excluded_tf"], row["passed"], row["failed"], row["skipped"]) == (
        7, 1, 2, 3, 1)
    assert row["share"] == pytest.approx(0.4)
    printed = capsys.readouterr().out
    assert "trax.shapes" in printed and "40.0%" in printed


def test_hand_lists_name_tests_of_the_files_run():
    for test_id, reason in {**harness.TRAX_BUG_PINS, **harness.ON_PURPOSE}.items():
        path, _, name = test_id.partition("::")
        assert path in harness.TEST_FILES and name.count("::") == 1 and reason
    assert not set(harness.TRAX_BUG_PINS) & set(harness.ON_PURPOSE)
