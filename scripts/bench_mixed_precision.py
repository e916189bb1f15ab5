"""Train-step speed of Loop(compute_dtype='bfloat16') against float32, same run.

Alternating rounds (float32, bfloat16, float32, ...) of ``--steps`` Loop steps
each on a TransformerLM, after one warm-up round per dtype (compile excluded);
each clock stops only after blocking on the weights. Prints steps/s per round
and the median bfloat16/float32 ratio with its range, plus the load average
(timings on a busy machine are not worth much: say so when reporting them)::

    python scripts/bench_mixed_precision.py                       # seed model
    python scripts/bench_mixed_precision.py --d_model 512 --d_ff 2048 --n_layers 6 \\
        --batch 32 --length 128 --steps 20
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import retrax as trax  # noqa: E402
from retrax import layers as tl  # noqa: E402
from retrax.supervised import training  # noqa: E402


def batches(batch: int, length: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    while True:
        x = rng.integers(1, vocab, (batch, length)).astype(np.int32)
        yield x, x, np.ones((batch, length), np.float32)


def make_loop(args, dtype: str) -> training.Loop:
    model = trax.models.TransformerLM(vocab_size=args.vocab, d_model=args.d_model,
                                      d_ff=args.d_ff, n_layers=args.n_layers,
                                      n_heads=args.n_heads, max_len=max(args.length, 16))
    task = training.TrainTask(batches(args.batch, args.length, args.vocab),
                              tl.CrossEntropyLoss(), trax.optimizers.Adam(1e-3),
                              n_steps_per_checkpoint=10**9)
    return training.Loop(model, task, stdout=io.StringIO(), compute_dtype=dtype,
                         eval_at=lambda step: False, n_devices=1)


def timed(loop: training.Loop, steps: int) -> float:
    jax.block_until_ready(loop.model.weights)
    start = time.perf_counter()
    loop.run(steps)
    jax.block_until_ready(loop.model.weights)
    return steps / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=32)
    p.add_argument("--d_model", type=int, default=32)
    p.add_argument("--d_ff", type=int, default=128)
    p.add_argument("--n_layers", type=int, default=2)
    p.add_argument("--n_heads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--length", type=int, default=10)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    loops = {dtype: make_loop(args, dtype) for dtype in ("float32", "bfloat16")}
    for loop in loops.values():  # warm-up: compile and a few steps
        timed(loop, 3)
    rates: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for r in range(args.rounds):
        for dtype, loop in loops.items():
            rates[dtype].append(timed(loop, args.steps))
        print(f"round {r + 1}: float32 {rates['float32'][-1]:.1f} steps/s, "
              f"bfloat16 {rates['bfloat16'][-1]:.1f} steps/s", flush=True)
    ratios = [b / f for f, b in zip(rates["float32"], rates["bfloat16"])]
    print(f"device: {jax.devices()[0].device_kind} ({jax.devices()[0].platform}); "
          f"load average (1, 5, 15 min) at the end: {os.getloadavg()}")
    print(f"median float32 {statistics.median(rates['float32']):.1f} steps/s, bfloat16 "
          f"{statistics.median(rates['bfloat16']):.1f} steps/s; bfloat16/float32 median "
          f"{statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
