"""Runs Trax 1.4.1's own unit tests against retrax and counts what passes (issue 16).

Usage::

    python scripts/trax_conformance.py [--mirror DIR] [--tag v1.4.1] [--out JSON]
                                       [--only SUBSTR ...] [--keep DIR] [--timeout S]

What it does:

1. Reads Trax's test files for the modules issue 16 names (``TEST_FILES``,
   whichever exist at the tag) out of a git mirror of google/trax with
   ``git show``, plus the ``testdata/`` blobs and ``.gin`` configs those tests
   open, into a temporary tree: ``trax/layers/base_test.py`` becomes
   ``trax_layers/base_test.py`` (a package, so ``layers`` and ``models`` may
   both have an ``rnn_test.py``).
2. Writes a ``conftest.py`` there that imports this file and calls
   :func:`install_shim` (scripts/trax_conformance_shim.py): a meta-path finder that makes ``trax`` and every
   ``trax.X.Y`` the very module object ``retrax.X.Y`` (no copy, no stub). A
   module retrax lacks becomes a placeholder whose first attribute access
   raises :class:`PlaceholderUseError` naming it (``lenient``; the strict mode
   raises :class:`MissingRetraxModuleError`, an ``ImportError``, at import), so
   one missing module fails only the tests that use it, not the whole file.
3. Runs pytest on each file in its own process (``-n 0``, one file at a time:
   modest CPU; global state such as the fastmath backend cannot leak), and a
   plugin (:class:`OutcomeRecorder`) writes each test's outcome, exception
   type, the first line of its message and of its root cause, and where it was
   raised (innermost retrax frame, innermost test-file frame).
4. Prints a table per module and the failures grouped by cause, and writes
   everything as JSON (``--out``).

Counting. A test *needs TensorFlow* (excluded) when its absl parameters or
its source name ``TFNP``/``tensorflow``/``tf.``, or it failed with an error
about TensorFlow (retrax refuses the ``'tensorflow-numpy'`` backend; the stub
below raises :class:`NeedsTensorFlowError`). A test that *pins a Trax bug* is
listed by hand in ``TRAX_BUG_PINS`` with the reason (excluded too). The share
is passed / (passed + failed + errors) over the rest; skips are shown apart.
Failures on a difference documented in docs/differences.md (``ON_PURPOSE``)
still count as failures; the table shows how many there are.

What the harness itself provides (shim limitations, not retrax's API):

* ``tensorflow`` when TensorFlow is not installed: a stub with only
  ``tensorflow.test`` / ``tensorflow.compat.v2.test`` (``TestCase`` as an
  absltest ``TestCase`` with ``assertAllClose``/``assertAllEqual``, ``main``);
  Trax's ``atari_cnn``, ``ops`` and ``decoding`` tests use it only as their base
  class. Any other ``tf.*`` raises :class:`NeedsTensorFlowError`.
* ``jax.config`` as a module (``from jax.config import config``), which JAX
  removed after Trax 1.4.1; it holds JAX's config object.
* ``gym`` (and ``gin`` if absent) as placeholders: callbacks_test imports gym
  for its RL serialization tests, which also need ``trax.rl``.

Test dependencies installed into the venv for this run only (not in
pyproject.toml, not in CI): ``absl-py`` (already present) and ``gin-config``
0.5.0 (``pip install gin-config``; decoding_test and ops_test import ``gin``).
Not installed: tensorflow, gym.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the shim lives beside this file
from trax_conformance_shim import (  # noqa: E402
    MissingRetraxModuleError,
    NeedsTensorFlowError,
    PlaceholderUseError,
    Shim,
    TraxAliasFinder,
    install_shim,
    make_tensorflow_stub,
)

__all__ = ["MissingRetraxModuleError", "NeedsTensorFlowError", "PlaceholderUseError", "Shim",
           "TraxAliasFinder", "install_shim", "make_tensorflow_stub", "OutcomeRecorder", "main"]

TEST_FILES = [f"trax/layers/{m}_test.py" for m in (
    "base", "core", "combinators", "normalization", "rnn", "convolution", "pooling",
    "attention", "activation_fns", "initializers", "metrics")] + [
    f"trax/models/{m}_test.py" for m in ("transformer", "rnn", "mlp", "resnet", "atari_cnn")] + [
    f"trax/supervised/{m}_test.py" for m in ("training", "decoding", "history", "callbacks")] + [
    "trax/optimizers/optimizers_test.py", "trax/fastmath/ops_test.py",
    "trax/data/inputs_test.py", "trax/shapes_test.py"]

DEFAULT_MIRROR = "/work/.mirror/google+trax/repo"
RECORD_ENV = "TRAX_CONFORMANCE_RECORD"
TF_PATTERN = re.compile(r"TFNP|tensorflow|\btf\.", re.IGNORECASE)

# Trax test id -> why it pins a bug of Trax or of the test itself (excluded from the share).
# The first two were checked: retrax passes them with the test's own mistake corrected.
TRAX_BUG_PINS: dict[str, str] = {
    "trax/layers/combinators_test.py::SerialTest::test_assign_sublayer_weights":
        "np.random.uniform(shape) draws 2 numbers (shape is taken as `low`) that the test assigns "
        "as a (5, 5) kernel; Trax stores weights unchecked, retrax rejects the shape "
        "(passes with size=shape)",
    "trax/layers/combinators_test.py::ScanTest::test_multi_input_jax":
        "Fn declared n_out=2 returns 3 values and the test expects all 3; Trax never checks an "
        "Fn's n_out, retrax does (passes with n_out=3)",
    "trax/data/inputs_test.py::InputsTest::test_truncate_to_length_questionable_behavior":
        "the test says it marks questionable behaviour and should fail once fixed: "
        "TruncateToLength np.resize-grows (1, 21, 1) to (1, 4, 6) by repeating values",
}

# Trax test id -> the documented difference (docs/differences.md) it fails on; counted as failed.
ON_PURPOSE: dict[str, str] = {
    "trax/layers/core_test.py::EmbeddingTest::test_large_inputs_clip_to_upper_bound":
        "out-of-range ids raise when eager instead of clamping (differences.md, Out-of-range ids)",
    "trax/layers/core_test.py::EmbeddingTest::test_negative_inputs_clip_to_zero":
        "out-of-range ids raise when eager instead of clamping (differences.md, Out-of-range ids)",
    "trax/supervised/training_test.py::TrainingTest::test_restores_history":
        "a checkpoint is written after its step's eval, so it holds step 4's history too "
        "(differences.md, Evaluation)",
    "trax/supervised/training_test.py::TrainingTest::test_restores_memory_efficient_from_standard":
        "use_memory_efficient_trainer is refused (differences.md)",
    "trax/supervised/training_test.py::TrainingTest::test_restores_step_sharded":
        "use_memory_efficient_trainer is refused (differences.md)",
    "trax/supervised/training_test.py::TrainingTest::test_restores_step_sharded_bfloat16":
        "use_memory_efficient_trainer is refused (differences.md)",
}


# ---------------------------------------------------------------------------- recording


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _root(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def _frames(tb, test_file: str) -> dict:
    where = {}
    while tb is not None:
        filename, line = tb.tb_frame.f_code.co_filename, tb.tb_lineno
        if f"{os.sep}retrax{os.sep}" in filename:
            where["retrax"] = f"{filename.split(os.sep + 'retrax' + os.sep, 1)[1]}:{line}"
        if os.path.abspath(filename) == test_file:
            where["test"] = line
        tb = tb.tb_next
    return where


def params_of(test_function) -> str:
    """The parameters of an absl-parameterized test case, as absl prints them ("" if none)."""
    params = str(getattr(test_function, "__x_params_repr__", "") or "")
    doc = str(getattr(test_function, "__doc__", "") or "")
    if not params and doc.startswith(f"{getattr(test_function, '__name__', '?')}("):
        params = doc  # absl's named parameters: "name(params)"
    return params


def needs_tensorflow(test_function) -> bool:
    """Whether a test's parameters or its body (not its decorators) name TensorFlow."""
    return bool(TF_PATTERN.search(params_of(test_function))
                or TF_PATTERN.search(_body_source(test_function)))


