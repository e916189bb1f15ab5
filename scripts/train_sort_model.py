"""Reproduces retrax's pretrained sort model (``retrax.pretrained.load('sort-transformer')``).

The quick-start notebook loads ``gs://ml-intro/models/sort-transformer.pkl.gz``,
a TransformerLM that sorts four integers. That file is not reachable from most
machines, so retrax trains the same model from a fixed seed and ships it:

    python scripts/train_sort_model.py            # ~2 minutes on a 2-core CPU

It writes ``retrax/pretrained/sort-transformer.safetensors`` (weights only)
and prints the exact-sort accuracy on 1,000 held-out random inputs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

import retrax as trax
from retrax import layers as tl
from retrax.data import sort_ints_task
from retrax.supervised import decoding, training

CONFIG = dict(d_model=32, d_ff=128, n_layers=2, vocab_size=32)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "retrax", "pretrained", "sort-transformer.safetensors")


def exact_sort_accuracy(model: trax.layers.Layer, n: int = 1000, seed: int = 12345,
                        batch: int = 250) -> float:
    rng = np.random.default_rng(seed)
    correct = 0
    for start in range(0, n, batch):
        src = rng.integers(1, 31, (min(batch, n - start), 4), dtype=np.int32)
        zero = np.zeros((len(src), 1), np.int32)
        prompt = np.concatenate([zero, src, zero], axis=1)
        out = decoding.autoregressive_sample(model, prompt, batch_size=len(src),
                                             temperature=0.0, max_length=4, eos_id=None)
        correct += int((out == np.sort(src, axis=1)).all(axis=1).sum())
    return correct / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()

    t0 = time.time()
    data = sort_ints_task(64, seed=args.seed)
    eval_data = sort_ints_task(64, seed=args.seed + 1)
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.005),
                              lr_schedule=trax.lr.warmup_and_rsqrt_decay(200, 0.005),
                              n_steps_per_checkpoint=500)
    eval_task = training.EvalTask(eval_data, [tl.CrossEntropyLoss(), tl.SequenceAccuracy()],
                                  n_eval_batches=4)
    with tempfile.TemporaryDirectory() as tmp:
        loop = training.Loop(trax.models.TransformerLM(**CONFIG), task, eval_tasks=[eval_task],
                             output_dir=tmp, random_seed=args.seed)
        loop.run(args.steps)
        predict = trax.models.TransformerLM(**CONFIG, mode="predict")
        sig = trax.shapes.ShapeDtype((1, 1), np.int32)
        predict.init_from_file(os.path.join(tmp, "model.pkl.gz"), weights_only=True,
                               input_signature=sig)
    accuracy = exact_sort_accuracy(predict)
    print(f"exact sorts on 1000 held-out inputs: {accuracy:.1%}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    predict.save_to_file(args.out, weights_only=True, input_signature=sig)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
