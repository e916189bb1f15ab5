"""retrax's imports go downward only, form no cycle, and use no private name of another module.

The checks are ``scripts/check_imports.py`` (read its docstring for the rules
and for the tiers a new module must be placed in); this test runs it on the
repository and on a small package made to break every rule.
"""

from __future__ import annotations

import runpy
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = runpy.run_path(str(ROOT / "scripts" / "check_imports.py"))


@pytest.fixture(scope="module")
def report():
    return CHECKER["check"](ROOT)


def test_no_import_cycles(report):
    cycles = [" -> ".join(CHECKER["one_cycle"](c, report.edges)) for c in report.cycles]
    assert not cycles, cycles


def test_imports_go_downward_only(report):
    assert not report.upward, report.upward
    assert not report.untiered, f"give these modules a tier in scripts/check_imports.py: " \
                                f"{report.untiered}"


def test_no_private_names_across_modules(report):
    assert not report.private, "\n".join(report.private)


def test_layers_import_neither_models_nor_checkpoints(report):
    above = ("retrax.models", "retrax.checkpoints", "retrax.pretrained", "retrax.supervised")
    wrong = [(m, d) for m, deps in report.edges.items() if m.startswith("retrax.layers")
             for d in deps if d.startswith(above) or d == "retrax"]
    assert not wrong, wrong


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_the_checker_finds_cycles_upward_imports_and_private_names(tmp_path):
    _write(tmp_path, {
        "retrax/__init__.py": "",
        "retrax/layers/__init__.py": "",
        "retrax/layers/base.py": """
            class Layer:
                def __init__(self):
                    self._initialized = False

            def _pack(items):
                return items

            def save(layer):
                from retrax import checkpoints  # lazy, still an upward edge
                return checkpoints
            """,
        "retrax/checkpoints.py": """
            from retrax import models
            from retrax.layers.base import _pack

            def load(layer):
                return layer._initialized, getattr(layer, "_initialized")
            """,
        "retrax/models/__init__.py": "from retrax.layers import base\n",
        "retrax/data/__init__.py": "",
        "retrax/data/_state.py": "",
        "retrax/data/inputs.py": "from retrax.data import _state\n",  # its own package: fine
        "retrax/shapes.py": "from retrax.data import _state\n",
    })
    found = CHECKER["check"](tmp_path)
    assert found.cycles == [["retrax.checkpoints", "retrax.layers.base", "retrax.models"]]
    assert found.upward == ["retrax.layers.base (layers) imports retrax.checkpoints (checkpoints)",
                            "retrax.shapes (leaves) imports retrax.data._state "
                            "(models, optimizers, data)"]
    private = "\n".join(found.private)
    assert "imports the private name _pack from retrax.layers.base" in private
    assert private.count("layer._initialized, private to another module") == 2
    assert "private module retrax.data._state from outside retrax.data" in private
    assert "inputs.py" not in private