def _body_source(function) -> str:
    """A test function's source without its decorators (they name every parameter case)."""
    try:
        lines = inspect.getsource(function).splitlines()
    except (TypeError, OSError):
        return ""
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("def ")), 0)
    return "\n".join(lines[start:])


class OutcomeRecorder:
    """A pytest plugin writing one JSON line per collected file, test phase and session end."""

    def __init__(self, path: str, shim: Shim | None = None):
        self.stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed at session end)
        self.shim = shim

    def _write(self, record: dict) -> None:
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()

    def pytest_collectreport(self, report):
        if report.failed:
            self._write({"kind": "collect_error", "nodeid": report.nodeid,
                         "message": str(report.longrepr).strip().splitlines()[-1]})

    def pytest_collection_finish(self, session):
        self._write({"kind": "collected", "nodeids": [item.nodeid for item in session.items]})

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item, call):
        report = yield
        record = {"kind": "phase", "nodeid": item.nodeid, "when": call.when,
                  "outcome": report.outcome}
        if call.when == "setup":
            obj = getattr(item, "obj", None)
            record["params"] = params_of(obj)
            record["tf_static"] = needs_tensorflow(obj)
        if call.excinfo is not None:
            exc, root = call.excinfo.value, _root(call.excinfo.value)
            record.update(
                exc_type=type(exc).__name__, message=_first_line(exc),
                root_type=type(root).__name__, root_message=_first_line(root),
                where=_frames(call.excinfo.tb, os.path.abspath(str(item.path))))
        self._write(record)
        return report

    def pytest_sessionfinish(self, session):
        if self.shim is not None:
            self._write({"kind": "placeholders", "names": sorted(set(self.shim.finder.placeholders))})
        self.stream.close()


