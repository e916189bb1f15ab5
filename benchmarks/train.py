#!/usr/bin/env python3
"""Training benchmark: retrax's compiled train step vs the Flax NNX peer, in one run.

Usage (from the repository root, in the venv)::

    python benchmarks/train.py                    # configs S,M, 5 rounds + quick start (~20 min)
    python benchmarks/train.py --configs S,M,L    # all of BENCHMARKS.md (~45 min)
    python benchmarks/train.py --rounds 1         # one retrax + peer pair per config
    python benchmarks/train.py --quick            # smoke test: fewer steps
    python benchmarks/train.py --no-peer          # retrax only

Per configuration (S, M, L of ../shared/BENCHMARKS.md: TransformerLM, dropout
0.1, max_len 2048, random int tokens, weights of ones, ``tl.CrossEntropyLoss``,
Adam(1e-3, eps=1e-8, no weight decay) = the peer's ``optax.adam(1e-3)``), in a
child process of its own:

* ``first step``: the first ``Loop.run(1)`` until its weights are ready
  (trace + compile + one step), as a user sees it;
* ``loop step``: ``Loop.run(k)`` blocks (k steps, then block until the new
  weights, state and optimizer slots are ready: a Loop that returned before
  the device finished could not look fast), per step; the real Loop with
  ``output_dir=None, eval_tasks=None``;
* ``raw step``: the Loop's own compiled step ``loop._train_fns[0]`` called
  directly with donated buffers and ``jax.block_until_ready`` on the loss and
  the new weights, state and slots after each step (the peer's
  ``step_s_median`` measures the same), plus a pipelined run without
  per-step blocking;
* the compile breakdown of that step (trace / lower / XLA compile, on a fresh
  ``jax.jit`` of the same function) and XLA's own FLOP count;
* tokens/s = batch * seq / step time; MFU = BENCHMARKS.md FLOPs / step time /
  matmul peak (a 4096^2 float32 ``jnp.dot`` median measured in the same run,
  or ``bench_matmul.py`` with ``--bench-matmul``); peak RSS of the child.

The Flax peer (``bench_flax.py --child train --config X``) runs right after
retrax for the same configuration, and the pair repeats ``--rounds`` times
(5 by default: retrax, peer, retrax, peer, ...), each child a fresh process.
The ratios reported are the median over the rounds of each round's own
ratio, with their range (min-max); the per-implementation columns are the
round with the median retrax Loop step. The 1-minute load average is
recorded at the start and end of the run and before each round (table and
JSON): a loaded machine spoils a comparison. Also timed: the seed quick
start, 1000 reverse-task steps with evals and checkpoints (the notebook's
cell).

The persistent compilation cache (``retrax.compilation_cache``) is turned
off in the children (``RETRAX_COMPILATION_CACHE=0``) so that ``first step``
is a cold compile, as the peer's is; ``--compile-cache`` keeps it on.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import CONFIGS, fmt_num, fmt_range, fmt_ratio, fmt_s, log, ratio  # noqa: E402

# (loop warm-up steps, loop steps per timed block, loop blocks,
#  raw warm-up steps, raw timed steps, raw pipelined steps)
STEPS = {
    "S": dict(loop_warm=5, loop_block=10, loop_blocks=10, raw_warm=5, raw=50, pipelined=50),
    "M": dict(loop_warm=2, loop_block=1, loop_blocks=8, raw_warm=1, raw=12, pipelined=6),
    "L": dict(loop_warm=1, loop_block=1, loop_blocks=4, raw_warm=1, raw=6, pipelined=0),
}
QUICK_STEPS = {
    "S": dict(loop_warm=2, loop_block=10, loop_blocks=3, raw_warm=2, raw=10, pipelined=10),
    "M": dict(loop_warm=1, loop_block=1, loop_blocks=2, raw_warm=0, raw=3, pipelined=0),
    "L": dict(loop_warm=0, loop_block=1, loop_blocks=1, raw_warm=0, raw=2, pipelined=0),
}
LEARNING_RATE = 1e-3  # the peer's optax.adam(1e-3)
QUICKSTART_STEPS = 1000
# BENCHMARKS.md: the lowest peer peak RSS on L (torch.compile, 2.3 GiB; not run here).
BEST_PEER_RSS_L_MIB = 2.3 * 1024


# --------------------------------------------------------------------------
# Children
# --------------------------------------------------------------------------


def _count_eqns(jaxpr: Any) -> int:
    """Equations in a (closed) jaxpr, those of sub-jaxprs (pjit, custom_vjp, ...) included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    n += _count_eqns(sub)
    return n


