"""benchmarks/train.py, decode.py (and rnn.py's rounds): median ratios with their range, load.

The fast tests exercise the parents' pure functions on made-up child
results; the slow ones run the scripts end to end, their peer replaced by a
recorded one (``RETRAX_PEER_DIR`` pointed at a stand-in ``bench_flax.py`` that
prints results the real Flax peer printed), so they need nothing outside the
repository.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from benchmark_modules import BENCH
from benchmark_modules import load as _load

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


# What the Flax peer (bench_flax.py of the peer suite) printed on this machine, trimmed; nothing is read from outside the repository.
_RECORDED_PEER = {
    "train": dict(config="S", variant="jit", batch=16, seq=10, params_total=93088,
                  params_matmul=25600, build_s=1.39, first_step_s=4.2, pipelined_step_s=0.00307,
                  warmup_steps=5, timed_steps=50, step_s_median=0.00379, step_s_min=0.00325,
                  step_s_max=0.00525, tokens_per_s=42173.7, loss_first=3.92, loss_last=3.32,
                  peak_rss_mib=466.0),
    "decode": dict(config="M", new_tokens=128, cache_len=128, peak_rss_mib=389.3, **{
        f"{kind}_b{b}": dict(first_call_s=0.8, gen_s_median=med, gen_s_min=med, gen_s_max=med,
                             tokens_per_s=128 * b / med, reps=3)
        for kind, b, med in [("kv_cache", 1, 0.0897), ("kv_cache", 8, 0.189),
                             ("no_cache", 1, 0.806), ("no_cache", 8, 5.08)]},
        cache_vs_naive_token_match_b1=1.0, cache_vs_naive_token_match_b8=1.0),
}


def _recorded_peer_env(tmp_path):
    """An environment whose ``RETRAX_PEER_DIR`` holds a stand-in peer replaying ``_RECORDED_PEER``."""
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "bench_flax.py").write_text(
        "import json, sys\n"
        f"RECORDED = {_RECORDED_PEER!r}\n"
        "kind = sys.argv[sys.argv.index('--child') + 1]\n"
        "print(json.dumps(RECORDED[kind]))\n")
    return dict(os.environ, RETRAX_PEER_DIR=str(peer))


@pytest.mark.slow
def test_train_end_to_end_with_a_recorded_peer(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "train.py"), "--configs", "S", "--quick",
         "--rounds", "2", "--no-quickstart", "--peer-nnx-jit", "", "--out", str(out)],
        capture_output=True, text=True, timeout=1800, env=_recorded_peer_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    rounds = res["configs"]["S"]["rounds"]
    assert len(rounds) == 2 and all(len(rd["loadavg_start"]) == 3 for rd in rounds)
    assert all(rd["flax"]["step_s_median"] == 0.00379 for rd in rounds)
    spread = res["summary"]["S"]["ratio_spread"]["raw_throughput_ratio"]
    assert spread["n"] == 2 and spread["min"] <= spread["median"] <= spread["max"]
    assert len(res["machine"]["loadavg_start"]) == 3 and len(res["loadavg_end"]) == 3
    assert "Rounds (alternating" in proc.stdout and "load before" in proc.stdout


@pytest.mark.slow
def test_decode_end_to_end_with_a_recorded_peer(tmp_path):
    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "decode.py"), "--quick", "--rounds", "2",
         "--repeats", "1", "--new-tokens", "16", "--methods", "greedy,top_k",
         "--out", str(out)], capture_output=True, text=True, timeout=1800,
        env=_recorded_peer_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert len(res["rounds"]) == 2
    for b in (1, 8):
        assert res["ratio_spread"][f"greedy_b{b}"]["n"] == 2
    assert "Rounds (alternating" in proc.stdout