CONFTEST = '''\
import os, sys
sys.path.insert(0, os.path.dirname(__file__))  # a copy of the harness: edits to it do not leak in
import trax_conformance as _harness

_shim = _harness.install_shim(lenient=True)


def pytest_configure(config):
    config.pluginmanager.register(
        _harness.OutcomeRecorder(os.environ[_harness.RECORD_ENV], _shim), "trax-conformance")
'''


# ---------------------------------------------------------------------------- extraction


def _git(mirror: str, *args: str, binary: bool = False):
    out = subprocess.run(["git", "-C", mirror, *args], capture_output=True, check=False)
    if out.returncode != 0:
        return None
    return out.stdout if binary else out.stdout.decode()


def local_dir(trax_dir: str) -> str:
    """``trax/layers`` -> ``trax_layers``; ``trax`` -> ``trax_top``."""
    return "trax_top" if trax_dir == "trax" else trax_dir.replace("/", "_")


def extract(mirror: str, tag: str, dest: str, files: list[str]) -> dict:
    """Writes the test files present at ``tag`` (and their data) under ``dest``."""
    found, missing, data_missing = [], [], []
    for path in files:
        text = _git(mirror, "show", f"{tag}:{path}")
        if text is None:
            missing.append(path)
            continue
        trax_dir, name = path.rsplit("/", 1)
        out_dir = os.path.join(dest, local_dir(trax_dir))
        os.makedirs(out_dir, exist_ok=True)
        open(os.path.join(out_dir, "__init__.py"), "a").close()
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.write(text)
        found.append(path)
        wanted = []
        if "_TESTDATA" in text:
            wanted.append(f"{trax_dir}/testdata")
        if re.search(r"['\"][\w\-]+\.gin['\"]", text):
            wanted.append(f"{trax_dir}/configs")  # gin files include one another
        for prefix in wanted:
            listing = _git(mirror, "ls-tree", "-r", "--name-only", tag, "--", prefix) or ""
            for blob in listing.split():
                data = _git(mirror, "show", f"{tag}:{blob}", binary=True)
                if data is None:
                    data_missing.append(blob)
                    continue
                target = os.path.join(out_dir, os.path.relpath(blob, trax_dir))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as f:
                    f.write(data)
    return {"found": found, "missing": missing, "data_missing": sorted(set(data_missing))}


