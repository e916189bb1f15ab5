"""Input pipeline throughput against what the config-M train step consumes; Loop prefetch.

    python benchmarks/data_pipeline.py                  # 1-2 minutes on 2 CPU cores
    python benchmarks/data_pipeline.py --measure-step   # also times retrax's config-M step

1. **Pipeline alone.** The language-model pipeline of ``examples/train_lm.py``
   (stdlib ``.py`` files -> TextDocuments -> Tokenize(bytes) -> PackSequences ->
   Shuffle(1024) -> Batch -> ConcatenateToLMInput -> AddLossWeights) at config
   M's shapes, batch 16 x seq 256, measured in tokens per second: bare, and
   with a ``state_dict()`` snapshot after every batch as the Loop's prefetch
   thread takes for resumable streams.
2. **Consumption.** Config M trains on 16 x 256 = 4,096 tokens per step. The
   Flax step takes 1.91 s on this machine (../shared/BENCHMARKS.md), i.e.
   about 2,144 tokens/s; ``--measure-step`` times retrax's own config-M step
   in this run (compile, then ``--step-repeats`` steps) and uses it instead.
   The target is a pipeline at least 10x faster than the step consumes.
3. **Prefetch overlap.** A small TransformerLM whose data iterator takes as
   long as its train step (a ``sleep``), with ``prefetch`` off and on: when
   the Loop waits for each step's result (logging every step), prefetch hides
   the data time; with the default logging interval JAX's asynchronous
   dispatch already overlaps them.

Prints a table and, last, one JSON line with every number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "examples"))

import train_lm  # noqa: E402  (the example's corpus split and pipeline)

import retrax as trax  # noqa: E402
from retrax import data  # noqa: E402
from retrax import layers as tl  # noqa: E402
from retrax.supervised import training  # noqa: E402

M = dict(vocab=256, d_model=256, d_ff=1024, n_layers=4, n_heads=4, batch=16, seq=256)
FLAX_M_STEP_S = 1.91  # ../shared/BENCHMARKS.md, Flax NNX, config M, this machine.


def pipeline_rate(n_batches: int, repeats: int, snapshot: bool) -> list[float]:
    """Tokens/s of the LM pipeline at config M's shapes, ``repeats`` timings."""
    root, files = train_lm.stdlib_files()
    train_files, _ = train_lm.split_files(root, files, 10)
    task = {"seq_len": M["seq"], "batch_size": M["batch"], "shuffle_queue": 1024}
    stream = train_lm.lm_pipeline(train_files, data.ByteTokenizer(), task, seed=0)()
    for _ in range(20):  # Fill the shuffle buffer first.
        next(stream)
    rates = []
    for _ in range(repeats):
        start, tokens = time.perf_counter(), 0
        for _ in range(n_batches):
            x, _, w = next(stream)
            tokens += x.size
            if snapshot:
                stream.state_dict()
        rates.append(tokens / (time.perf_counter() - start))
    return rates


def random_batches(batch: int, seq: int, vocab: int, delay: float = 0.0) -> Any:
    rng = np.random.default_rng(0)
    while True:
        if delay:
            time.sleep(delay)
        x = rng.integers(0, vocab, (batch, seq)).astype(np.int32)
        yield x, x, np.ones((batch, seq), np.float32)


def make_loop(cfg: dict, batches: Any, **loop_kw: Any) -> training.Loop:
    model = trax.models.TransformerLM(
        vocab_size=cfg["vocab"], d_model=cfg["d_model"], d_ff=cfg["d_ff"],
        n_layers=cfg["n_layers"], n_heads=cfg["n_heads"], max_len=cfg["seq"], dropout=0.1)
    task = training.TrainTask(batches, tl.CrossEntropyLoss(), trax.optimizers.Adam(1e-3),
                              n_steps_per_checkpoint=10**9)
    return training.Loop(model, task, stdout=io.StringIO(), **loop_kw)


