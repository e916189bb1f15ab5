"""Loads the scripts of ``benchmarks/`` as modules, for the tests of their pure functions."""

from __future__ import annotations

import importlib.util
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def load(name: str):
    """``benchmarks/<name>.py`` as a module (the scripts' own folder is not left on the path)."""
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}",
                                                      os.path.join(BENCH, f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        while BENCH in sys.path:        # the scripts put their folder first on the path
            sys.path.remove(BENCH)