def static_count(path: str) -> int:
    """Tests in a file that pytest could not import (parameterized cases counted when literal)."""
    count = 0
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
            cases = 1
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") in (
                        "parameters", "named_parameters"):
                    if not any(isinstance(a, ast.Starred) for a in dec.args) and len(dec.args) > 1:
                        cases *= len(dec.args)
                    elif len(dec.args) == 1 and isinstance(dec.args[0], (ast.List, ast.Tuple)):
                        cases *= len(dec.args[0].elts)
            count += cases
    return count


# ---------------------------------------------------------------------------- running


def run_file(root: str, local_path: str, timeout: float, repo: str) -> tuple[list[dict], str]:
    """Runs pytest on one extracted file; returns its records and how it ended."""
    record = os.path.join(root, local_path.replace("/", "__") + ".jsonl")
    if os.path.exists(record):
        os.remove(record)
    env = dict(os.environ, **{RECORD_ENV: record, "JAX_PLATFORMS": "cpu",
                              "TF_CPP_MIN_LOG_LEVEL": "3"})
    env["PYTHONPATH"] = os.pathsep.join([repo] + [p for p in [env.get("PYTHONPATH")] if p])
    env.pop("PYTEST_ADDOPTS", None)
    # Options live in root/pytest.ini: sys.argv stays [pytest, file], as when Trax ran its
    # tests, because trax.test_utils.ensure_flag parses sys.argv with absl's flags.
    cmd = [sys.executable, "-m", "pytest", local_path]
    log = os.path.join(root, local_path.replace("/", "__") + ".log")
    with open(log, "w", encoding="utf-8") as out:
        try:
            proc = subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=timeout, check=False)
            ended = f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            ended = f"timed out after {timeout:.0f} s"
    records = []
    if os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    return records, ended


def module_name(trax_path: str) -> str:
    return trax_path[: -len("_test.py")].replace("/", ".")


def cause_key(test: dict) -> str:
    """A grouping key from a failed test's root exception."""
    if test.get("excluded"):
        return test["excluded"]
    kind, msg = test.get("root_type", ""), test.get("root_message", "")
    patterns = [
        (r"module '([\w.]+)' has no attribute '(\w+)'", "missing name {1} in {0}"),
        (r"cannot import name '(\w+)' from '([\w.]+)'", "missing name {0} in {1}"),
        (r"type object '(\w+)' has no attribute '(\w+)'", "missing attribute {1} on class {0}"),
        (r"'(\w+)' object has no attribute '(\w+)'", "missing attribute {1} on {0} objects"),
        (r"(\w[\w.]*)\(\) got an unexpected keyword argument '(\w+)'", "{0}() has no argument {1}"),
        (r"retrax has no module '([\w.]+)'", "missing module {0}"),
        (r"retrax has no '([\w.]+)'", "missing name (or module) {0}"),
        (r"test dependency '(\w+)' is not installed", "test dependency {0} not installed"),
    ]
    for pattern, template in patterns:
        m = re.search(pattern, msg)
        if m:
            return template.format(*m.groups())
    if kind in ("", "AssertionError"):
        return "AssertionError (different values or behaviour)"
    numbers = re.compile(r"[0-9]+(\.[0-9]+)?")
    return f"{kind}: {numbers.sub('N', msg)[:160]}"