def child_train(name: str, quick: bool) -> dict[str, Any]:
    t_import = time.perf_counter()
    import jax
    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import training

    import_s = time.perf_counter() - t_import
    cfg = CONFIGS[name]
    steps = (QUICK_STEPS if quick else STEPS)[name]
    b, t, v = cfg["batch"], cfg["seq"], cfg["vocab"]
    rng = np.random.default_rng(0)
    ones = np.ones((b, t), np.float32)
    batches = []
    for _ in range(4):
        x = rng.integers(1, v, (b, t)).astype(np.int32)
        batches.append((x, x, ones))

    def data():
        i = 0
        while True:
            yield batches[i % len(batches)]
            i += 1

    res: dict[str, Any] = dict(config=name, impl="retrax", **cfg, dropout=common.DROPOUT,
                               max_len=common.MAX_LEN, steps=steps, import_s=import_s,
                               optimizer=f"Adam({LEARNING_RATE}, weight_decay_rate=0, eps=1e-8)")
    t0 = time.perf_counter()
    model = trax.models.TransformerLM(
        vocab_size=v, d_model=cfg["d_model"], d_ff=cfg["d_ff"], n_layers=cfg["n_layers"],
        n_heads=cfg["n_heads"], dropout=common.DROPOUT, max_len=common.MAX_LEN, mode="train")
    task = training.TrainTask(
        labeled_data=data(), loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(LEARNING_RATE, weight_decay_rate=0.0, eps=1e-8))
    loop = training.Loop(model, task, eval_tasks=None, output_dir=None)
    jax.block_until_ready((loop._weights, loop._slots))
    res["setup_s"] = time.perf_counter() - t0  # model + task + Loop (weights init)
    res["params_total"] = int(sum(np.size(x) for x in jax.tree_util.tree_leaves(loop._weights)))

    def loop_run(n: int) -> None:
        loop.run(n)
        jax.block_until_ready((loop._weights, loop._state, loop._slots))

    # First step as a user sees it: trace + compile + one step.
    t0 = time.perf_counter()
    loop_run(1)
    res["first_step_s"] = time.perf_counter() - t0
    if steps["loop_warm"]:
        loop_run(steps["loop_warm"])
    k = steps["loop_block"]
    blocks = common.time_repeats(lambda: loop_run(k), steps["loop_blocks"])
    res["loop_step"] = common.summarize([x / k for x in blocks])
    res["loop_block_steps"] = k

    # The same compiled function, called directly (donated buffers).
    try:
        _raw_and_compile(loop, batches, steps, res)
    except Exception as err:  # noqa: BLE001 (Loop internals renamed: keep the Loop numbers)
        res["raw_error"] = f"{type(err).__name__}: {err}"
    res.setdefault("peak_rss_mib", common.peak_rss_mib())
    res["formula_flops"] = common.train_step_flops(cfg)
    return res