def seconds_per_step(loop: training.Loop, n: int) -> float:
    loop.run(2)  # Compile and warm up.
    jax.block_until_ready(loop._weights)
    start = time.perf_counter()
    loop.run(n)
    jax.block_until_ready(loop._weights)
    return (time.perf_counter() - start) / n


def overlap(repeats: int, n_steps: int) -> dict:
    cfg = dict(vocab=256, d_model=64, d_ff=256, n_layers=2, n_heads=4, batch=16, seq=64)
    step = seconds_per_step(make_loop(cfg, random_batches(16, 64, 256)), n_steps)
    out: dict[str, Any] = {"step_s": step, "data_s": step}
    for mode, extra in (("log_every_step", {"eval_at": lambda n: True}), ("default", {})):
        for prefetch in (False, True):
            times = [seconds_per_step(make_loop(cfg, random_batches(16, 64, 256, step),
                                                prefetch=prefetch, **extra), n_steps)
                     for _ in range(repeats)]
            out[f"{mode}_prefetch_{prefetch}_s"] = statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=200, help="batches per timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure-step", action="store_true",
                        help="time retrax's config-M train step in this run")
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--no-overlap", action="store_true", help="skip the prefetch part")
    args = parser.parse_args()

    bare = pipeline_rate(args.batches, args.repeats, snapshot=False)
    snap = pipeline_rate(args.batches, args.repeats, snapshot=True)
    tokens_per_step = M["batch"] * M["seq"]
    if args.measure_step:
        step_s = seconds_per_step(make_loop(M, random_batches(M["batch"], M["seq"], M["vocab"])),
                                  args.step_repeats)
        step_source = f"retrax config-M step measured in this run ({args.step_repeats} steps)"
    else:
        step_s, step_source = FLAX_M_STEP_S, "Flax config-M step from ../shared/BENCHMARKS.md"
    consumed = tokens_per_step / step_s
    ratio = min(snap) / consumed
    results: dict[str, Any] = {
        "pipeline_tokens_per_s": {"median": statistics.median(bare), "min": min(bare),
                                  "max": max(bare)},
        "pipeline_with_state_snapshots_tokens_per_s": {
            "median": statistics.median(snap), "min": min(snap), "max": max(snap)},
        "m_step_s": step_s, "m_step_source": step_source, "m_tokens_per_s": consumed,
        "ratio_worst_pipeline_over_m": ratio, "target_ratio": 10, "ok": ratio >= 10,
        "device": str(jax.devices()[0]), "load_average": os.getloadavg(),
    }
    print(f"LM pipeline, batch {M['batch']} x seq {M['seq']} (median, min-max of "
          f"{args.repeats} x {args.batches} batches):")
    print(f"  bare                         {statistics.median(bare):>12,.0f} tokens/s "
          f"({min(bare):,.0f}-{max(bare):,.0f})")
    print(f"  + state_dict() per batch     {statistics.median(snap):>12,.0f} tokens/s "
          f"({min(snap):,.0f}-{max(snap):,.0f})")
    print(f"Config M consumes {tokens_per_step} tokens per {step_s:.2f} s step = "
          f"{consumed:,.0f} tokens/s ({step_source}).")
    print(f"Slowest pipeline timing / consumption = {ratio:,.0f}x (target >= 10x): "
          f"{'OK' if ratio >= 10 else 'FAIL'}")
    if not args.no_overlap:
        ov = overlap(args.repeats, 20)
        results["prefetch_overlap"] = ov
        print(f"\nPrefetch: small TransformerLM step {ov['step_s'] * 1e3:.0f} ms, data "
              f"{ov['data_s'] * 1e3:.0f} ms per batch (sleep); seconds per step, median of "
              f"{args.repeats}:")
        for mode, label in (("log_every_step", "Loop syncs every step (logs each step)"),
                            ("default", "default logging (async dispatch)")):
            off, on = ov[f"{mode}_prefetch_False_s"], ov[f"{mode}_prefetch_True_s"]
            print(f"  {label:<40} prefetch off {off * 1e3:6.0f} ms, on {on * 1e3:6.0f} ms")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
