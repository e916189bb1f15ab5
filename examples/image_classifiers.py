"""An MLP and a small ResNet classifying image-shaped arrays, written as a Trax program.

    python examples/image_classifiers.py --model mlp      # 300 steps, ~10 s on 2 CPU cores
    python examples/image_classifiers.py --model resnet   # 300 steps, ~1 min
    python examples/image_classifiers.py --model resnet --steps 30 --n-blocks 1

The models are Trax's: ``trax.models.MLP`` (``Flatten`` then ``Dense`` layers;
the last width is the number of classes) and ``trax.models.WideResnet``
(convolutions, ``BatchNorm``, ``AvgPool``, for 32x32 images). Both return
logits; the loss and metrics are ``tl.WeightedCategoryCrossEntropy`` and
``tl.WeightedCategoryAccuracy``, as in Trax's MNIST example. The ResNet has
state (BatchNorm's running statistics): the Loop evaluates with a
``mode='eval'`` copy, and the final accuracy comes from a ``mode='eval'``
model loaded with weights *and* state from the Loop's ``model.pkl.gz``.
From a Trax program only the imports changed (``import trax`` ->
``import retrax as trax``, ``from trax ...`` -> ``from retrax ...``).

Data: 32x32x3 float images of ``--n-classes`` classes. Class ``k`` is a
grating (stripes) at angle ``k * 180 / n_classes`` degrees, with a random
phase, a random stripe width, a random colour and Gaussian noise, so the
class is the orientation, wherever the stripes fall.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

import retrax as trax
from retrax import layers as tl
from retrax.supervised import training

IMAGE_SHAPE = (32, 32, 3)


# --- Data ------------------------------------------------------------------------

def make_images(n: int, n_classes: int, rng: np.random.Generator, noise: float = 0.3):
    """``n`` images ``(n, 32, 32, 3)`` float32 and their labels ``(n,)`` int32."""
    labels = rng.integers(0, n_classes, n)
    angle = np.pi * labels / n_classes
    period = rng.uniform(4.0, 8.0, n)
    phase = rng.uniform(0.0, 2 * np.pi, n)
    yy, xx = np.mgrid[0:IMAGE_SHAPE[0], 0:IMAGE_SHAPE[1]].astype(np.float32)
    along = (np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy)
    stripes = np.sin(2 * np.pi * along / period[:, None, None] + phase[:, None, None])
    colour = rng.uniform(0.5, 1.0, (n, 1, 1, 3))
    images = 0.5 + 0.5 * stripes[..., None] * colour
    images += noise * rng.standard_normal(images.shape)
    return images.astype(np.float32), labels.astype(np.int32)


def data_generator(batch_size: int, n_classes: int, seed: int):
    """Endless ``(images, labels, weights)`` batches."""
    rng = np.random.default_rng(seed)
    while True:
        images, labels = make_images(batch_size, n_classes, rng)
        yield images, labels, np.ones(batch_size, np.float32)


# --- Models ----------------------------------------------------------------------

def Classifier(name, n_classes, n_blocks=1, widen_factor=1, mode='train'):
    if name == 'mlp':
        return trax.models.MLP(layer_widths=(256, 128, n_classes), mode=mode)
    return trax.models.WideResnet(n_blocks=n_blocks, widen_factor=widen_factor,
                                  n_output_classes=n_classes, mode=mode)


# --- Training and evaluation -----------------------------------------------------

def train_model(model, eval_model, train_gen, eval_gen, output_dir, steps, eval_every,
                learning_rate):
    train_task = training.TrainTask(
        labeled_data=train_gen,
        loss_layer=tl.WeightedCategoryCrossEntropy(),
        optimizer=trax.optimizers.Adam(learning_rate),
        n_steps_per_checkpoint=eval_every,
    )
    eval_task = training.EvalTask(
        labeled_data=eval_gen,
        metrics=[tl.WeightedCategoryCrossEntropy(), tl.WeightedCategoryAccuracy()],
        n_eval_batches=4,
    )
    training_loop = training.Loop(model, train_task, eval_model=eval_model,
                                  eval_tasks=[eval_task], output_dir=output_dir)
    training_loop.run(steps)
    training_loop.save_checkpoint('model')
    return training_loop


def accuracy_of(model, images, labels, batch_size=250) -> float:
    predictions = [np.argmax(np.asarray(model(images[i:i + batch_size])), axis=-1)
                   for i in range(0, len(images), batch_size)]
    return float(np.mean(np.concatenate(predictions) == labels))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["mlp", "resnet"], default="mlp")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-classes", type=int, default=6)
    parser.add_argument("--n-blocks", type=int, default=1, help="ResNet blocks per group")
    parser.add_argument("--widen-factor", type=int, default=1, help="ResNet channels x")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: 0.001 (mlp), 0.01 (resnet)")
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--output-dir", default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix=f"image_{args.model}_")
    learning_rate = args.learning_rate or {"mlp": 0.001, "resnet": 0.01}[args.model]

    def build(mode):
        return Classifier(args.model, args.n_classes, args.n_blocks, args.widen_factor, mode)

    model = build('train')
    print(model)
    loop = train_model(model, build('eval'),
                       data_generator(args.batch_size, args.n_classes, seed=1),
                       data_generator(args.batch_size, args.n_classes, seed=2),
                       output_dir, args.steps, args.eval_every, learning_rate)

    # An eval-mode model with the trained weights and state (BatchNorm statistics).
    classifier = build('eval')
    classifier.init_from_file(os.path.join(output_dir, 'model.pkl.gz'), weights_only=False,
                              input_signature=trax.shapes.ShapeDtype((1, *IMAGE_SHAPE)))
    images, labels = make_images(args.n_test, args.n_classes, np.random.default_rng(3))
    accuracy = accuracy_of(classifier, images, labels)
    print(f"{args.model} accuracy on {args.n_test} held-out images: {accuracy:.4f} "
          f"(chance {1 / args.n_classes:.4f})")
    return {"loop": loop, "output_dir": output_dir, "accuracy": accuracy,
            "chance": 1 / args.n_classes}


if __name__ == "__main__":
    main(sys.argv[1:])