def _raw_and_compile(loop: Any, batches: list, steps: dict, res: dict) -> None:
    """Times ``loop._train_fns[0]`` directly, then a compile breakdown of the same step."""
    import jax
    import numpy as np

    fn = loop._train_fns[0]
    weights, state, slots = loop._weights, loop._state, loop._slots[0]
    opt_params = dict(loop._opt_params[0])
    opt_params["learning_rate"] = np.float32(LEARNING_RATE)
    dev_batches = [tuple(jax.device_put(a) for a in bt) for bt in batches]
    step = loop.step
    losses = []

    def raw_step() -> Any:
        """One step; returns everything it computed (loss, weights, state, slots)."""
        nonlocal weights, state, slots, step
        step += 1
        weights, state, slots, loss, _ = fn(weights, state, slots, opt_params,
                                            dev_batches[step % 4], step)
        return loss, weights, state, slots

    def blocked_step() -> None:
        losses.append(jax.block_until_ready(raw_step())[0])

    for _ in range(steps["raw_warm"]):
        jax.block_until_ready(raw_step())
    times = common.time_repeats(blocked_step, steps["raw"])
    res["raw_step"] = common.summarize(times)
    if steps["pipelined"]:
        t0 = time.perf_counter()
        for _ in range(steps["pipelined"]):
            out = raw_step()
        jax.block_until_ready(out)
        res["pipelined_step_s"] = (time.perf_counter() - t0) / steps["pipelined"]
    res["loss_last"] = float(losses[-1]) if losses else None
    res["compiles_of_step"] = _cache_size(fn)
    res["peak_rss_mib"] = common.peak_rss_mib()

    # Compile breakdown on a fresh jit of the same Python function (same trace).
    inner = getattr(fn, "__wrapped__", None)
    if inner is not None:
        args = (weights, state, slots, opt_params, dev_batches[0], step + 1)
        breakdown, traced = common.compile_breakdown(inner, args, donate_argnums=(0, 1, 2))
        res.update(breakdown)
        try:
            res["jaxpr_eqns"] = _count_eqns(traced.jaxpr)
        except Exception as err:  # noqa: BLE001 (diagnostic only)
            res["jaxpr_eqns_error"] = repr(err)


def _cache_size(fn: Any) -> int | None:
    try:
        return int(fn._cache_size())
    except Exception:  # noqa: BLE001
        return None


def child_quickstart() -> dict[str, Any]:
    """The quick-start notebook's training cell; model and generator from retrax.quickstart."""
    t_import = time.perf_counter()
    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import training

    import_s = time.perf_counter() - t_import

    from retrax.quickstart import reverse_ints_task, tiny_transformer_lm

    out = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="retrax_bench_qs_") as output_dir, \
            redirect_stdout(out):
        t_all = time.perf_counter()
        # The notebook seeds NumPy with 0 and draws from its global RNG: the same draws.
        reverse_ints_inputs = reverse_ints_task(16, rng=np.random.RandomState(0))
        train_task = training.TrainTask(
            labeled_data=reverse_ints_inputs, loss_layer=tl.CrossEntropyLoss(),
            optimizer=trax.optimizers.Adam(0.01), n_steps_per_checkpoint=500)
        eval_task = training.EvalTask(
            labeled_data=reverse_ints_inputs, metrics=[tl.CrossEntropyLoss(), tl.Accuracy()],
            n_eval_batches=20)
        training_loop = training.Loop(tiny_transformer_lm(), train_task,
                                      eval_tasks=[eval_task], output_dir=output_dir)
        t_run = time.perf_counter()
        training_loop.run(QUICKSTART_STEPS)
        t_end = time.perf_counter()
        res: dict[str, Any] = dict(
            steps=QUICKSTART_STEPS, import_s=import_s, wall_s=t_end - t_all,
            setup_s=t_run - t_all, run_s=t_end - t_run,
            steps_per_s=QUICKSTART_STEPS / (t_end - t_run))
        hist = training_loop.history
        for tag in ("metrics/CrossEntropyLoss", "metrics/Accuracy"):
            try:
                vals = hist.get("eval", tag)
                res["eval_" + tag.split("/")[1]] = [[int(s), float(x)] for s, x in vals]
            except Exception as err:  # noqa: BLE001
                res["eval_error"] = repr(err)
        # Not timed: the notebook's prediction cell.
        try:
            from retrax.supervised import decoding

            predict_model = tiny_transformer_lm(mode="predict")
            predict_model.init_from_file(
                os.path.join(output_dir, "model.pkl.gz"), weights_only=True,
                input_signature=trax.shapes.ShapeDtype((1, 1), dtype=np.int32))
            pred = decoding.autoregressive_sample(
                predict_model, np.array([[0, 4, 6, 8, 10, 0]]), temperature=0.0, max_length=4)
            res["prediction"] = np.asarray(pred).tolist()
            res["prediction_ok"] = res["prediction"] == [[10, 8, 6, 4]]
        except Exception as err:  # noqa: BLE001
            res["prediction_error"] = repr(err)
    res["peak_rss_mib"] = common.peak_rss_mib()
    res["log_tail"] = out.getvalue().splitlines()[-6:]
    return res


