"""The TransformerLM quick start, importable: ``retrax quickstart`` runs :func:`main`.

It performs every code cell of Trax's "TransformerLM Quick Start and Guide"
notebook with retrax and prints what each cell shows:

1. the pretrained sort model on ``[0, 3, 15, 14, 9, 0]`` -> ``[[ 3  9 14 15]]``;
2. a batch of the reverse task;
3. ``TrainTask``/``EvalTask``/``Loop`` training a TransformerLM for 1000 steps;
4. that model reloaded in ``'predict'`` mode: ``[0, 4, 6, 8, 10, 0]`` -> ``[[10  8  6  4]]``;
5. the model's layer tree and the notebook's layer concepts.

``examples/quick_start.py`` is the same notebook as a script (and
``examples/quick_start.ipynb`` as a notebook); this module is the product
version: functions, a seeded random state instead of NumPy's global one (its
draws equal the script's ``np.random.seed(0)`` draws), and the output directory
and step count as arguments.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["main", "tiny_transformer_lm", "reverse_ints_task", "NOTEBOOK_CHECKPOINT"]

NOTEBOOK_CHECKPOINT = "gs://ml-intro/models/sort-transformer.pkl.gz"


def tiny_transformer_lm(mode: str = "train") -> Any:
    """The notebook's model: ``TransformerLM(d_model=32, d_ff=128, n_layers=2, vocab_size=32)``."""
    import retrax as trax

    return trax.models.TransformerLM(d_model=32, d_ff=128, n_layers=2, vocab_size=32, mode=mode)


def reverse_ints_task(batch_size: int, length: int = 4,
                      rng: np.random.RandomState | None = None) -> Iterator[tuple]:
    """The notebook's generator: rows ``[0, src, 0, reversed src]`` with loss weights."""
    rng = np.random.RandomState(0) if rng is None else rng
    while True:
        source = rng.randint(1, 31, (batch_size, length))
        target = np.flip(source, 1)
        zero = np.zeros([batch_size, 1], np.int32)
        x = np.concatenate([zero, source, zero, target], axis=1)
        loss_weights = np.concatenate([np.zeros((batch_size, length + 2)),
                                       np.ones((batch_size, length))], axis=1)
        yield (x, x, loss_weights)  # Inputs and targets are the same.


def _section(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


def sort_with_pretrained() -> np.ndarray:
    """Cell 1: the pretrained sort model (retrax's stand-in when gs:// is unreachable)."""
    import retrax as trax

    model = trax.models.TransformerLM(d_model=32, d_ff=128, n_layers=2, vocab_size=32,
                                      mode="predict")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.init_from_file(NOTEBOOK_CHECKPOINT, weights_only=True,
                             input_signature=trax.shapes.ShapeDtype((1, 1), dtype=np.int32))
    for w in caught:
        print(f"note: {w.message}")
    output = trax.supervised.decoding.autoregressive_sample(
        model, np.array([[0, 3, 15, 14, 9, 0]]), temperature=0.0, max_length=4)
    print(output)
    return output


def train_reverse_model(output_dir: str, steps: int, rng: np.random.RandomState) -> Any:
    """Cells 3-5: the reverse task, a look at one batch, and the training Loop."""
    import retrax as trax
    from retrax import layers as tl
    from retrax.supervised import training

    reverse_ints_inputs = reverse_ints_task(16, rng=rng)
    sequence_batch, _, masks = next(reverse_ints_task(8, rng=rng))
    print(sequence_batch)
    print("loss weights of row 0:", masks[0])

    _section("Train the model")
    train_task = training.TrainTask(
        labeled_data=reverse_ints_inputs,
        loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(0.01),
        n_steps_per_checkpoint=500,
    )
    eval_task = training.EvalTask(
        labeled_data=reverse_ints_inputs,
        metrics=[tl.CrossEntropyLoss(), tl.Accuracy()],
        n_eval_batches=20,  # For less variance in eval numbers.
    )
    # The notebook's `!rm -f ~/train_dir/model.pkl.gz`: otherwise the Loop resumes.
    old = os.path.join(output_dir, "model.pkl.gz")
    if os.path.exists(old):
        os.remove(old)
    loop = training.Loop(tiny_transformer_lm(), train_task, eval_tasks=[eval_task],
                         output_dir=output_dir)
    loop.run(steps)
    if steps % 500:  # Not in the notebook: keep the last step when it is no checkpoint step.
        loop.save_checkpoint()
    return loop


def reverse_with_trained(output_dir: str) -> np.ndarray:
    """Cell 6: the trained model in predict mode reverses ``[4, 6, 8, 10]``."""
    import retrax as trax

    predict_model = tiny_transformer_lm(mode="predict")
    predict_signature = trax.shapes.ShapeDtype((1, 1), dtype=np.int32)
    predict_model.init_from_file(os.path.join(output_dir, "model.pkl.gz"), weights_only=True,
                                 input_signature=predict_signature)
    output = trax.supervised.decoding.autoregressive_sample(
        predict_model, np.array([[0, 4, 6, 8, 10, 0]]), temperature=0.0, max_length=4)
    print(output)
    return output


def layer_concepts() -> None:
    """The notebook's last part: layers, n_in/n_out, weights, Serial, Branch, Residual."""
    import retrax as trax
    from retrax import layers as tl

    x = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
    relu = tl.Relu()
    print("Relu:", relu.n_in, "in,", relu.n_out, "out;", relu(x))
    dense = tl.Dense(3)
    dense.init(trax.shapes.signature(x))
    w, b = dense.weights
    print(f"{dense.name}: W {w.shape}, b {b.shape}")
    concat = tl.Concatenate()
    print(f"{concat.name}: n_in={concat.n_in}, n_out={concat.n_out}")
    branch = tl.Branch(tl.Dense(2), tl.Dense(3))
    branch.init(trax.shapes.signature(x))
    print(branch, "->", [y.shape for y in branch(x)])
    residual = tl.Residual(tl.Dense(5))
    residual.init(trax.shapes.signature(x))
    print(residual)
    print("Residual output shape:", residual(x).shape)


def main(output_dir: str | None = None, steps: int = 1000) -> dict[str, np.ndarray]:
    """Runs every cell and prints the results; returns the two decoded outputs."""
    start = time.time()
    if output_dir is None:
        output_dir = os.environ.get("RETRAX_TRAIN_DIR", "~/train_dir/")
    output_dir = os.path.expanduser(output_dir)

    _section("Using a pre-trained TransformerLM: sort [3, 15, 14, 9]")
    sorted_ids = sort_with_pretrained()

    _section("Prepare the dataset: a batch of the reverse task")
    rng = np.random.RandomState(0)  # The script's np.random.seed(0), without global state.
    train_reverse_model(output_dir, steps, rng)

    _section("Make predictions: reverse [4, 6, 8, 10]")
    reversed_ids = reverse_with_trained(output_dir)

    _section("Looking inside the TransformerLM")
    print(tiny_transformer_lm())
    layer_concepts()

    print(f"\nquick start finished in {time.time() - start:.1f} s "
          f"(checkpoints in {output_dir})")
    sys.stdout.flush()
    return {"sorted": sorted_ids, "reversed": reversed_ids}


if __name__ == "__main__":
    main()