def summarize(trax_path: str, local_path: str, root: str, records: list[dict], ended: str) -> list[dict]:
    """One dict per test of a file: outcome, exclusion and the exception's details."""
    prefix = local_path.rsplit("/", 1)[0] + "/"
    collected = next((r["nodeids"] for r in records if r["kind"] == "collected"), [])
    errors = [r for r in records if r["kind"] == "collect_error"]
    phases: dict[str, list[dict]] = {}
    for r in records:
        if r["kind"] == "phase":
            phases.setdefault(r["nodeid"], []).append(r)
    tests = []
    if not collected and errors:
        n = static_count(os.path.join(root, local_path))
        for i in range(n):
            tests.append({"id": f"{trax_path}::<collection error {i + 1}/{n}>",
                          "outcome": "error", "root_type": "CollectionError",
                          "root_message": errors[0]["message"], "message": errors[0]["message"]})
    for nodeid in collected:
        test = {"id": trax_path.rsplit("/", 1)[0] + "/" + nodeid[len(prefix):]}
        ph = {p["when"]: p for p in phases.get(nodeid, [])}
        setup, call, teardown = ph.get("setup"), ph.get("call"), ph.get("teardown")
        bad = None
        if not ph:
            test["outcome"], test["root_type"] = "error", "NotRun"
            test["root_message"] = test["message"] = f"not run: the file's pytest {ended}"
        elif setup and setup["outcome"] == "failed":
            test["outcome"], bad = "error", setup
        elif setup and setup["outcome"] == "skipped" or call and call["outcome"] == "skipped":
            test["outcome"], bad = "skipped", setup if setup["outcome"] == "skipped" else call
        elif call and call["outcome"] == "failed":
            test["outcome"], bad = "failed", call
        elif teardown and teardown["outcome"] == "failed":
            test["outcome"], bad = "error", teardown
        elif call:
            test["outcome"] = "passed"
        else:
            test["outcome"], test["root_type"] = "error", "NotRun"
            test["root_message"] = test["message"] = f"did not finish: the file's pytest {ended}"
        if bad is not None:
            for key in ("exc_type", "message", "root_type", "root_message", "where"):
                if key in bad:
                    test[key] = bad[key]
        if setup:
            test["params"] = setup.get("params", "")
        tf_runtime = test["outcome"] in ("failed", "error") and (
            test.get("root_type") == "NeedsTensorFlowError" or test.get("exc_type") == "NeedsTensorFlowError"
            or TF_PATTERN.search(test.get("message", "") + " " + test.get("root_message", "")))
        if (setup and setup.get("tf_static")) or tf_runtime:
            test["excluded"] = "needs TensorFlow"
        if test["id"] in TRAX_BUG_PINS:
            test["excluded"] = "pins a Trax bug: " + TRAX_BUG_PINS[test["id"]]
        if test["id"] in ON_PURPOSE and test["outcome"] in ("failed", "error"):
            test["on_purpose"] = ON_PURPOSE[test["id"]]
        tests.append(test)
    for t in tests:
        t["module"] = module_name(trax_path)
        if t["outcome"] in ("failed", "error") or t.get("excluded"):
            t["cause"] = cause_key(t)
    return tests


def table(tests: list[dict], modules: list[str]) -> list[dict]:
    rows = []
    for name in modules + ["TOTAL"]:
        mine = [t for t in tests if name in ("TOTAL", t["module"])]
        kept = [t for t in mine if not t.get("excluded")]
        row = {"module": name, "tests": len(mine),
               "excluded_tf": sum(t.get("excluded") == "needs TensorFlow" for t in mine),
               "excluded_bug": sum(t.get("excluded", "").startswith("pins") for t in mine)}
        for outcome in ("passed", "failed", "error", "skipped"):
            row[outcome] = sum(t["outcome"] == outcome for t in kept)
        row["on_purpose"] = sum("on_purpose" in t for t in kept)
        counted = row["passed"] + row["failed"] + row["error"]
        row["share"] = row["passed"] / counted if counted else None
        rows.append(row)
    return rows


def print_table(rows: list[dict]) -> None:
    head = ("module", "tests", "excl TF", "excl bug", "passed", "failed", "errors", "skipped",
            "pass share", "on purpose")
    print(f"{head[0]:<28}" + "".join(f"{h:>11}" for h in head[1:]))
    for r in rows:
        share = "-" if r["share"] is None else f"{100 * r['share']:.1f}%"
        cells = (r["tests"], r["excluded_tf"], r["excluded_bug"], r["passed"], r["failed"],
                 r["error"], r["skipped"], share, r["on_purpose"])
        print(f"{r['module']:<28}" + "".join(f"{c:>11}" for c in cells))