# --------------------------------------------------------------------------
# Parent: run everything, summarize
# --------------------------------------------------------------------------


def summarize_config(name: str, rx: dict | None, fx: dict | None, fx_nnx: dict | None,
                     peak_gflops: float | None) -> dict[str, Any]:
    cfg = CONFIGS[name]
    flops = common.train_step_flops(cfg)
    tokens = cfg["batch"] * cfg["seq"]
    out: dict[str, Any] = dict(config=name, flops_per_step=flops, tokens_per_step=tokens)

    def entry(step_s: float | None, first: float | None, rss: float | None,
              pipelined: float | None = None, spread: dict | None = None) -> dict[str, Any]:
        mfu = None
        if step_s and peak_gflops:
            mfu = flops / step_s / (peak_gflops * 1e9)
        return dict(step_s=step_s, step_spread=spread, pipelined_step_s=pipelined,
                    tokens_per_s=tokens / step_s if step_s else None, mfu=mfu,
                    first_step_s=first, peak_rss_mib=rss)

    if rx and rx.get("raw_step"):
        out["retrax_raw"] = entry(rx["raw_step"]["median"], rx["first_step_s"],
                                  rx["peak_rss_mib"], rx.get("pipelined_step_s"), rx["raw_step"])
    if rx:
        out["retrax_loop"] = entry(rx["loop_step"]["median"], rx["first_step_s"],
                                   rx["peak_rss_mib"], None, rx["loop_step"])
    if fx:
        out["flax"] = entry(fx["step_s_median"], fx["first_step_s"], fx["peak_rss_mib"],
                            fx.get("pipelined_step_s"),
                            dict(n=fx["timed_steps"], median=fx["step_s_median"],
                                 min=fx["step_s_min"], max=fx["step_s_max"]))
    if fx_nnx:
        out["flax_nnx_jit"] = entry(
            fx_nnx["step_s_median"], fx_nnx["first_step_s"], fx_nnx["peak_rss_mib"],
            fx_nnx.get("pipelined_step_s"),
            dict(n=fx_nnx["timed_steps"], median=fx_nnx["step_s_median"],
                 min=fx_nnx["step_s_min"], max=fx_nnx["step_s_max"]))
    if rx and fx:
        f = fx["step_s_median"]
        for kind in ("raw", "loop"):
            if f"retrax_{kind}" not in out:
                continue
            r = out[f"retrax_{kind}"]["step_s"]
            out[f"{kind}_throughput_ratio"] = ratio(f, r)  # retrax tokens/s / Flax tokens/s
            out[f"{kind}_step_time_ratio"] = ratio(r, f)
        out["pipelined_throughput_ratio"] = ratio(fx.get("pipelined_step_s"),
                                                  rx.get("pipelined_step_s"))
        out["first_step_ratio"] = ratio(rx["first_step_s"], fx["first_step_s"])
        out["peak_rss_ratio"] = ratio(rx["peak_rss_mib"], fx["peak_rss_mib"])
    return out


RATIO_KEYS = ("raw_throughput_ratio", "loop_throughput_ratio", "raw_step_time_ratio",
              "loop_step_time_ratio", "pipelined_throughput_ratio", "first_step_ratio",
              "peak_rss_ratio")


def round_ratios(name: str, rounds: list[dict[str, Any]], peak_gflops: float | None
                 ) -> dict[str, Any]:
    """Each ratio's median over the rounds (each round: its retrax run vs its own peer run).

    Returns the ``RATIO_KEYS`` as those medians (replacing the single round's
    values) and ``ratio_spread``: per key ``{n, median, min, max, values}``.
    """
    per_round = [summarize_config(name, rd["retrax"], rd["flax"], None, peak_gflops)
                 for rd in rounds if rd["retrax"] and rd["flax"]]
    out: dict[str, Any] = dict(rounds_compared=len(per_round), ratio_spread={})
    for key in RATIO_KEYS:
        values = [s[key] for s in per_round if s.get(key) is not None]
        if not values:
            continue
        spread = common.summarize(values)
        spread["values"] = values
        out["ratio_spread"][key] = spread
        out[key] = spread["median"]
    return out


