"""benchmarks/rnn.py and rnn_peers.py: data, FLOPs, timing protocol, ratios, targets.

The fast tests exercise the parent's pure functions (no child process); the
``slow`` ones run the script end to end on toy sizes (``--tiny --quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from benchmark_modules import BENCH
from benchmark_modules import load as _load

rnn = _load("rnn")
peers = _load("rnn_peers")

LM = dict(kind="lm", model="RNNLM", cell="lstm", vocab=7, d_model=2, n_layers=1, batch=3,
          seq=5, dropout=0.1)
IMG = dict(kind="resnet", model="WideResnet", n_blocks=1, widen_factor=1, n_classes=4,
           batch=2, image=8, channels=3)


def _args(**kw):
    base = dict(workloads="lstm,gru,resnet", gru_layers=1, resnet_blocks=3, resnet_widen=1,
                tiny=False, no_peer=False, peers="flax,torch", peer_nnx_jit=False,
                torch_compile=False, torch_threads=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_lm_batches_are_seeded_tokens_with_targets_equal_inputs():
    a, b = peers.make_batches(LM), peers.make_batches(LM)
    assert len(a) == peers.N_BATCHES == 4
    for (x, y, w), (x2, _, _) in zip(a, b):
        assert x.shape == (3, 5) and x.dtype == np.int32
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, x2)
        assert x.min() >= 1 and x.max() < 7      # id 0 is the shift-right pad
        np.testing.assert_array_equal(w, np.ones((3, 5), np.float32))
    assert not np.array_equal(a[0][0], a[1][0])


def test_image_batches_have_labels_per_image():
    x, y, w = peers.make_batches(IMG)[0]
    assert x.shape == (2, 8, 8, 3) and x.dtype == np.float32
    assert y.shape == (2,) and y.dtype == np.int32 and 0 <= y.min() and y.max() < 4
    np.testing.assert_array_equal(w, np.ones(2, np.float32))
    assert peers.items_per_step(IMG) == 2 and peers.items_per_step(LM) == 15


def test_lm_flops_by_hand():
    # LSTM: (D + D) * 4 gates * D = 2*2*4*2 = 32, dense 2*7 = 14 -> 46; x 6 B T = 6*15.
    assert peers.lm_train_flops(LM) == 6 * 46 * 15
    gru = dict(LM, cell="gru", n_layers=2)      # 2 * (2*2*3*2) + 14 = 62
    assert peers.lm_train_flops(gru) == 6 * 62 * 15


def test_time_steps_stops_each_clock_after_blocking(monkeypatch):
    clock = [0.0]
    calls = []

    def step(i):
        calls.append(("step", i))
        return i

    def block(out):              # the work "finishes" only when waited for
        clock[0] += 1.0 + out
        calls.append(("block", out))
        return out * 10

    monkeypatch.setattr(peers, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    res = peers.time_steps(step, block, warm=2, timed=3, pipelined=4)
    # Steps 0, 1 warm; 2, 3, 4 timed (1 + i seconds each); 5..8 pipelined, one block.
    assert res["step"] == dict(n=3, median=4.0, min=3.0, max=5.0)
    assert res["pipelined_step_s"] == pytest.approx((1.0 + 8) / 4)
    assert res["last"] == 80
    assert [c for c in calls if c[0] == "step"] == [("step", i) for i in range(9)]
    assert calls[-2:] == [("step", 8), ("block", 8)]


def _run(median, first=2.0, rss=500.0, pipelined=None):
    return dict(step=dict(n=3, median=median, min=median, max=median), first_step_s=first,
                peak_rss_mib=rss, pipelined_step_s=pipelined)


def test_summary_ratios_and_targets():
    rx = dict(raw_step=dict(n=3, median=1.0, min=0.9, max=1.1), loop_step=dict(
        n=2, median=1.2, min=1.2, max=1.2), first_step_s=4.0, peak_rss_mib=250.0)
    runs = dict(retrax=rx, flax=_run(1.5), flax_optimized=_run(1.25, first=8.0),
                torch=_run(0.5, rss=1000.0))
    s = rnn.summarize_workload("lstm", LM, runs)
    e = s["entries"]
    assert e["retrax_raw"]["items_per_s"] == 15.0 and e["retrax_loop"]["step_s"] == 1.2
    assert e["flax"]["retrax_throughput_ratio"] == pytest.approx(1.5)
    assert e["flax_optimized"]["retrax_throughput_ratio"] == pytest.approx(1.25)
    assert e["flax_optimized"]["retrax_first_step_ratio"] == pytest.approx(0.5)
    assert e["torch"]["retrax_step_ratio"] == pytest.approx(2.0)
    assert e["torch"]["retrax_peak_rss_ratio"] == pytest.approx(0.25)
    assert e["torch"]["gflops"] == pytest.approx(peers.lm_train_flops(LM) / 0.5 / 1e9)
    (t_flax, m_flax, ok_flax), (t_torch, m_torch, ok_torch) = rnn.targets({"lstm": s})
    # Against the FASTEST Flax variant (OptimizedLSTMCell here), not the first one.
    assert "1.25x" in m_flax and "OptimizedLSTMCell" in m_flax and ok_flax is True
    assert "2.00x" in m_torch and ok_torch is False


def test_summary_without_retrax_has_no_ratios():
    s = rnn.summarize_workload("gru", dict(LM, cell="gru"),
                               dict(retrax=dict(skipped="no GRULM"), flax=_run(1.0)))
    assert list(s["entries"]) == ["flax"]
    assert "retrax_throughput_ratio" not in s["entries"]["flax"]
    assert rnn.targets({"gru": s}) == []


def test_peer_runs_per_workload():
    keys = lambda spec, **kw: [k for k, _ in rnn.peer_runs(spec, _args(**kw))]  # noqa: E731
    lstm, gru, res = (rnn.WORKLOADS[n] for n in ("lstm", "gru", "resnet"))
    assert keys(lstm) == ["flax", "flax_optimized", "torch"]
    assert keys(gru) == ["flax", "torch"]
    assert keys(res) == ["flax"]                          # no PyTorch ResNet peer
    assert keys(lstm, no_peer=True) == []
    assert keys(gru, peers="torch", torch_compile=True) == ["torch", "torch_compile"]
    assert keys(res, peer_nnx_jit=True) == ["flax", "flax_nnx_jit"]
    args = dict(rnn.peer_runs(gru, _args(torch_threads=1)))["torch"]
    assert args[-2:] == ["--threads", "1"]


def test_workload_specs_follow_flags():
    ap = argparse.ArgumentParser()
    specs = rnn.workload_specs(_args(gru_layers=2, resnet_blocks=2, resnet_widen=4), ap)
    assert specs["lstm"] == rnn.WORKLOADS["lstm"]
    assert specs["lstm"]["d_model"] == 512 and specs["lstm"]["batch"] == 32
    assert specs["gru"]["n_layers"] == 2
    assert (specs["resnet"]["n_blocks"], specs["resnet"]["widen_factor"]) == (2, 4)
    tiny = rnn.workload_specs(_args(workloads="gru", tiny=True), ap)
    assert list(tiny) == ["gru"] and tiny["gru"]["d_model"] == 16
    with pytest.raises(SystemExit):
        rnn.workload_specs(_args(workloads="lstm,transformer"), ap)


def _bench(tmp_path, *argv):
    out = tmp_path / "rnn.json"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "rnn.py"), "--tiny", "--quick",
                           "--out", str(out), *argv], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.slow
def test_end_to_end_retrax_only(tmp_path):
    res, stdout = _bench(tmp_path, "--workloads", "gru,resnet", "--no-peer")
    assert res["errors"] == {} and res["skipped"] == {}
    for name in ("gru", "resnet"):
        e = res["summary"][name]["entries"]
        assert set(e) == {"retrax_raw", "retrax_loop"}
        assert e["retrax_raw"]["step_s"] > 0 and e["retrax_raw"]["first_step_s"] > 0
        assert np.isfinite(res["workloads"][name]["retrax"]["loss_last"])
    assert "retrax raw step" in stdout


@pytest.mark.bench  # Selected only with -m bench: it needs the bench extra (flax, torch).
def test_end_to_end_with_peers(tmp_path):
    res, stdout = _bench(tmp_path, "--workloads", "lstm,resnet")
    assert res["errors"] == {}
    e = res["summary"]["lstm"]["entries"]
    assert set(e) == {"retrax_raw", "retrax_loop", "flax", "flax_optimized", "torch"}
    assert set(res["summary"]["resnet"]["entries"]) == {"retrax_raw", "retrax_loop", "flax"}
    # The Flax models have exactly retrax's weights (PyTorch's RNNs carry a second bias).
    runs = res["workloads"]
    for name, key in (("lstm", "flax"), ("lstm", "flax_optimized"), ("resnet", "flax")):
        assert runs[name][key]["params_total"] == runs[name]["retrax"]["params_total"]
    # Same batches, similar initial loss: ln(vocab 32) for every implementation.
    for key in ("flax", "flax_optimized", "torch"):
        assert abs(res["workloads"]["lstm"][key]["loss_first"] - np.log(32)) < 0.1
    assert "aten::mkldnn_rnn_layer" in res["workloads"]["lstm"]["torch"]["torch_ops"]
    assert len(res["targets"]) == 3 and "target (issue 14)" in stdout
