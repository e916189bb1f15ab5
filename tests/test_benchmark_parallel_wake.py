"""benchmarks/parallel_wake.py: the product's cost is the loop's difference; the report's parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from benchmark_modules import BENCH
from benchmark_modules import load as _load

parallel_wake = _load("parallel_wake")


def test_the_products_cost_is_the_difference_of_the_two_loops():
    row = parallel_wake.product_after_chain(2, rounds=1)
    assert row["chain"] == 2
    assert row["step_s"] > 0 and row["step_without_s"] > 0
    assert row["product_s"] == row["step_s"] - row["step_without_s"]


def test_rounds_below_one_are_refused(capsys):
    with pytest.raises(SystemExit):
        parallel_wake.main(["--rounds", "0"])
    assert "--rounds must be at least 1; got 0" in capsys.readouterr().err


def test_a_failed_one_core_child_is_reported_and_the_rest_kept(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(parallel_wake, "wake_latency", lambda gap, cores, allowed: dict(
        n=200, median=gap + 1e-5, min=1e-5, max=gap + 2e-5))
    monkeypatch.setattr(parallel_wake, "product_after_chain", lambda chain, rounds: dict(
        chain=chain, step_s=3e-5, step_without_s=1e-5, product_s=2e-5))
    monkeypatch.setattr(parallel_wake.common, "run_child", lambda argv, timeout: (None, "boom"))
    out = tmp_path / "wake.json"
    assert parallel_wake.main(["--rounds", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["one_core_error"] == "boom" and res["product_after_chain_one_core"] is None
    assert [row["product_s"] for row in res["product_after_chain"]] == [2e-5] * len(
        parallel_wake.CHAINS)
    captured = capsys.readouterr()
    assert "one-core child failed: boom" in captured.err
    assert "| 40 | 30.0 us   | 10.0 us             | 20.0 us     | -" in captured.out


def _run(tmp_path, core=None):
    """The script in a fresh process (pinned to ``core`` first, if given); (stdout, JSON)."""
    out = tmp_path / "wake.json"
    script = os.path.join(BENCH, "parallel_wake.py")
    pin = "" if core is None else f"os.sched_setaffinity(0, {{{core}}}); "
    code = (f"import os, runpy, sys; {pin}sys.argv = [{script!r}, '--rounds', '1', "
            f"'--out', {str(out)!r}]; runpy.run_path({script!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_end_to_end_both_parts_and_the_one_core_child(tmp_path):
    stdout, res = _run(tmp_path)
    chains = [row["chain"] for row in res["product_after_chain"]]
    assert chains == list(parallel_wake.CHAINS)
    assert [row["chain"] for row in res["product_after_chain_one_core"]] == chains
    if len(os.sched_getaffinity(0)) >= 2:  # the project's machines: part 1 runs
        assert [row["gap_s"] for row in res["wake"]] == list(parallel_wake.GAPS_S)
        assert all(row["n"] == 200 and 0 < row["min"] <= row["median"] <= row["max"]
                   for row in res["wake"])
    else:  # one core: said so, and no numbers
        assert "wake" not in res and "1. Thread wake-up: skipped" in stdout
    assert "1. Thread wake-up" in stdout and "the product, one core" in stdout
    assert len(res["load_before"]) == 3 and len(res["load_after"]) == 3


@pytest.mark.slow
def test_one_core_skips_the_wake_up_part(tmp_path):
    core = min(os.sched_getaffinity(0))
    stdout, res = _run(tmp_path, core=core)
    assert "wake" not in res and res["machine"]["cores_allowed"] == 1
    assert "1. Thread wake-up: skipped" in stdout
    assert len(res["product_after_chain_one_core"]) == len(parallel_wake.CHAINS)
