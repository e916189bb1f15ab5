"""A GRU character language model, trained and sampled as a Trax program does.

    python examples/gru_char_lm.py                        # 400 steps, ~25 s on 2 CPU cores
    python examples/gru_char_lm.py --steps 40 --d-model 32 # a smoke run

The program is written the way Trax users write it (the Coursera NLP
specialization's "deep n-gram" GRU language model): a ``Serial`` of
``ShiftRight``, ``Embedding``, ``GRU`` layers, ``Dense`` and ``LogSoftmax``;
a Python generator yielding ``(inputs, targets, weights)``; ``TrainTask``,
``EvalTask`` and ``Loop``; then the trained weights loaded from the Loop's
``model.pkl.gz`` into a ``mode='predict'`` model and sampled with
``autoregressive_sample``. From a Trax program only the imports changed
(``import trax`` -> ``import retrax as trax``, ``from trax ...`` ->
``from retrax ...``). ``trax.models.GRULM`` builds the same layers.

Data: sentences of a small grammar ("the big cat sees a dog."), one byte per
character, end of sentence id 1, padding id 0. The last line printed is the
share of sampled sentences that the grammar accepts.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile

import numpy as np

import retrax as trax
from retrax import layers as tl
from retrax.supervised import training

EOS = 1  # End of a sentence; 0 is padding.
VOCAB_SIZE = 256  # One id per byte.

DETERMINERS = ["the", "a"]
ADJECTIVES = ["big", "small", "red", "happy", "old"]
NOUNS = ["cat", "dog", "bird", "fox", "horse"]
VERBS = ["sees", "likes", "chases", "finds"]
NOUN_PHRASE = rf"(?:{'|'.join(DETERMINERS)}) (?:(?:{'|'.join(ADJECTIVES)}) )?(?:{'|'.join(NOUNS)})"
SENTENCE = re.compile(rf"{NOUN_PHRASE} (?:{'|'.join(VERBS)}) {NOUN_PHRASE}\.")


# --- Data ------------------------------------------------------------------------

def noun_phrase(rng: np.random.Generator) -> str:
    words = [rng.choice(DETERMINERS)]
    if rng.random() < 0.5:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(NOUNS))
    return " ".join(words)


def make_sentences(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{noun_phrase(rng)} {rng.choice(VERBS)} {noun_phrase(rng)}." for _ in range(n)]


def line_to_tensor(line: str) -> list[int]:
    return [ord(c) for c in line] + [EOS]


def tensor_to_line(ids) -> str:
    return "".join(chr(int(i)) for i in ids if int(i) > EOS)


def data_generator(batch_size: int, max_length: int, lines: list[str], seed: int = 0):
    """Endless batches ``(x, x, mask)``: the targets are the inputs (the model shifts them)."""
    rng = np.random.default_rng(seed)
    lines = [line for line in lines if len(line) < max_length]
    while True:
        batch = np.zeros((batch_size, max_length), np.int32)
        for row, i in enumerate(rng.integers(0, len(lines), batch_size)):
            ids = line_to_tensor(lines[i])
            batch[row, :len(ids)] = ids
        mask = (batch != 0).astype(np.float32)
        yield batch, batch, mask


# --- Model -----------------------------------------------------------------------

def GRULM(vocab_size=VOCAB_SIZE, d_model=128, n_layers=2, mode='train'):
    return tl.Serial(
        tl.ShiftRight(mode=mode),  # Predict each character from the ones before it.
        tl.Embedding(vocab_size=vocab_size, d_feature=d_model),
        [tl.GRU(n_units=d_model, mode=mode) for _ in range(n_layers)],
        tl.Dense(n_units=vocab_size),
        tl.LogSoftmax(),
    )


# --- Training, evaluation, sampling ----------------------------------------------

def train_model(model, train_gen, eval_gen, output_dir, steps, eval_every, learning_rate):
    train_task = training.TrainTask(
        labeled_data=train_gen,
        loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(learning_rate),
        n_steps_per_checkpoint=eval_every,
    )
    eval_task = training.EvalTask(
        labeled_data=eval_gen,
        metrics=[tl.CrossEntropyLoss(), tl.Accuracy()],
        n_eval_batches=2,
    )
    training_loop = training.Loop(model, train_task, eval_tasks=[eval_task],
                                  output_dir=output_dir)
    training_loop.run(steps)
    training_loop.save_checkpoint('model')  # The weights sampled from below.
    return training_loop


def sample_sentences(output_dir, d_model, n_layers, n_samples, temperature, max_length):
    """Loads the trained weights into a predict-mode model and samples from it."""
    model = GRULM(d_model=d_model, n_layers=n_layers, mode='predict')
    model.init_from_file(os.path.join(output_dir, 'model.pkl.gz'), weights_only=True,
                         input_signature=trax.shapes.ShapeDtype((n_samples, 1), np.int32))
    prompt = np.array([line_to_tensor("the")[:-1]] * n_samples, np.int32)
    ids = trax.supervised.decoding.autoregressive_sample(
        model, prompt, batch_size=n_samples, temperature=temperature, max_length=max_length,
        eos_id=EOS)  # retrax's sampling is seeded (seed 0 unless given), so runs repeat.
    return ids, ["the" + tensor_to_line(row) for row in ids]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=0.005)
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--output-dir", default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="gru_char_lm_")

    lines = make_sentences(2000, seed=0)
    train_lines, eval_lines = lines[:1800], lines[1800:]
    print(f"{len(train_lines)} training sentences, e.g. {train_lines[0]!r}")

    model = GRULM(d_model=args.d_model, n_layers=args.n_layers)
    print(model)
    loop = train_model(model,
                       data_generator(args.batch_size, args.max_length, train_lines, seed=1),
                       data_generator(args.batch_size, args.max_length, eval_lines, seed=2),
                       output_dir, args.steps, args.eval_every, args.learning_rate)

    ids, samples = sample_sentences(output_dir, args.d_model, args.n_layers, args.n_samples,
                                    args.temperature, args.max_length)
    for sentence in samples[:5]:
        print("sample:", sentence)
    grammatical = float(np.mean([SENTENCE.fullmatch(s) is not None for s in samples]))
    print(f"grammatical samples: {grammatical:.3f} of {len(samples)} "
          f"(temperature {args.temperature})")
    return {"loop": loop, "output_dir": output_dir, "sample_ids": ids, "samples": samples,
            "grammatical": grammatical}


if __name__ == "__main__":
    main(sys.argv[1:])
