#!/usr/bin/env python3
"""What waking an idle core costs, and what it does to a product split across cores.

Usage (from the repository root, in the venv, on a quiet machine)::

    python benchmarks/parallel_wake.py                 # both parts, table + JSON
    python benchmarks/parallel_wake.py --out results/parallel_wake.json

Batch-8 greedy decoding of config M (``benchmarks/decode.py``) spends most of
each token in products of 8 rows with weight matrices; XLA's CPU runtime hands
the larger ones (8x256x1024) to Eigen, which splits each over the cores of
its thread pool and waits for every part. A pool thread that found no work
for a while sleeps, and waking it is the operating system's business. This
script measures both halves of that story:

1. **Thread wake-up**: two Python threads, pinned to two different cores,
   pass a token back and forth; the time from ``Event.set`` in one to the
   return of ``Event.wait`` in the other, after the receiving core sat idle
   for ``gap`` (median of many passes). A short gap measures the interpreter's
   own cost; the growth with the gap is what the idle core adds (on a virtual
   machine: the host rescheduling a halted virtual CPU).
2. **A split product after idle time**: a compiled loop (200 iterations) in
   which an 8x256 @ 256x1024 float32 product follows a chain of ``n`` small
   single-core steps (8x64 @ 64x64 and a tanh). The product's cost is the
   loop's time per iteration minus that of the same loop without it. With
   ``n = 0`` the other core is still busy from the previous product; the
   longer the chain, the longer that core has been idle. The same loops run
   again in a child process that may use one core only (its thread pool has
   one thread: nothing is split, nothing waits). Compiled with the decoding
   programs' options (``decoding_programs.DECODING_COMPILER_OPTIONS``).

Needs two or more cores for this process (part 1 is skipped otherwise). The
numbers are the machine's, not retrax's: ``benchmarks/README.md`` explains
what they mean for decoding. Prints a table and writes JSON (default
``benchmarks/results/parallel_wake.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

GAPS_S = (0.0, 20e-6, 100e-6, 500e-6, 2e-3)
CHAINS = (0, 2, 5, 10, 20, 40)


def wake_latency(gap_s: float, cores: tuple[int, int], allowed: set[int],
                 passes: int = 200) -> dict[str, Any]:
    """Seconds from ``set`` on ``cores[0]`` to the wake-up on ``cores[1]`` (summary).

    The calling thread is pinned to ``cores[0]`` meanwhile and given back
    ``allowed`` afterwards.
    """
    ping, pong = threading.Event(), threading.Event()
    sent: list[float] = []
    woke: list[float] = []

    def receiver() -> None:
        os.sched_setaffinity(0, {cores[1]})
        for _ in range(passes):
            ping.wait()
            woke.append(time.perf_counter())
            ping.clear()
            pong.set()

    thread = threading.Thread(target=receiver, daemon=True)
    os.sched_setaffinity(0, {cores[0]})
    try:
        thread.start()
        time.sleep(0.01)
        for _ in range(passes):
            if gap_s:
                deadline = time.perf_counter() + gap_s
                if gap_s >= 1e-3:
                    time.sleep(gap_s)
                while time.perf_counter() < deadline:  # short gaps: spin here, the receiver idles
                    pass
            sent.append(time.perf_counter())
            ping.set()
            pong.wait()
            pong.clear()
        thread.join()
    finally:
        os.sched_setaffinity(0, allowed)
    return common.summarize([b - a for a, b in zip(sent, woke)])


def product_after_chain(chain: int, rounds: int) -> dict[str, Any]:
    """Seconds per iteration of the loop with and without the product (medians of rounds)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    from retrax.supervised.decoding_programs import DECODING_COMPILER_OPTIONS

    k, n, rows, steps = 256, 1024, 8, 200
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.random((k, n), np.float32))
    s = jnp.asarray(rng.random((64, 64), np.float32) / 64)

    def build(with_product: bool) -> Any:
        def loop(w: Any, s: Any) -> Any:
            def body(i: Any, c: Any) -> Any:
                y = c[:, :64]
                for _ in range(chain):
                    y = jnp.tanh(y @ s)  # small: XLA runs it on one core
                z = jnp.concatenate([y, c[:, 64:k]], axis=1)
                if with_product:
                    return c * 0.5 + (z @ w) * 1e-3
                return c * 0.5 + jnp.pad(z, ((0, 0), (0, n - k)))
            return lax.fori_loop(0, steps, body, jnp.ones((rows, n), jnp.float32))
        return jax.jit(loop, compiler_options=DECODING_COMPILER_OPTIONS)  # as decoding

    fns = {"with": build(True), "without": build(False)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        jax.block_until_ready(fn(w, s))
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(w, s))
            times[name].append((time.perf_counter() - start) / steps)
    med = {name: statistics.median(t) for name, t in times.items()}
    return dict(chain=chain, step_s=med["with"], step_without_s=med["without"],
                product_s=med["with"] - med["without"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="timed rounds per loop (default 15)")
    ap.add_argument("--out", default=os.path.join(common.RESULTS_DIR, "parallel_wake.json"))
    ap.add_argument("--child-one-core", type=int, default=None, metavar="CORE",
                    help=argparse.SUPPRESS)  # part 2 pinned to CORE; prints one JSON line
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1; got {args.rounds}.")
    if args.child_one_core is not None:
        os.sched_setaffinity(0, {args.child_one_core})  # before JAX makes its thread pool
        print(json.dumps(dict(products=[product_after_chain(c, args.rounds) for c in CHAINS])))
        return 0

    allowed = set(os.sched_getaffinity(0))
    result: dict[str, Any] = dict(machine=common.machine_info(), load_before=common.loadavg())
    if len(allowed) >= 2:
        cores = tuple(sorted(allowed))[:2]
        wake = [dict(gap_s=g, **wake_latency(g, cores, allowed)) for g in GAPS_S]
        result["wake"] = wake
        print(f"1. Thread wake-up between cores {cores[0]} and {cores[1]} (Python threads; "
              "median of 200 passes)")
        print(common.table(["receiver idle before", "set -> wake (median)", "min", "max"],
                           [[f"{w['gap_s'] * 1e6:.0f} us", f"{w['median'] * 1e6:.1f} us",
                             f"{w['min'] * 1e6:.1f} us", f"{w['max'] * 1e6:.1f} us"]
                            for w in wake]))
    else:
        print("1. Thread wake-up: skipped (this process may use one core only)")
    products = [product_after_chain(c, args.rounds) for c in CHAINS]
    result["product_after_chain"] = products
    one_core, error = common.run_child(
        [os.path.abspath(__file__), "--child-one-core", str(min(allowed)),
         "--rounds", str(args.rounds)], timeout=600)
    one_rows = (one_core or {}).get("products")
    result["product_after_chain_one_core"] = one_rows
    if error:  # part 2's own numbers still stand; the one-core column shows "-"
        result["one_core_error"] = error
        print(f"one-core child failed: {error}", file=sys.stderr)
    one = {p["chain"]: p["product_s"] for p in one_rows or []}
    result["load_after"] = common.loadavg()
    print(f"\n2. An 8x256 @ 256x1024 float32 product after n small one-core steps (per loop "
          f"iteration, median of {args.rounds} rounds; {len(allowed)} cores, then one)")
    print(common.table(
        ["n", "iteration", "without the product", "the product", "the product, one core"],
        [[p["chain"], f"{p['step_s'] * 1e6:.1f} us", f"{p['step_without_s'] * 1e6:.1f} us",
          f"{p['product_s'] * 1e6:.1f} us",
          "-" if p["chain"] not in one else f"{one[p['chain']] * 1e6:.1f} us"]
         for p in products]))
    print(f"\nwrote {common.write_json(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
