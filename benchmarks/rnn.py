#!/usr/bin/env python3
"""Recurrent and convolutional training benchmark: retrax vs Flax NNX and PyTorch, in one run.

Usage (from the repository root, in the venv; ``pip install -e .[bench]`` for
the peers)::

    python benchmarks/rnn.py                          # lstm, gru, resnet (about 5 min)
    python benchmarks/rnn.py --rounds 3               # on a shared machine (about 15 min)
    python benchmarks/rnn.py --quick                  # smoke test (about 2 min)
    python benchmarks/rnn.py --no-peer                # retrax only

Workloads (issue 14 item 5), each a train step (Adam 1e-3, eps 1e-8, no
weight decay = ``optax.adam(1e-3, eps=1e-8)`` = ``torch.optim.Adam(lr=1e-3,
eps=1e-8)``; weighted mean cross-entropy on the logits; 4 random batches
cycled, the same in every implementation):

* ``lstm``: ``trax.models.RNNLM(vocab_size=256, d_model=512, n_layers=2)``
  (dropout 0.1 after the embedding), batch 32 x 128 tokens; peers Flax NNX
  ``nnx.RNN`` over ``nnx.LSTMCell`` and over ``nnx.OptimizedLSTMCell``, and
  PyTorch ``nn.LSTM(num_layers=2, batch_first=True)`` (oneDNN on CPU);
* ``gru``: ``trax.models.GRULM(vocab_size=256, d_model=512)`` with Trax's
  default ``n_layers=1`` (``--gru-layers``), same batches; peers
  ``nnx.GRUCell`` and ``nn.GRU``;
* ``resnet``: ``trax.models.WideResnet(n_blocks=3, widen_factor=1,
  n_output_classes=10)`` (WRN-22-1, BatchNorm in train mode) on 32 images of
  32x32x3; peer an NNX WideResnet of the same blocks and widths.

The peers are in ``benchmarks/rnn_peers.py``. Each measurement is a child
process of its own (``rnn.py --child retrax``, ``rnn_peers.py --child
flax|torch``), run one after the other for a workload, so first-step compile
times and peak RSS belong to one implementation. retrax: the model and a
``TrainTask`` go into a real ``training.Loop`` (``output_dir=None``);
``first step`` is the first ``Loop.run(1)`` until the weights are ready (trace
+ compile + one step; retrax's persistent compilation cache is off in the
children unless ``--compile-cache``, so this is a cold compile as the peers'
is); ``Loop.run`` is per-step time of ``run(k)`` blocks; ``raw step`` is
the Loop's compiled step called directly with donated buffers, blocking on
the loss and new weights after each step: the peers' ``step`` measures the
same thing, so the ratios use it. Flax's step is ``jax.jit`` of a
functional ``nnx.split``/``nnx.merge`` step (its ``nnx.jit`` variant with
``--peer-nnx-jit``); PyTorch's is eager
(``torch.compile`` with ``--torch-compile``). Throughput is tokens/s
(``lm``) or images/s (``resnet``) = items per batch / median step time.

Targets (issue 14): at least 1.1x the throughput of the fastest Flax variant
run, and a step within 1.5x of PyTorch's fused recurrent step (retrax step /
PyTorch step <= 1.5); printed as met / not met.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import rnn_peers  # noqa: E402
from common import fmt_num, fmt_range, fmt_ratio, fmt_s, log, ratio  # noqa: E402

WORKLOADS: dict[str, dict[str, Any]] = {
    "lstm": dict(kind="lm", model="RNNLM", cell="lstm", vocab=256, d_model=512, n_layers=2,
                 batch=32, seq=128, dropout=0.1),
    "gru": dict(kind="lm", model="GRULM", cell="gru", vocab=256, d_model=512, n_layers=1,
                batch=32, seq=128, dropout=0.0),
    "resnet": dict(kind="resnet", model="WideResnet", n_blocks=3, widen_factor=1,
                   n_classes=10, batch=32, image=32, channels=3),
}
# --tiny (tests only; the numbers mean nothing): the same programs on toy sizes.
TINY = {
    "lstm": dict(vocab=32, d_model=16, batch=4, seq=8),
    "gru": dict(vocab=32, d_model=16, batch=4, seq=8),
    "resnet": dict(n_blocks=1, batch=4),
}
# Loop: warm-up steps, steps per timed block, blocks; raw / peers: warm, timed, pipelined.
STEPS = dict(loop_warm=1, loop_block=1, loop_blocks=5, warm=2, timed=10, pipelined=5)
QUICK_STEPS = dict(loop_warm=0, loop_block=1, loop_blocks=2, warm=1, timed=3, pipelined=0)
FLAX_TARGET = 1.10      # retrax throughput / fastest Flax throughput, at least
TORCH_TARGET = 1.50     # retrax step time / fastest PyTorch step time, at most
# Peer runs: (key, label, rnn_peers.py arguments), per workload kind.
LABELS = {
    "retrax_raw": "retrax raw step", "retrax_loop": "retrax Loop.run",
    "flax": "Flax NNX jax.jit", "flax_optimized": "Flax NNX jax.jit, OptimizedLSTMCell",
    "flax_nnx_jit": "Flax NNX nnx.jit", "torch": "PyTorch eager",
    "torch_compile": "PyTorch torch.compile",
}


# --------------------------------------------------------------------------
# The retrax child
# --------------------------------------------------------------------------


def _build_model(trax: Any, spec: dict[str, Any]) -> Any:
    """The workload's retrax model in train mode, or None when retrax has no such model."""
    ctor = getattr(trax.models, spec["model"], None)
    if ctor is None:
        return None
    if spec["model"] == "RNNLM":
        return ctor(vocab_size=spec["vocab"], d_model=spec["d_model"],
                    n_layers=spec["n_layers"], dropout=spec["dropout"], mode="train")
    if spec["model"] == "GRULM":
        return ctor(vocab_size=spec["vocab"], d_model=spec["d_model"],
                    n_layers=spec["n_layers"], mode="train")
    return ctor(n_blocks=spec["n_blocks"], widen_factor=spec["widen_factor"],
                n_output_classes=spec["n_classes"], mode="train")