def print_failures(tests: list[dict]) -> None:
    groups: dict[str, list[dict]] = {}
    for t in tests:
        if t["outcome"] in ("failed", "error") and not t.get("excluded"):
            groups.setdefault(t["cause"], []).append(t)
    print(f"\nFailures by cause ({sum(map(len, groups.values()))} tests, {len(groups)} causes):")
    for cause, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        print(f"\n[{len(members)}] {cause}")
        for t in members:
            where = t.get("where", {}).get("retrax", "")
            print(f"  {t['id']}: {t.get('root_type', '')}: {t.get('root_message', '')[:200]}"
                  + (f"  @ retrax/{where}" if where else "")
                  + (f"  [on purpose: {t['on_purpose']}]" if "on_purpose" in t else ""))


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirror", default=DEFAULT_MIRROR, help="git mirror of google/trax")
    parser.add_argument("--tag", default="v1.4.1")
    parser.add_argument("--out", default="/tmp/trax_conformance.json", help="JSON results")
    parser.add_argument("--repo", default=os.path.dirname(here), help="retrax checkout to test")
    parser.add_argument("--ref", default=None,
                        help="test this git ref of --repo (exported with git archive) instead of "
                             "its working tree, e.g. HEAD while others edit the tree")
    parser.add_argument("--only", nargs="*", default=None, help="run only files containing these")
    parser.add_argument("--keep", default=None, help="extract into this folder and keep it")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds per test file")
    parser.add_argument("--quiet", action="store_true", help="no failure list")
    args = parser.parse_args(argv)
    files = [f for f in TEST_FILES if not args.only or any(s in f for s in args.only)]
    root = args.keep or tempfile.mkdtemp(prefix="trax_conformance_")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "pytest.ini"), "w", encoding="utf-8") as f:
        f.write("[pytest]\naddopts = -q --tb=short -p no:cacheprovider -p no:xdist\n"
                "filterwarnings =\n    ignore::DeprecationWarning\n")
    with open(os.path.join(root, "conftest.py"), "w", encoding="utf-8") as f:
        f.write(CONFTEST)
    for name in ("trax_conformance.py", "trax_conformance_shim.py"):
        shutil.copyfile(os.path.join(here, name), os.path.join(root, name))
    repo = args.repo
    head = (_git(args.repo, "rev-parse", args.ref or "HEAD") or "").strip()  # before anyone commits
    if args.ref:
        repo = os.path.join(root, "retrax_at_ref")
        os.makedirs(repo, exist_ok=True)
        archive = subprocess.run(["git", "-C", args.repo, "archive", head, "retrax"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", repo], input=archive, check=True)
    found = extract(args.mirror, args.tag, root, files)
    if not found["found"]:
        print(f"no test files found at {args.tag} in {args.mirror}", file=sys.stderr)
        return 2
    tests, runs, placeholders = [], {}, set()
    for path in found["found"]:
        trax_dir, name = path.rsplit("/", 1)
        local = f"{local_dir(trax_dir)}/{name}"
        start = time.time()
        records, ended = run_file(root, local, args.timeout, repo)
        mine = summarize(path, local, root, records, ended)
        runs[path] = {"ended": ended, "seconds": round(time.time() - start, 1), "tests": len(mine)}
        placeholders.update(n for r in records if r["kind"] == "placeholders" for n in r["names"])
        print(f"{path}: {len(mine)} tests, {ended}, {runs[path]['seconds']} s", file=sys.stderr)
        tests += mine
    modules = [module_name(p) for p in found["found"]]
    rows = table(tests, modules)
    print_table(rows)
    if not args.quiet:
        print_failures(tests)
    tested = head + ("" if args.ref else " + working tree")
    result = {"tag": args.tag, "mirror": args.mirror, "retrax": tested,
              "files": found, "runs": runs, "placeholders": sorted(placeholders),
              "table": rows, "tests": tests, "extracted_to": root}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(f"\nJSON: {args.out}; extracted tree and logs: {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
