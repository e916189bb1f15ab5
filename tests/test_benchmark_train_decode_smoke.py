"""benchmarks/train.py, decode.py (and rnn.py's rounds): median ratios with their range, load.

The fast tests exercise the parents' pure functions on made-up child
results; the ``bench`` ones run the scripts end to end with the Flax peer
(``python -m pytest -m bench``; they need flax and ../shared/peer_bench).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _load(name):
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH,
                                                                                  f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        while BENCH in sys.path:        # the scripts put their folder first on the path
            sys.path.remove(BENCH)


train = _load("train")
decode = _load("decode")
common = _load("common")
rnn = _load("rnn")


def _retrax(raw, loop, first=2.0, rss=500.0):
    return dict(raw_step=dict(n=3, median=raw, min=raw, max=raw), pipelined_step_s=raw,
                loop_step=dict(n=3, median=loop, min=loop, max=loop), first_step_s=first,
                peak_rss_mib=rss)


def _flax(step, first=3.0, rss=600.0):
    return dict(step_s_median=step, step_s_min=step, step_s_max=step, timed_steps=3,
                pipelined_step_s=step, first_step_s=first, peak_rss_mib=rss)


def test_train_ratios_are_the_median_of_each_rounds_own_ratio():
    # Peer step / retrax step per round: 2.0, 1.0, 1.5 (throughput ratios).
    rounds = [dict(retrax=_retrax(0.1, 0.2), flax=_flax(0.2)),
              dict(retrax=_retrax(0.3, 0.3), flax=_flax(0.3)),
              dict(retrax=_retrax(0.2, 0.4), flax=_flax(0.3)),
              dict(retrax=None, flax=_flax(0.3))]             # a failed round is skipped
    out = train.round_ratios("S", rounds, None)
    assert out["rounds_compared"] == 3
    spread = out["ratio_spread"]["raw_throughput_ratio"]
    assert spread["values"] == pytest.approx([2.0, 1.0, 1.5])
    assert (spread["median"], spread["min"], spread["max"]) == pytest.approx((1.5, 1.0, 2.0))
    assert out["raw_throughput_ratio"] == pytest.approx(1.5)
    # Loop: 0.2/0.2, 0.3/0.3, 0.3/0.4 -> median 1.0; step-time ratios are the inverses.
    assert out["loop_throughput_ratio"] == pytest.approx(1.0)
    assert out["ratio_spread"]["raw_step_time_ratio"]["values"] == pytest.approx(
        [0.5, 1.0, 2 / 3])
    assert common.fmt_ratio_range(spread) == "1.50x (1.00-2.00x)"
    assert common.fmt_ratio_range(dict(n=1, median=1.234, min=1.234, max=1.234)) == "1.23x"


def test_train_targets_use_the_median_and_show_the_range():
    rounds = [dict(retrax=_retrax(0.1, 0.1), flax=_flax(0.12)),
              dict(retrax=_retrax(0.1, 0.1), flax=_flax(0.10)),
              dict(retrax=_retrax(0.1, 0.1), flax=_flax(0.13))]
    summary = train.summarize_config("M", rounds[0]["retrax"], rounds[0]["flax"], None, None)
    summary.update(train.round_ratios("M", rounds, None))
    rows = {t: (m, ok) for t, m, ok in train.targets({"M": summary}, None)}
    measured, met = rows["train M: >= 1.10x Flax throughput (median of rounds)"]
    assert measured == "1.20x (1.00-1.30x)" and met


def test_load_average_is_a_rounded_triple():
    load = common.loadavg()
    assert load is None or (len(load) == 3 and all(round(x, 2) == x for x in load))


def _decode_round(g1, f1, g8, f8):
    return dict(retrax={"greedy_b1": dict(tokens_per_s=g1), "greedy_b8": dict(tokens_per_s=g8)},
                flax={"kv_cache_b1": dict(tokens_per_s=f1), "kv_cache_b8": dict(tokens_per_s=f8)})


def test_decode_ratios_per_batch_over_rounds_and_the_targets():
    rounds = [_decode_round(130, 100, 800, 1000), _decode_round(100, 100, 1300, 1000),
              _decode_round(150, 100, 1250, 1000), dict(retrax={}, flax=None)]
    spread = decode.round_ratios(rounds)
    assert spread["greedy_b1"]["values"] == pytest.approx([1.3, 1.0, 1.5])
    assert spread["greedy_b1"]["median"] == pytest.approx(1.3)
    assert spread["greedy_b8"]["median"] == pytest.approx(1.25)
    result = dict(retrax=rounds[0]["retrax"], flax=rounds[0]["flax"], methods=["greedy"],
                  ratio_spread=spread)
    targets = {t["target"]: t for t in decode.compute_targets(result)}
    b1 = targets["greedy M batch 1: >= 1.2x Flax KV-cache loop (median of rounds)"]
    b8 = targets["greedy M batch 8: >= 1.2x Flax KV-cache loop (median of rounds)"]
    assert (b1["measured"], b1["met"]) == ("1.30x (1.00-1.50x)", True)
    assert (b8["measured"], b8["met"]) == ("1.25x (0.80-1.30x)", True)


def test_rnn_rounds_give_the_median_of_each_rounds_ratio_against_each_peer():
    def rx(step):
        s = dict(n=1, median=step, min=step, max=step)
        return dict(raw_step=s, loop_step=s, first_step_s=2.0, peak_rss_mib=1.0)

    def fx(step):
        return dict(step=dict(n=1, median=step, min=step, max=step), first_step_s=3.0,
                    peak_rss_mib=1.0)

    spec = dict(rnn.WORKLOADS["resnet"])
    rounds = [dict(retrax=rx(0.1), flax=fx(0.12)), dict(retrax=rx(0.1), flax=fx(0.10)),
              dict(retrax=rx(0.1), flax=fx(0.13))]
    summary = rnn.summarize_workload("resnet", spec, rounds[1])     # the single round: 1.0x
    rnn.apply_round_ratios(summary, "resnet", spec, rounds)
    flax = summary["entries"]["flax"]
    assert flax["retrax_throughput_ratio"] == pytest.approx(1.2)
    assert flax["ratio_spread"]["retrax_throughput_ratio"]["values"] == pytest.approx(
        [1.2, 1.0, 1.3])
    ((target, measured, met),) = rnn.targets({"resnet": summary})
    assert measured == "1.20x (1.00-1.30x) (vs Flax NNX jax.jit)" and met


def test_default_rounds_are_five():
    for script in ("train.py", "decode.py"):
        out = subprocess.run([sys.executable, os.path.join(BENCH, script), "--help"],
                             capture_output=True, text=True, timeout=60).stdout
        assert "(default 5)" in " ".join(out.split())


@pytest.mark.bench  # Selected only with -m bench: it needs flax and ../shared/peer_bench.
def test_train_end_to_end_with_the_peer(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "train.py"), "--configs", "S", "--quick",
         "--rounds", "2", "--no-quickstart", "--peer-nnx-jit", "", "--out", str(out)],
        capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rounds = res["configs"]["S"]["rounds"]
    assert len(rounds) == 2 and all(len(rd["loadavg_start"]) == 3 for rd in rounds)
    spread = res["summary"]["S"]["ratio_spread"]["raw_throughput_ratio"]
    assert spread["n"] == 2 and spread["min"] <= spread["median"] <= spread["max"]
    assert len(res["machine"]["loadavg_start"]) == 3 and len(res["loadavg_end"]) == 3
    assert "Rounds (alternating" in proc.stdout and "load before" in proc.stdout


@pytest.mark.bench
def test_decode_end_to_end_with_the_peer(tmp_path):
    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "decode.py"), "--quick", "--rounds", "2",
         "--repeats", "1", "--new-tokens", "16", "--methods", "greedy,top_k",
         "--out", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res["rounds"]) == 2
    for b in (1, 8):
        assert res["ratio_spread"][f"greedy_b{b}"]["n"] == 2
    assert "Rounds (alternating" in proc.stdout
