#!/usr/bin/env python3
"""Decoding benchmark: retrax ``autoregressive_sample`` vs the Flax KV-cache loop, in one run.

Usage (from the repository root, in the venv)::

    python benchmarks/decode.py              # batch 1 and 8, greedy / top-k / top-p, 5 rounds
                                             # (~15 min), from a start token only (as the peer)
    python benchmarks/decode.py --prompt-len 4   # also prefill a 4-token prompt (retrax only)
    python benchmarks/decode.py --rounds 1   # one retrax + peer pair (~3 min)
    python benchmarks/decode.py --quick      # smoke test: fewer repeats
    python benchmarks/decode.py --no-peer    # retrax only

Config M of ../shared/BENCHMARKS.md (vocab 256, d_model 256, d_ff 1024, 4
layers, 4 heads; max_len 2048) in ``'predict'`` mode with random weights
(``model.init``). Each call generates ``--new-tokens`` (128) tokens from the
start token alone (``--prompt-len 0``, the default: the peer's workload, like
for like) or after a random prompt of ``--prompt-len`` tokens (retrax does
more work than the peer then: the report says so), with ``eos_id=None`` (so
every row generates all 128). ``--prefill batched|loop`` forces how retrax
reads ``[start] + prompt`` (default ``auto``: through the decoding loop for at
most 8 positions). Methods: greedy (``temperature=0``), top-k sampling
(``temperature=1, top_k=40``) and nucleus sampling (``temperature=1,
top_p=0.9``).

Each batch size runs in a child process of its own. There, each method's
first call is timed (``first call``: tracing + XLA compile + one generation;
the model and JAX are already initialized), then ``--repeats`` timed calls per
method, round-robin over the methods so that machine noise hits all of them
alike; tokens/s = batch * 128 / median call time. Last, untimed, the child
counts the fusions in the compiled greedy program (``fusions``: the peer's has
128 at batch 1 and 139 at batch 8), a size that does not depend on the load. Each call is the full
public API: argument checks, a fresh cache state, the compiled generation and
the copy back to NumPy (so the clock stops only once the tokens exist).

``--rounds N`` (default 5) alternates: retrax (batch 1, batch 8), peer,
retrax, peer, ..., each a fresh process. "vs Flax KV" is the median over the
rounds of each round's own ratio (retrax tokens/s / that round's peer
tokens/s at the same batch), with its range (min-max); the other columns are,
per entry, the round with the median tokens/s. The 1-minute load average is
recorded at the start and end of the run and around each round (table and
JSON). The children run with retrax's persistent compilation cache off
(``RETRAX_COMPILATION_CACHE=0``), so ``first call`` is a cold compile as the
peer's is; ``--compile-cache`` keeps it on.

The Flax peer (``bench_flax.py --child decode --config M``) measures its
greedy ``fori_loop`` over a 128-long KV cache and a no-cache loop, batch 1
and 8, starting from a single start token. Ratios are retrax tokens/s over
the peer's KV-cache greedy tokens/s at the same batch; "first call vs Flax" is
retrax's greedy first call over the peer's KV-cache first call (median of the
rounds' ratios; lower is better; the target is <= 1.5x). "vs greedy" (and the
sampling targets) is paired: the median over repeats (and rounds) of
greedy call time / sampled call time, each pair timed back to back.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import CONFIGS, fmt_num, fmt_range, fmt_ratio, fmt_s, log, ratio  # noqa: E402

METHODS: dict[str, dict[str, Any]] = {
    "greedy": dict(temperature=0.0),
    "top_k": dict(temperature=1.0, top_k=40),
    "top_p": dict(temperature=1.0, top_p=0.9),
}
BATCHES = (1, 8)


def child_decode(methods: list[str], batch: int, new_tokens: int, prompt_len: int,
                 repeats: int, prefill: str = "auto") -> dict[str, Any]:
    """All ``methods`` at one batch size: first calls in order, then timed calls round-robin."""
    t_import = time.perf_counter()
    import jax
    import numpy as np

    import retrax as trax
    from retrax.supervised import decoding

    import_s = time.perf_counter() - t_import
    cfg = CONFIGS["M"]
    t0 = time.perf_counter()
    model = trax.models.TransformerLM(
        vocab_size=cfg["vocab"], d_model=cfg["d_model"], d_ff=cfg["d_ff"],
        n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], max_len=common.MAX_LEN,
        mode="predict")
    model.init(trax.shapes.ShapeDtype((batch, 1), np.int32))
    jax.block_until_ready(model.weights)
    init_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    prompt = (None if prompt_len == 0 else
              rng.integers(1, cfg["vocab"], (batch, prompt_len)).astype(np.int32))

    def make_call(method: str) -> Any:
        kwargs = dict(METHODS[method])
        if method != "greedy":
            kwargs["seed"] = 0
        if prefill != "auto":  # (older trees have no prefill argument)
            kwargs["prefill"] = prefill
        return lambda: decoding.autoregressive_sample(
            model, prompt, batch_size=batch, eos_id=None, max_length=new_tokens, **kwargs)

    calls = {m: make_call(m) for m in methods}
    res: dict[str, Any] = {}
    for method, call in calls.items():
        t0 = time.perf_counter()
        out = call()  # trace + compile + one generation: what a fresh call pays
        first = time.perf_counter() - t0
        res[method] = dict(
            impl="retrax", method=method, batch=batch, new_tokens=new_tokens,
            prompt_len=prompt_len, sampling=METHODS[method], first_call_s=first,
            output_shape=list(np.shape(out)),
            output_shape_ok=tuple(np.shape(out)) == (batch, new_tokens),
            first_tokens=np.asarray(out)[0, :8].tolist())
    times: dict[str, list[float]] = {m: [] for m in calls}
    for _ in range(repeats):  # round-robin: machine noise hits every method alike
        for method, call in calls.items():
            times[method] += common.time_repeats(call, 1)
    for method, ts in times.items():
        s = common.summarize(ts)
        res[method].update(call_s=s, tokens_per_s=batch * new_tokens / s["median"],
                           tokens_per_s_best=batch * new_tokens / s["min"],
                           ms_per_token_step=s["median"] / new_tokens * 1e3,
                           call_times_s=ts)
        if "greedy" in times:
            # Paired: each repeat times greedy and this method back to back, so
            # the ratio of the pair cancels slow drifts of the machine's load.
            pairs = [g / t for g, t in zip(times["greedy"], ts)]
            res[method]["vs_greedy_paired"] = statistics.median(pairs)
    return dict(batch=batch, import_s=import_s, init_s=init_s, prefill=prefill,
                cache_len=_cache_len(decoding, model, prompt_len + new_tokens),
                peak_rss_mib=common.peak_rss_mib(), methods=res,
                fusions=_fusions(decoding, model, prompt, batch, new_tokens, prefill))


def _fusions(decoding: Any, model: Any, prompt: Any, batch: int, new_tokens: int,
             prefill: str) -> int | None:
    """Fusions in the optimized HLO of the greedy program (compiled again, untimed)."""
    try:  # diagnostic only; trees before decoding.lowered_generation have none
        lowered = decoding.lowered_generation(model, prompt, batch_size=batch, temperature=0.0,
                                              eos_id=None, max_length=new_tokens,
                                              prefill=prefill)
        return lowered.compile().as_text().count(" fusion(")
    except Exception:  # noqa: BLE001
        return None


def _cache_len(decoding: Any, model: Any, total: int) -> int | None:
    try:  # diagnostic only: the cache length retrax picks for this call
        try:
            from retrax.supervised.decoding_checks import cache_length
        except ImportError:  # a tree from before decoding.py was split
            cache_length = decoding._cache_length
        return int(cache_length(model, total, "benchmark"))  # start + prompt + new - 1
    except Exception:  # noqa: BLE001
        return None


def _median_round(rounds: list[dict[str, Any]]) -> tuple[dict[str, Any], dict | None]:
    """Per entry, the round whose tokens/s is the median over the rounds."""
    def pick(entries: list[dict], key: str) -> dict | None:
        entries = [e for e in entries if e]
        if not entries:
            return None
        return sorted(entries, key=lambda e: e[key])[len(entries) // 2]

    retrax = {}
    for name in sorted({k for rd in rounds for k in rd["retrax"]}):
        entries = [rd["retrax"].get(name) for rd in rounds]
        retrax[name] = pick(entries, "tokens_per_s")
        paired = [e["vs_greedy_paired"] for e in entries if e and "vs_greedy_paired" in e]
        if retrax[name] is not None and paired:  # median over every round's ratio
            retrax[name] = dict(retrax[name], vs_greedy_paired=statistics.median(paired))
    peers = [rd["flax"] for rd in rounds if rd["flax"]]
    if not peers:
        return retrax, None
    flax = dict(peers[0])
    for key in [k for k in flax if k.startswith(("kv_cache_b", "no_cache_b"))]:
        flax[key] = pick([p.get(key) for p in peers], "tokens_per_s")
    return retrax, flax


def print_report(result: dict[str, Any]) -> None:
    m = result["machine"]
    print()
    print(f"machine: {m.get('cpu_model')} x{m.get('cpu_count')}, load avg at start "
          f"{m.get('loadavg_start')}, end {result.get('loadavg_end')}")
    peer = result.get("flax") or {}
    rows = []
    for b in BATCHES:
        greedy = (result["retrax"].get(f"greedy_b{b}") or {}).get("tokens_per_s")
        for method in result["methods"]:
            r = result["retrax"].get(f"{method}_b{b}")
            if not r:
                continue
            fx = (peer.get(f"kv_cache_b{b}") or {}).get("tokens_per_s")
            spread = (result.get("ratio_spread") or {}).get(f"{method}_b{b}")
            rows.append([f"retrax {method}", b, fmt_s(r["first_call_s"]),
                         fmt_range(r["call_s"]), fmt_num(r["tokens_per_s"]),
                         common.fmt_ratio_range(spread) if spread
                         else fmt_ratio(ratio(r["tokens_per_s"], fx)),
                         fmt_ratio(r.get("vs_greedy_paired",
                                         ratio(r["tokens_per_s"], greedy)))])
        for kind, label in (("kv_cache", "Flax KV cache (greedy)"),
                            ("no_cache", "Flax no cache (greedy)")):
            f = peer.get(f"{kind}_b{b}")
            if f:
                fx = (peer.get(f"kv_cache_b{b}") or {}).get("tokens_per_s")
                rows.append([label, b, fmt_s(f["first_call_s"]),
                             fmt_range(dict(median=f["gen_s_median"], min=f["gen_s_min"],
                                            max=f["gen_s_max"])),
                             fmt_num(f["tokens_per_s"]), fmt_ratio(ratio(f["tokens_per_s"], fx)),
                             "-"])
    print()
    if result["prompt_len"]:
        print(f"config M, {result['new_tokens']} new tokens; retrax reads a prompt of "
              f"{result['prompt_len']} tokens after the start token, the Flax peer the start "
              f"token only: retrax does more work (not like for like; --prompt-len 0 is)")
    else:
        print(f"config M, {result['new_tokens']} new tokens from a start token only (retrax and "
              f"Flax alike)")
    print(f"retrax prefill={result.get('prefill', 'auto')}; compiled greedy program: "
          + ", ".join(f"{(result['retrax'].get(f'greedy_b{b}') or {}).get('fusions', '-')} "
                      f"fusions (b{b})" for b in BATCHES)
          + " (Flax's KV-cache loop at 128 tokens: 128 at b1, 139 at b8)")
    print("vs Flax KV: median of the rounds' ratios (min-max); other columns: the median "
          "round's.")
    print(common.table(["method", "batch", "first call", "call median (min-max)", "tokens/s",
                        "vs Flax KV", "vs greedy"], rows))
    round_rows = []
    for i, rd in enumerate(result.get("rounds") or []):
        row = [i + 1, " ".join(f"{x:.2f}" for x in rd.get("loadavg_start") or []) or "-",
               " ".join(f"{x:.2f}" for x in rd.get("loadavg_end") or []) or "-"]
        for b in BATCHES:
            g = (rd["retrax"].get(f"greedy_b{b}") or {}).get("tokens_per_s")
            f = ((rd.get("flax") or {}).get(f"kv_cache_b{b}") or {}).get("tokens_per_s")
            row += [fmt_num(g), fmt_num(f), fmt_ratio(ratio(g, f))]
        round_rows.append(row)
    if round_rows:
        print()
        print("Rounds (alternating fresh processes; greedy tokens/s; load average 1/5/15 min):")
        print(common.table(["round", "load before", "load after"]
                           + [h for b in BATCHES for h in (f"retrax b{b}", f"Flax KV b{b}",
                                                           f"ratio b{b}")], round_rows))
    if result["targets"]:
        print()
        print(common.table(["target (BENCHMARKS.md)", "measured", "met"],
                           [[t["target"], t["measured"],
                             "-" if t["met"] is None else ("yes" if t["met"] else "NO")]
                            for t in result["targets"]]))
    if result["errors"]:
        print()
        for k, v in result["errors"].items():
            print(f"ERROR {k}: {v.strip().splitlines()[-1] if v.strip() else v}")


def round_ratios(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ``<method>_b<batch>``: median/min/max/values over the rounds of retrax tokens/s /
    the same round's peer KV-cache tokens/s at that batch (rounds missing either are skipped).
    """
    values: dict[str, list[float]] = {}
    for rd in rounds:
        peer = rd.get("flax") or {}
        for key, r in rd["retrax"].items():
            f = (peer.get(f"kv_cache_b{key.rsplit('_b', 1)[1]}") or {}).get("tokens_per_s")
            x = ratio(r.get("tokens_per_s"), f)
            if x is not None:
                values.setdefault(key, []).append(x)
    return {k: dict(common.summarize(v), values=v) for k, v in sorted(values.items())}