def child_retrax(spec: dict[str, Any], steps: dict[str, int], breakdown: bool) -> dict[str, Any]:
    t_import = time.perf_counter()
    import jax
    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import training

    res: dict[str, Any] = dict(impl="retrax", import_s=time.perf_counter() - t_import,
                               steps=steps, retrax=getattr(trax, "__version__", "?"))
    batches = rnn_peers.make_batches(spec)

    def data():
        i = 0
        while True:
            yield batches[i % len(batches)]
            i += 1

    t0 = time.perf_counter()
    model = _build_model(trax, spec)
    if model is None:
        res["skipped"] = (f"retrax has no trax.models.{spec['model']} yet "
                          f"(retrax/models/ does not define it at this commit)")
        return res
    task = training.TrainTask(
        labeled_data=data(), loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(rnn_peers.LEARNING_RATE, weight_decay_rate=0.0,
                                       eps=rnn_peers.ADAM_EPS))
    loop = training.Loop(model, task, eval_tasks=None, output_dir=None)
    jax.block_until_ready((loop._weights, loop._state, loop._slots))
    res["setup_s"] = time.perf_counter() - t0     # model + task + Loop (weights init)
    res["params_total"] = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(loop._weights)))

    def loop_run(n: int) -> None:
        loop.run(n)
        jax.block_until_ready((loop._weights, loop._state))

    t0 = time.perf_counter()
    loop_run(1)
    res["first_step_s"] = time.perf_counter() - t0    # trace + compile + one step
    if steps["loop_warm"]:
        loop_run(steps["loop_warm"])
    k = steps["loop_block"]
    blocks = common.time_repeats(lambda: loop_run(k), steps["loop_blocks"])
    res["loop_step"] = common.summarize([x / k for x in blocks])
    res["loop_block_steps"] = k
    try:
        _raw_steps(loop, batches, steps, res, breakdown)
    except Exception as err:  # noqa: BLE001 (Loop internals renamed: keep the Loop numbers)
        res["raw_error"] = f"{type(err).__name__}: {err}"
    res["peak_rss_mib"] = common.peak_rss_mib()
    return res


