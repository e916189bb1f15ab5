"""Reproduces retrax's pretrained sort model (``retrax.pretrained.load('sort-transformer')``).

The quick-start notebook loads ``gs://ml-intro/models/sort-transformer.pkl.gz``,
a TransformerLM that sorts four integers. That file is not reachable from most
machines, so retrax trains the same model from a fixed seed and ships it:

    python scripts/train_sort_model.py            # ~2 minutes on a 2-core CPU

It writes ``retrax/pretrained/sort-transformer.safetensors`` (weights only,
plus the model's config in the metadata, so ``retrax sample PATH`` and
``retrax show PATH`` can rebuild the model from the file alone) and prints the
exact-sort accuracy on 1,000 held-out random inputs.

    python scripts/train_sort_model.py --relabel   # no training

re-writes an existing file with the model config recorded and checks that
every weight array is bit-identical to the old file's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import numpy as np

import retrax as trax
from retrax import checkpoints
from retrax import layers as tl
from retrax.data import sort_ints_task
from retrax.supervised import decoding, training

CONFIG = dict(d_model=32, d_ff=128, n_layers=2, vocab_size=32)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "retrax", "pretrained", "sort-transformer.safetensors")
SIGNATURE = trax.shapes.ShapeDtype((1, 1), np.int32)


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


def predict_model() -> trax.layers.Layer:
    """The shipped model's architecture in predict mode; it records its own config."""
    return trax.models.TransformerLM(**CONFIG, mode="predict")


def write_shipped(model: trax.layers.Layer, out: str) -> dict[str, Any]:
    """Writes ``model``'s weights and config to ``out``; returns the config it recorded.

    The config is the model's own record (``retrax.models.config_of(model)``, the form
    ``retrax.models.from_config`` and the ``retrax`` command read), checked
    after writing so that a file without it is never shipped.
    """
    config = trax.models.config_of(model)
    if not isinstance(config, dict) or "kwargs" not in config:
        raise ValueError(f"write_shipped: the model records no config (config_of(model) is "
                         f"{config!r}); build it with a retrax.models function.")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    checkpoints.save_native(out, model.weights, input_signature=SIGNATURE, model_config=config)
    written = checkpoints.read_any(out)["meta"].get("model")
    if written != config:
        raise ValueError(f"write_shipped: {out} records the model config {written!r}, "
                         f"expected {config!r}.")
    return config


def same_arrays(a: list[Any], b: list[Any]) -> bool:
    """True when both lists hold arrays of the same dtypes, shapes and bytes."""
    return len(a) == len(b) and all(
        np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
        and np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a, b))


def relabel(out: str) -> None:
    """Re-writes ``out`` with the model config recorded; the weights stay bit-identical."""
    before = checkpoints.read_any(out)["flat_weights"]
    model = predict_model()
    model.init_from_file(out, weights_only=True, input_signature=SIGNATURE)
    config = write_shipped(model, out)
    after = checkpoints.read_any(out)["flat_weights"]
    if not same_arrays(before, after):
        raise ValueError(f"relabel: the weights of {out} changed while re-writing it.")
    print(f"re-wrote {out} with model config {config} ({len(after)} weight arrays unchanged)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--relabel", action="store_true",
                        help="re-write --out with the model config recorded (no training)")
    args = parser.parse_args()
    if args.relabel:
        relabel(args.out)
        return

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
        predict = predict_model()
        predict.init_from_file(os.path.join(tmp, "model.pkl.gz"), weights_only=True,
                               input_signature=SIGNATURE)
    accuracy = exact_sort_accuracy(predict)
    print(f"exact sorts on 1000 held-out inputs: {accuracy:.1%}")
    write_shipped(predict, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