def targets(summary: dict[str, Any], quickstart: dict | None) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) for the BENCHMARKS.md targets this run covers."""
    rows = []
    def measured(s: dict[str, Any], key: str) -> str:
        return common.fmt_ratio_range((s.get("ratio_spread") or {}).get(key)) \
            if (s.get("ratio_spread") or {}).get(key) else fmt_ratio(s[key])

    for name in ("M", "L"):
        s = summary.get(name)
        key = None if not s else next((k for k in ("raw_throughput_ratio",
                                                   "loop_throughput_ratio")
                                       if s.get(k) is not None), None)
        if key:
            rows.append((f"train {name}: >= 1.10x Flax throughput (median of rounds)",
                         measured(s, key), s[key] >= 1.10))
    s = summary.get("L")
    if s and (s.get("retrax_raw") or {}).get("mfu") is not None:
        m = s["retrax_raw"]["mfu"]
        rows.append(("train L: MFU >= 55%", f"{m:.0%}", m >= 0.55))
    if s and s.get("peak_rss_ratio") is not None:
        rx, fx = s["retrax_loop"]["peak_rss_mib"], s["flax"]["peak_rss_mib"]
        best = min(fx, BEST_PEER_RSS_L_MIB)
        rows.append(("train L: peak RSS <= best peer (min of Flax here and torch.compile's "
                     "2.3 GiB in BENCHMARKS.md)",
                     f"{rx / 1024:.2f} GiB (Flax {fx / 1024:.2f} GiB)", rx <= best))
    s = summary.get("S")
    key = None if not s else next((k for k in ("raw_step_time_ratio", "loop_step_time_ratio")
                                   if s.get(k) is not None), None)
    if key:
        rows.append(("train S: step time <= 0.8x Flax (median of rounds)", measured(s, key),
                     s[key] <= 0.8))
    if s and s.get("retrax_loop"):
        fs = s["retrax_loop"]["first_step_s"]
        rows.append(("train S: first step (compile) <= 3 s", fmt_s(fs), fs <= 3.0))
    if quickstart:
        w = quickstart["wall_s"]
        rows.append(("seed quick start 1000 steps incl. evals < 15 s", fmt_s(w), w < 15.0))
    return rows


def print_report(result: dict[str, Any]) -> None:
    peak = result.get("matmul", {}) or {}
    print()
    print(f"machine: {result['machine'].get('cpu_model')} x{result['machine'].get('cpu_count')}"
          f", load avg at start {result['machine'].get('loadavg_start')}, end "
          f"{result.get('loadavg_end')}")
    if peak.get("gflops_median"):
        print(f"matmul peak ({peak.get('source')} {peak.get('n')}^2 f32): "
              f"{peak['gflops_median']:.1f} GFLOP/s median")
    rows = []
    for name, s in result["summary"].items():
        for key, label in (("retrax_raw", "retrax raw step"), ("retrax_loop", "retrax Loop.run"),
                           ("flax", "Flax NNX jit"), ("flax_nnx_jit", "Flax nnx.jit")):
            e = s.get(key)
            if not e:
                continue
            spread = s.get("ratio_spread") or {}
            kind = key.split("_")[-1]
            thr = st = "-"
            if key.startswith("retrax"):
                thr = (common.fmt_ratio_range(spread.get(f"{kind}_throughput_ratio"))
                       if spread.get(f"{kind}_throughput_ratio")
                       else fmt_ratio(s.get(f"{kind}_throughput_ratio")))
                st = (common.fmt_ratio_range(spread.get(f"{kind}_step_time_ratio"))
                      if spread.get(f"{kind}_step_time_ratio")
                      else fmt_ratio(s.get(f"{kind}_step_time_ratio")))
            rows.append([
                name, label, fmt_range(e["step_spread"]), fmt_s(e["pipelined_step_s"]),
                fmt_num(e["tokens_per_s"]),
                "-" if e["mfu"] is None else f"{e['mfu']:.0%}",
                fmt_s(e["first_step_s"]), fmt_num(e["peak_rss_mib"], 0, " MiB"), thr, st])
    print()
    print("Steps: the median round's; ratios: median of the rounds' ratios (min-max).")
    print(common.table(["cfg", "implementation", "step median (min-max)", "pipelined",
                        "tokens/s", "MFU", "first step", "peak RSS", "thr. vs Flax",
                        "step vs Flax"], rows))
    round_rows = []
    for name, runs in result["configs"].items():
        for i, rd in enumerate(runs.get("rounds") or []):
            rx, fx = rd.get("retrax") or {}, rd.get("flax") or {}
            raw = (rx.get("raw_step") or {}).get("median")
            loop = (rx.get("loop_step") or {}).get("median")
            peer = fx.get("step_s_median")
            round_rows.append([
                name, i + 1, " ".join(f"{x:.2f}" for x in rd.get("loadavg_start") or []) or "-",
                " ".join(f"{x:.2f}" for x in rd.get("loadavg_end") or []) or "-",
                fmt_s(raw), fmt_s(loop), fmt_s(peer), fmt_ratio(ratio(peer, raw)),
                fmt_ratio(ratio(peer, loop))])
    if round_rows:
        print()
        print("Rounds (alternating, each a fresh retrax and peer process; load average 1/5/15 "
              "min):")
        print(common.table(["cfg", "round", "load before", "load after", "retrax raw",
                            "retrax Loop", "Flax", "raw thr. ratio", "Loop thr. ratio"],
                           round_rows))
    comp = []
    for name, runs in result["configs"].items():
        rx = runs.get("retrax")
        if rx:
            comp.append([name, fmt_s(rx.get("setup_s")), fmt_s(rx.get("first_step_s")),
                         fmt_s(rx.get("trace_s")), fmt_s(rx.get("lower_s")),
                         fmt_s(rx.get("xla_compile_s")), fmt_num(rx.get("jaxpr_eqns")),
                         fmt_num(rx.get("hlo_fusions")),
                         fmt_num((rx.get("xla_flops") or 0) / 1e9, 2),
                         fmt_num(rx["formula_flops"] / 1e9, 2)])
    if comp:
        print()
        print("retrax compile breakdown (fresh jit of the same step) and FLOPs per step:")
        print(common.table(["cfg", "Loop setup", "first step", "trace", "lower", "XLA compile",
                            "jaxpr eqns", "HLO fusions", "XLA GFLOP", "formula GFLOP"], comp))
    qs = result.get("quickstart")
    if qs:
        acc = qs.get("eval_Accuracy") or []
        print()
        print(f"seed quick start: {QUICKSTART_STEPS} steps incl. evals + checkpoints: "
              f"{qs['wall_s']:.2f} s wall (setup {qs['setup_s']:.2f} s, run {qs['run_s']:.2f} s,"
              f" {qs['steps_per_s']:.0f} steps/s); final eval accuracy "
              f"{acc[-1][1] if acc else '-'}; prediction {qs.get('prediction')}")
    tg = targets(result["summary"], qs)
    if tg:
        print()
        print(common.table(["target (BENCHMARKS.md)", "measured", "met"],
                           [[a, b, "-" if c is None else ("yes" if c else "NO")]
                            for a, b, c in tg]))
    if result["errors"]:
        print()
        for k, v in result["errors"].items():
            print(f"ERROR {k}: {v.strip().splitlines()[-1] if v.strip() else v}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="S,M", help="comma-separated subset of S,M,L")
    ap.add_argument("--quick", action="store_true", help="fewer steps (smoke test)")
    ap.add_argument("--no-peer", action="store_true", help="do not run the Flax peer")
    ap.add_argument("--no-quickstart", action="store_true", help="skip the seed quick start")
    ap.add_argument("--peer-nnx-jit", default="S",
                    help="configs for which the peer's nnx.jit variant also runs ('' for none)")
    ap.add_argument("--bench-matmul", action="store_true",
                    help="matmul peak from bench_matmul.py (slower) instead of a quick jnp.dot")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating retrax / peer rounds per config (default 5); ratios are "
                         "the median of the rounds' ratios, with their range")
    ap.add_argument("--compile-cache", action="store_true",
                    help="keep retrax's persistent compilation cache on in the children "
                         "(first step is then a warm compile)")
    ap.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "train.json"))
    ap.add_argument("--timeout", type=float, default=900, help="per child process, seconds")
    ap.add_argument("--child", choices=["train", "quickstart", "matmul"], help=argparse.SUPPRESS)
    ap.add_argument("--config", default="S", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        if args.child == "train":
            res = child_train(args.config, args.quick)
        elif args.child == "quickstart":
            res = child_quickstart()
        else:
            res = common.child_matmul_peak()
        print(json.dumps(res, default=common._json_default), flush=True)
        return

    names = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        ap.error(f"unknown config(s) {bad}; choose from {sorted(CONFIGS)}")
    script = os.path.abspath(__file__)
    if not args.compile_cache:
        os.environ["RETRAX_COMPILATION_CACHE"] = "0"     # children compile cold, as the peer
    t_all = time.perf_counter()
    result: dict[str, Any] = dict(benchmark="train", argv=sys.argv[1:],
                                  machine=common.machine_info(), configs={}, summary={},
                                  errors={}, note="measured values; compare only within a run")
    log("matmul peak")
    peak, err = common.matmul_peak(script, args.bench_matmul, timeout=args.timeout)
    result["matmul"] = peak
    if err:
        result["errors"]["matmul"] = err
    peak_gflops = peak.get("gflops_median") if peak else None

    nnx_names = {c.strip().upper() for c in args.peer_nnx_jit.split(",") if c.strip()}
    for name in names:
        rounds = []
        for r in range(max(1, args.rounds)):
            tag = f"{name}" + (f" round {r + 1}" if args.rounds > 1 else "")
            load = common.loadavg()
            log(f"retrax train {tag} (load average {load})")
            extra = ["--quick"] if args.quick else []
            rx, err = common.run_child([script, "--child", "train", "--config", name, *extra],
                                       timeout=args.timeout)
            if err:
                result["errors"][f"retrax_{name}_r{r}"] = err
            elif rx.get("raw_error"):
                result["errors"][f"retrax_{name}_r{r}_raw_step"] = rx["raw_error"]
            fx = fx_nnx = None
            if not args.no_peer:
                log(f"Flax peer train {tag}")
                fx, err = common.run_flax_peer(["--child", "train", "--config", name],
                                               timeout=args.timeout)
                if err:
                    result["errors"][f"flax_{name}_r{r}"] = err
                if name in nnx_names and r == 0:
                    log(f"Flax peer train {name} (nnx.jit variant)")
                    fx_nnx, err = common.run_flax_peer(
                        ["--child", "train", "--config", name, "--variant", "nnx_jit"],
                        timeout=args.timeout)
                    if err:
                        result["errors"][f"flax_{name}_nnx_jit"] = err
            rounds.append(dict(retrax=rx, flax=fx, flax_nnx_jit=fx_nnx, loadavg_start=load,
                               loadavg_end=common.loadavg()))
        ok = [rd for rd in rounds if rd["retrax"]]
        chosen = sorted(ok, key=lambda rd: rd["retrax"]["loop_step"]["median"])[len(ok) // 2] \
            if ok else rounds[0]
        nnx = next((rd["flax_nnx_jit"] for rd in rounds if rd["flax_nnx_jit"]), None)
        result["configs"][name] = dict(retrax=chosen["retrax"], flax=chosen["flax"],
                                       flax_nnx_jit=nnx, rounds=rounds)
        summary = summarize_config(name, chosen["retrax"], chosen["flax"], nnx, peak_gflops)
        summary.update(round_ratios(name, rounds, peak_gflops))
        result["summary"][name] = summary

    if not args.no_quickstart:
        log("seed quick start (1000 steps)")
        qs, err = common.run_child([script, "--child", "quickstart"], timeout=args.timeout)
        result["quickstart"] = qs
        if err:
            result["errors"]["quickstart"] = err
    result["loadavg_end"] = common.loadavg()
    result["total_wall_s"] = time.perf_counter() - t_all
    result["targets"] = [dict(target=a, measured=b, met=c)
                         for a, b, c in targets(result["summary"], result.get("quickstart"))]
    path = common.write_json(args.out, result)      # first: a report bug loses no numbers
    print_report(result)
    print(f"\nwrote {path} (total {result['total_wall_s']:.0f} s)")
    if any(k.startswith(("retrax", "quickstart")) for k in result["errors"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