def _raw_steps(loop: Any, batches: list, steps: dict[str, int], res: dict[str, Any],
               breakdown: bool) -> None:
    """Times the Loop's compiled step ``loop._train_fns[0]`` directly (donated buffers)."""
    import jax
    import numpy as np

    fn = loop._train_fns[0]
    weights, state, slots = loop._weights, loop._state, loop._slots[0]
    opt_params = dict(loop._opt_params[0])
    opt_params["learning_rate"] = np.float32(rnn_peers.LEARNING_RATE)
    dev_batches = [tuple(jax.device_put(a) for a in b) for b in batches]
    step0 = loop.step

    def step(i: int) -> Any:
        nonlocal weights, state, slots
        n = step0 + 1 + i
        weights, state, slots, loss, _ = fn(weights, state, slots, opt_params,
                                            dev_batches[n % len(dev_batches)], n)
        return loss, weights, state

    def block(out: Any) -> float:
        jax.block_until_ready(out)
        return float(out[0])

    timing = rnn_peers.time_steps(step, block, steps["warm"], steps["timed"], steps["pipelined"])
    res["loss_last"] = timing.pop("last")
    res["raw_step"] = timing.pop("step")
    res.update(timing)
    res["peak_rss_mib"] = common.peak_rss_mib()
    inner = getattr(fn, "__wrapped__", None)
    if not breakdown or inner is None:
        return
    # Compile breakdown on a fresh jit of the same Python function (same trace).
    args = (weights, state, slots, opt_params, dev_batches[0], step0 + 1)
    res.update(common.compile_breakdown(inner, args, donate_argnums=(0, 1, 2))[0])


# --------------------------------------------------------------------------
# Parent: run, summarize, report
# --------------------------------------------------------------------------


