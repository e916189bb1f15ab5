#!/usr/bin/env python3
"""Python calls per ``Loop.run`` step (config S of ../shared/BENCHMARKS.md): host work, counted.

Usage (from the repository root, in the venv)::

    python benchmarks/loop_host_calls.py            # both patterns, top sources
    python benchmarks/loop_host_calls.py --depth 4  # attribute calls deeper

The Loop and its data are built as in ``benchmarks/train.py`` (TransformerLM S,
Adam, four fixed batches cycled, ``output_dir=None``). Calls are counted with
``sys.setprofile`` in the Loop's thread (Python functions and C builtins; the
compiled step's own C++ dispatch is one opaque call) and do not depend on
the machine's load, so this can run beside other work, unlike a timing.
Two patterns: ``Loop.run(200)`` once (the default log steps 100 and 200
included), and ``Loop.run(10)`` blocks as ``benchmarks/train.py`` times them
(each followed by ``jax.block_until_ready`` on the weights, state and slots;
those calls are counted apart).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build_loop() -> Any:
    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import training

    cfg = common.CONFIGS["S"]
    b, t, v = cfg["batch"], cfg["seq"], cfg["vocab"]
    rng = np.random.default_rng(0)
    ones = np.ones((b, t), np.float32)
    batches = [(x, x, ones) for x in (rng.integers(1, v, (b, t)).astype(np.int32)
                                      for _ in range(4))]

    def data():
        i = 0
        while True:
            yield batches[i % len(batches)]
            i += 1

    model = trax.models.TransformerLM(
        vocab_size=v, d_model=cfg["d_model"], d_ff=cfg["d_ff"], n_layers=cfg["n_layers"],
        n_heads=cfg["n_heads"], dropout=common.DROPOUT, max_len=common.MAX_LEN, mode="train")
    task = training.TrainTask(labeled_data=data(), loss_layer=tl.CrossEntropyLoss(),
                              optimizer=trax.optimizers.Adam(1e-3, weight_decay_rate=0.0,
                                                             eps=1e-8))
    return training.Loop(model, task, eval_tasks=None, output_dir=None)


def count_calls(fn, depth: int) -> tuple[int, collections.Counter]:
    """Calls made while ``fn()`` runs, and their count by the ``depth`` frames below ``fn``."""
    stack: list[str] = []
    by_path: collections.Counter = collections.Counter()
    total = 0

    def profile(frame, event, arg):
        nonlocal total
        if event in ("call", "c_call"):
            if event == "c_call":
                name = f"C:{getattr(arg, '__qualname__', arg)}"
            else:
                name = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"
            stack.append(name)
            total += 1
            by_path[" > ".join(stack[1:depth + 1]) or stack[0]] += 1  # below fn itself
        elif event in ("return", "c_return", "c_exception") and stack:
            stack.pop()

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return total, by_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=3, help="frames a call is attributed by")
    ap.add_argument("--top", type=int, default=12, help="sources shown per pattern")
    args = ap.parse_args()
    import jax

    def block(loop):
        jax.block_until_ready((loop._weights, loop._state, loop._slots))

    loop = build_loop()
    loop.run(1)  # compiles (as train.py's first step)
    block(loop)
    for name, k, n in (("Loop.run(200) once", 200, 200), ("Loop.run(10) blocks", 10, 200)):
        def work(loop=loop, k=k, n=n):
            for _ in range(n // k):
                loop.run(k)
                block(loop)

        total, by_path = count_calls(work, args.depth)
        harness = sum(c for p, c in by_path.items() if p.startswith("loop_host_calls.py:block"))
        print(f"{name}: {(total - harness) / n:.1f} Loop calls per step "
              f"({harness / n:.1f} more in block_until_ready)")
        for path, c in by_path.most_common(args.top):
            print(f"  {c / n:8.2f}  {path}")


if __name__ == "__main__":
    main()