def first_call_ratios(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per ``greedy_b<batch>``: median/min/max/values over the rounds of retrax's greedy first
    call / the same round's peer KV-cache first call (lower is better)."""
    values: dict[str, list[float]] = {}
    for rd in rounds:
        peer = rd.get("flax") or {}
        for b in BATCHES:
            r = rd["retrax"].get(f"greedy_b{b}") or {}
            f = peer.get(f"kv_cache_b{b}") or {}
            x = ratio(r.get("first_call_s"), f.get("first_call_s"))
            if x is not None:
                values.setdefault(f"greedy_b{b}", []).append(x)
    return {k: dict(common.summarize(v), values=v) for k, v in sorted(values.items())}


def compute_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    peer = result.get("flax") or {}
    spreads = result.get("ratio_spread") or {}
    for b in BATCHES:
        spread = (result.get("first_call_spread") or {}).get(f"greedy_b{b}")
        if spread:
            like = "" if not result.get("prompt_len") else " (retrax with a prompt: not like for like)"
            out.append(dict(target=f"first call greedy M batch {b}: <= 1.5x Flax's (median of "
                                   f"rounds){like}",
                            measured=common.fmt_ratio_range(spread),
                            met=spread["median"] <= 1.5))
    for b in BATCHES:
        g, f = result["retrax"].get(f"greedy_b{b}"), peer.get(f"kv_cache_b{b}")
        spread = spreads.get(f"greedy_b{b}")
        if spread:
            r, shown = spread["median"], common.fmt_ratio_range(spread)
        elif g and f:
            r = g["tokens_per_s"] / f["tokens_per_s"]
            shown = fmt_ratio(r)
        else:
            continue
        out.append(dict(target=f"greedy M batch {b}: >= 1.2x Flax KV-cache loop "
                               f"(median of rounds)", measured=shown, met=r >= 1.2))
    for b in BATCHES:
        g = result["retrax"].get(f"greedy_b{b}")
        for method in result["methods"]:
            r = result["retrax"].get(f"{method}_b{b}")
            if method == "greedy" or not (g and r):
                continue
            x = r.get("vs_greedy_paired", r["tokens_per_s"] / g["tokens_per_s"])
            out.append(dict(target=f"{method} batch {b}: within 10% of greedy speed",
                            measured=f"{x:.2f}x greedy (paired)", met=x >= 0.9))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke test)")
    ap.add_argument("--no-peer", action="store_true", help="do not run the Flax peer")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {','.join(METHODS)}")
    ap.add_argument("--batches", default=",".join(str(b) for b in BATCHES))
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=0,
                    help="prompt tokens after the start token (default 0: the peer's workload; "
                         "4 was the default before)")
    ap.add_argument("--prefill", default="auto", choices=("auto", "batched", "loop"),
                    help="how retrax reads [start] + prompt (autoregressive_sample's prefill=)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls after the first (default 10, --quick 3)")
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating retrax / peer rounds (default 5); ratios are the median "
                         "of the rounds' ratios, with their range")
    ap.add_argument("--compile-cache", action="store_true",
                    help="keep retrax's persistent compilation cache on in the children "
                         "(first call is then a warm compile)")
    ap.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "decode.json"))
    ap.add_argument("--timeout", type=float, default=600, help="per child process, seconds")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 10)

    if args.child:
        res = child_decode(args.methods.split(","), args.batch, args.new_tokens,
                           args.prompt_len, repeats, args.prefill)
        print(json.dumps(res, default=common._json_default), flush=True)
        return

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(METHODS)}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    script = os.path.abspath(__file__)
    if not args.compile_cache:
        os.environ["RETRAX_COMPILATION_CACHE"] = "0"     # children compile cold, as the peer
    t_all = time.perf_counter()
    result: dict[str, Any] = dict(benchmark="decode", argv=sys.argv[1:],
                                  machine=common.machine_info(), config="M",
                                  model=CONFIGS["M"], new_tokens=args.new_tokens,
                                  prompt_len=args.prompt_len, prefill=args.prefill,
                                  repeats=repeats,
                                  methods=methods, retrax={}, flax=None, errors={},
                                  note="measured values; compare only within a run")
    rounds = []
    for r in range(max(1, args.rounds)):
        rd: dict[str, Any] = dict(retrax={}, flax=None, loadavg_start=common.loadavg())
        tag = f" (round {r + 1})" if args.rounds > 1 else ""
        log(f"round {r + 1}: load average {rd['loadavg_start']}")
        for b in batches:
            log(f"retrax {','.join(methods)} batch {b}{tag}")
            res, err = common.run_child(
                [script, "--child", "--methods", ",".join(methods), "--batch", str(b),
                 "--new-tokens", str(args.new_tokens), "--prompt-len", str(args.prompt_len),
                 "--repeats", str(repeats), "--prefill", args.prefill], timeout=args.timeout)
            if err:
                result["errors"][f"retrax_b{b}_r{r}"] = err
                continue
            for method, m in res["methods"].items():
                rd["retrax"][f"{method}_b{b}"] = dict(m, cache_len=res["cache_len"],
                                                      init_s=res["init_s"],
                                                      peak_rss_mib=res["peak_rss_mib"],
                                                      fusions=res.get("fusions"))
        if not args.no_peer:
            log(f"Flax peer decode (KV cache and no cache, batch 1 and 8){tag}")
            res, err = common.run_flax_peer(["--child", "decode", "--config", "M"],
                                            timeout=args.timeout)
            rd["flax"] = res
            if err:
                result["errors"][f"flax_decode_r{r}"] = err
            if res and res.get("new_tokens") != args.new_tokens:
                result["errors"]["flax_new_tokens"] = (
                    f"the peer generates {res.get('new_tokens')} tokens, retrax "
                    f"{args.new_tokens}; tokens/s stay comparable but cache lengths differ")
        rd["loadavg_end"] = common.loadavg()
        rounds.append(rd)
    result["retrax"], result["flax"] = _median_round(rounds)
    result["rounds"] = rounds
    result["ratio_spread"] = round_ratios(rounds)
    result["first_call_spread"] = first_call_ratios(rounds)
    result["loadavg_end"] = common.loadavg()
    result["targets"] = compute_targets(result)
    result["total_wall_s"] = time.perf_counter() - t_all
    path = common.write_json(args.out, result)      # first: a report bug loses no numbers
    print_report(result)
    print(f"\nwrote {path} (total {result['total_wall_s']:.0f} s)")
    if any(k.startswith("retrax") for k in result["errors"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