def peer_runs(spec: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """``(key, rnn_peers.py arguments)`` of the peer measurements of one workload."""
    if args.no_peer:
        return []
    wanted = {p.strip() for p in args.peers.split(",") if p.strip()}
    runs: list[tuple[str, list[str]]] = []
    if "flax" in wanted:
        runs.append(("flax", ["--child", "flax"]))
        if spec["kind"] == "lm" and spec["cell"] == "lstm":
            runs.append(("flax_optimized", ["--child", "flax", "--cell", "lstm_optimized"]))
        if args.peer_nnx_jit:
            runs.append(("flax_nnx_jit", ["--child", "flax", "--variant", "nnx_jit"]))
    if "torch" in wanted and spec["kind"] == "lm":
        threads = ["--threads", str(args.torch_threads)] if args.torch_threads else []
        runs.append(("torch", ["--child", "torch", *threads]))
        if args.torch_compile:
            runs.append(("torch_compile", ["--child", "torch", "--variant", "compile",
                                           *threads]))
    return runs


def summarize_workload(name: str, spec: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """Per implementation: step, throughput, first step, RSS; ratios of retrax's raw step."""
    items = rnn_peers.items_per_step(spec)
    flops = rnn_peers.lm_train_flops(spec) if spec["kind"] == "lm" else None
    out: dict[str, Any] = dict(workload=name, items_per_step=items,
                               unit="tokens" if spec["kind"] == "lm" else "images",
                               formula_flops=flops, entries={})

    def entry(spread: dict | None, first: Any, rss: Any, pipelined: Any) -> dict[str, Any]:
        med = (spread or {}).get("median")
        return dict(step_spread=spread, step_s=med, pipelined_step_s=pipelined,
                    items_per_s=items / med if med else None,
                    gflops=flops / med / 1e9 if (flops and med) else None,
                    first_step_s=first, peak_rss_mib=rss)

    rx = runs.get("retrax")
    if rx and not rx.get("skipped"):
        if rx.get("raw_step"):
            out["entries"]["retrax_raw"] = entry(rx["raw_step"], rx["first_step_s"],
                                                 rx["peak_rss_mib"], rx.get("pipelined_step_s"))
        out["entries"]["retrax_loop"] = entry(rx["loop_step"], rx["first_step_s"],
                                              rx["peak_rss_mib"], None)
    for key, res in runs.items():
        if key != "retrax" and res:
            out["entries"][key] = entry(res["step"], res["first_step_s"], res["peak_rss_mib"],
                                        res.get("pipelined_step_s"))
    mine = out["entries"].get("retrax_raw") or out["entries"].get("retrax_loop")
    for key, e in out["entries"].items():
        if mine and not key.startswith("retrax"):
            e["retrax_throughput_ratio"] = ratio(mine["items_per_s"], e["items_per_s"])
            e["retrax_step_ratio"] = ratio(mine["step_s"], e["step_s"])
            e["retrax_first_step_ratio"] = ratio(mine["first_step_s"], e["first_step_s"])
            e["retrax_peak_rss_ratio"] = ratio(mine["peak_rss_mib"], e["peak_rss_mib"])
    return out


def apply_round_ratios(summary: dict[str, Any], name: str, spec: dict[str, Any],
                       rounds: list[dict[str, Any]]) -> None:
    """Each peer's retrax ratios become the median over the rounds of each round's own ratio.

    Adds ``ratio_spread`` (per ratio: ``{n, median, min, max, values}``) to
    the peer's entry; rounds missing either side are skipped.
    """
    per_round = [summarize_workload(name, spec, rd)["entries"] for rd in rounds]
    for key, e in summary["entries"].items():
        if key.startswith("retrax"):
            continue
        spread = {}
        for ratio_key in ("retrax_throughput_ratio", "retrax_step_ratio",
                          "retrax_first_step_ratio"):
            values = [r[key][ratio_key] for r in per_round
                      if r.get(key, {}).get(ratio_key) is not None]
            if values:
                spread[ratio_key] = dict(common.summarize(values), values=values)
                e[ratio_key] = spread[ratio_key]["median"]
        e["ratio_spread"] = spread


def _shown(e: dict[str, Any], key: str) -> str:
    """A ratio with its range over the rounds when there were several."""
    spread = (e.get("ratio_spread") or {}).get(key)
    return common.fmt_ratio_range(spread) if spread else fmt_ratio(e.get(key))


def _fastest(summary: dict[str, Any], prefix: str) -> tuple[str | None, dict | None]:
    best = [(k, e) for k, e in summary["entries"].items()
            if k.startswith(prefix) and e.get("items_per_s")]
    if not best:
        return None, None
    return max(best, key=lambda ke: ke[1]["items_per_s"])


def targets(summaries: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for the issue-14 targets this run covers."""
    rows = []
    for name, s in summaries.items():
        key, e = _fastest(s, "flax")
        if e and e.get("retrax_throughput_ratio") is not None:
            r = e["retrax_throughput_ratio"]
            rows.append((f"{name}: >= {FLAX_TARGET:.2f}x the fastest Flax throughput",
                         f"{_shown(e, 'retrax_throughput_ratio')} (vs {LABELS[key]})",
                         r >= FLAX_TARGET))
        key, e = _fastest(s, "torch")
        if e and e.get("retrax_step_ratio") is not None:
            r = e["retrax_step_ratio"]
            rows.append((f"{name}: step within {TORCH_TARGET:.1f}x of PyTorch's "
                         f"(retrax step / PyTorch step <= {TORCH_TARGET:.1f})",
                         f"{_shown(e, 'retrax_step_ratio')} (vs {LABELS[key]})",
                         r <= TORCH_TARGET))
    return rows


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    print(f"machine: {m.get('cpu_model')} x{m.get('cpu_count')}, load avg at start "
          f"{m.get('loadavg_start')}, end {result.get('loadavg_end')}")
    rows = []
    for name, s in result["summary"].items():
        unit = s["unit"]
        for key, e in s["entries"].items():
            rows.append([name, LABELS.get(key, key), fmt_range(e["step_spread"]),
                         fmt_s(e["pipelined_step_s"]),
                         fmt_num(e["items_per_s"], 0, f" {unit}/s"),
                         fmt_num(e["gflops"], 1),
                         fmt_s(e["first_step_s"]), fmt_num(e["peak_rss_mib"], 0, " MiB"),
                         _shown(e, "retrax_throughput_ratio"),
                         _shown(e, "retrax_first_step_ratio")])
    print()
    print("Steps: the median round's; ratios: median of the rounds' ratios (min-max) when "
          "--rounds > 1.")
    print(common.table(["workload", "implementation", "step median (min-max)", "pipelined",
                        "throughput", "GFLOP/s", "first step", "peak RSS",
                        "retrax thr. / this", "retrax first / this"], rows))
    comp = []
    for name, runs in result["workloads"].items():
        for key in ("retrax", "flax"):
            r = runs.get(key) or {}
            if r.get("trace_s") is None:
                continue
            comp.append([name, LABELS.get(key, key) if key != "retrax" else "retrax",
                         fmt_s(r.get("first_step_s")), fmt_s(r.get("trace_s")),
                         fmt_s(r.get("lower_s")), fmt_s(r.get("xla_compile_s")),
                         fmt_num(r.get("hlo_fusions")),
                         fmt_num((r.get("xla_flops") or 0) / 1e9, 2),
                         fmt_num((r.get("xla_bytes_accessed") or 0) / 2**20, 0, " MiB"),
                         fmt_num((r.get("temp_bytes") or 0) / 2**20, 1, " MiB")])
    if comp:
        print()
        print("Compile breakdown and XLA's profile of the step (a fresh jit of the same "
              "function; bytes = XLA's bytes accessed, temp = its scratch memory):")
        print(common.table(["workload", "implementation", "first step", "trace", "lower",
                            "XLA compile", "HLO fusions", "XLA GFLOP", "bytes", "temp"],
                           comp))
    ops = {n: (r.get("torch") or {}).get("torch_ops") for n, r in result["workloads"].items()}
    for n, o in ops.items():
        if o:
            print(f"\nPyTorch {n} kernels: {o}")
    tg = result["targets"]
    if tg:
        print()
        print(common.table(["target (issue 14)", "measured", "met"],
                           [[t["target"], t["measured"],
                             "-" if t["met"] is None else ("met" if t["met"] else "NOT met")]
                            for t in tg]))
    for name, msg in result["skipped"].items():
        print(f"\nSKIPPED {name}: {msg}")
    for k, v in result["errors"].items():
        print(f"\nERROR {k}: {v.strip().splitlines()[-1] if v.strip() else v}")


def workload_specs(args: argparse.Namespace, ap: argparse.ArgumentParser) -> dict[str, dict]:
    names = [w.strip().lower() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in names if w not in WORKLOADS]
    if bad or not names:
        ap.error(f"unknown workload(s) {bad}; choose from {sorted(WORKLOADS)}")
    specs = {}
    for name in names:
        spec = dict(WORKLOADS[name])
        if name == "gru":
            spec["n_layers"] = args.gru_layers
        if name == "resnet":
            spec.update(n_blocks=args.resnet_blocks, widen_factor=args.resnet_widen)
        if args.tiny:
            spec.update(TINY[name])
        specs[name] = spec
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="lstm,gru,resnet",
                    help="comma-separated subset of lstm,gru,resnet")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke test)")
    ap.add_argument("--tiny", action="store_true",
                    help="toy sizes (tests only: the numbers mean nothing)")
    ap.add_argument("--no-peer", action="store_true", help="retrax only")
    ap.add_argument("--peers", default="flax,torch", help="peers to run: flax, torch")
    ap.add_argument("--peer-nnx-jit", action="store_true",
                    help="also run Flax's nnx.jit + nnx.Optimizer variant")
    ap.add_argument("--torch-compile", action="store_true",
                    help="also run PyTorch with torch.compile (cold inductor cache)")
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="PyTorch intra-op threads (default: PyTorch's, one per core)")
    ap.add_argument("--gru-layers", type=int, default=1,
                    help="GRULM n_layers (Trax's default: 1)")
    ap.add_argument("--resnet-blocks", type=int, default=3, help="WideResnet n_blocks")
    ap.add_argument("--resnet-widen", type=int, default=1, help="WideResnet widen_factor")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat retrax and its peers this many times per workload "
                         "(alternating); steps are the round with the median retrax step, "
                         "ratios the median of the rounds' ratios (min-max)")
    ap.add_argument("--compile-cache", action="store_true",
                    help="keep retrax's persistent compilation cache on in the children "
                         "(first step is then a warm compile)")
    ap.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "rnn.json"))
    ap.add_argument("--timeout", type=float, default=900, help="per child process, seconds")
    ap.add_argument("--child", choices=["retrax"], help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    ap.add_argument("--breakdown", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()

    steps = QUICK_STEPS if args.quick else STEPS
    if args.child:
        res = child_retrax(json.loads(args.spec), steps, args.breakdown)
        print(json.dumps(res, default=rnn_peers.jsonable), flush=True)
        return

    specs = workload_specs(args, ap)
    script = os.path.abspath(__file__)
    if not args.compile_cache:
        os.environ["RETRAX_COMPILATION_CACHE"] = "0"     # children compile cold, as the peers
    peer_script = os.path.join(os.path.dirname(script), "rnn_peers.py")
    peer_steps = json.dumps(dict(warm=steps["warm"], timed=steps["timed"],
                                 pipelined=steps["pipelined"]))
    t_all = time.perf_counter()
    result: dict[str, Any] = dict(benchmark="rnn", argv=sys.argv[1:],
                                  machine=common.machine_info(), specs=specs, workloads={},
                                  summary={}, skipped={}, errors={},
                                  note="measured values; compare only within a run")
    try:
        import torch

        result["machine"]["torch"] = torch.__version__
    except ImportError:
        result["machine"]["torch"] = None

    load = (result["machine"].get("loadavg_start") or [0.0])[0]
    if load > 0.5 * (os.cpu_count() or 1):
        log(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores: timings will be "
            f"noisy, PyTorch's OpenMP threads worst of all (see --torch-threads)")
    for name, spec in specs.items():
        spec_json = json.dumps(spec)
        rounds = []
        for r in range(max(1, args.rounds)):
            tag = name + (f" round {r + 1}" if args.rounds > 1 else "")
            log(f"retrax {tag}")
            argv = [script, "--child", "retrax", "--spec", spec_json]
            argv += ["--quick"] if args.quick else []
            argv += [] if (args.quick or args.tiny) else ["--breakdown"]
            rx, err = common.run_child(argv, timeout=args.timeout)
            if err:
                result["errors"][f"retrax_{name}_r{r}"] = err
            elif rx.get("skipped"):
                result["skipped"][name] = rx["skipped"]
            elif rx.get("raw_error"):
                result["errors"][f"retrax_{name}_r{r}_raw_step"] = rx["raw_error"]
            runs: dict[str, Any] = dict(retrax=rx)
            for key, extra in peer_runs(spec, args):
                if key == "flax" and not (args.quick or args.tiny):
                    extra = [*extra, "--breakdown"]
                log(f"{LABELS[key]} {tag}")
                res, err = common.run_child(
                    [peer_script, *extra, "--spec", spec_json, "--steps", peer_steps],
                    timeout=args.timeout)
                if err:
                    result["errors"][f"{key}_{name}_r{r}"] = err
                runs[key] = res
            rounds.append(runs)
            if rx and rx.get("skipped"):
                break
        ok = [rd for rd in rounds if rd["retrax"] and rd["retrax"].get("raw_step")]
        chosen = sorted(ok, key=lambda rd: rd["retrax"]["raw_step"]["median"])[len(ok) // 2] \
            if ok else rounds[0]
        result["workloads"][name] = dict(chosen, rounds=rounds if len(rounds) > 1 else None)
        result["summary"][name] = summarize_workload(name, spec, chosen)
        if len(rounds) > 1:
            apply_round_ratios(result["summary"][name], name, spec, rounds)

    try:
        result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    result["total_wall_s"] = time.perf_counter() - t_all
    result["targets"] = [dict(target=a, measured=b, met=c)
                         for a, b, c in targets(result["summary"])]
    print_report(result)
    path = common.write_json(args.out, result)
    print(f"\nwrote {path} (total {result['total_wall_s']:.0f} s)")
    if any(k.startswith("retrax") for k in result["errors"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
