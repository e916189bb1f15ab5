"""A Siamese LSTM that finds duplicate questions, written as a Trax program.

    python examples/siamese_lstm.py                       # 300 steps, ~10 s on 2 CPU cores
    python examples/siamese_lstm.py --steps 40 --d-model 32

The model is the Coursera NLP specialization's question-duplicates model: one
question encoder, ``Serial(Embedding, LSTM, Mean(axis=1), Fn('Normalize'))``,
applied to both questions by ``tl.Parallel(q_processor, q_processor)`` (the
same layer object twice, so the two branches share their weights). The loss is
a triplet loss with hard negatives written with ``tl.Fn``: in a batch of ``B``
duplicate pairs, each pair's similarity must beat by a margin both the most
similar non-duplicate (the closest negative) and the mean non-duplicate. The
data generator yields ``(q1_batch, q2_batch)`` with no targets, as the
course's does. After training, the weights are loaded from the Loop's
``model.pkl.gz`` and question pairs are classified as duplicates when the
cosine similarity of their vectors exceeds a threshold.

From a Trax program only the imports changed (``import trax`` ->
``import retrax as trax``, ``from trax ...`` -> ``from retrax ...``).

Data: synthetic questions. Each question asks one thing (an action on a
topic, e.g. learn + python) in one of several phrasings, with synonyms
("study", "master"); duplicates ask the same thing in other words. Half of the
test pairs are duplicates; half of the rest share the topic but not the
action.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from functools import partial

import numpy as np

import retrax as trax
from retrax import layers as tl
from retrax.fastmath import numpy as fastnp
from retrax.supervised import training

PAD = 0

TOPICS = {"python": ["python", "python programming"], "guitar": ["guitar", "the guitar"],
          "english": ["english", "my english"], "weight": ["weight", "body weight"],
          "money": ["money", "cash"], "chess": ["chess", "chess skills"],
          "sleep": ["sleep", "my sleep"], "cooking": ["cooking", "my cooking"]}
ACTIONS = {"learn": ["learn", "study", "master"], "improve": ["improve", "get better at"],
           "start": ["start", "begin", "get started with"], "quit": ["quit", "give up", "stop"],
           "save": ["save", "keep"], "measure": ["measure", "track"]}
TEMPLATES = ["how do i {a} {t}", "how can i {a} {t} quickly", "what is the best way to {a} {t}",
             "what should i do to {a} {t}", "any tips to {a} {t}"]
INTENTS = [(t, a) for t in TOPICS for a in ACTIONS]


# --- Data ------------------------------------------------------------------------

def make_vocab() -> dict[str, int]:
    words = ["<PAD>", "<UNK>"]
    for text in [*TEMPLATES, *sum(TOPICS.values(), []), *sum(ACTIONS.values(), [])]:
        words += [w for w in text.split() if w not in words and "{" not in w]
    return {w: i for i, w in enumerate(words)}


def ask(intent, rng: np.random.Generator) -> str:
    topic, action = intent
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    return template.format(a=rng.choice(ACTIONS[action]), t=rng.choice(TOPICS[topic]))


def encode(question: str, vocab: dict[str, int]) -> list[int]:
    return [vocab.get(w, vocab["<UNK>"]) for w in question.split()]


def pad_batch(rows, max_len: int) -> np.ndarray:
    out = np.full((len(rows), max_len), PAD, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row[:max_len]
    return out


def data_generator(batch_size, vocab, max_len, seed=0):
    """Endless ``(q1, q2)`` batches: row i of q2 is a duplicate of row i of q1 (no targets).

    The rows of a batch ask different things, so every other row is a
    non-duplicate for the triplet loss.
    """
    rng = np.random.default_rng(seed)
    while True:
        intents = rng.choice(len(INTENTS), batch_size, replace=False)
        q1 = [encode(ask(INTENTS[i], rng), vocab) for i in intents]
        q2 = [encode(ask(INTENTS[i], rng), vocab) for i in intents]
        yield pad_batch(q1, max_len), pad_batch(q2, max_len)


def make_test_pairs(n, vocab, max_len, seed):
    """``n`` labelled pairs: half duplicates, a quarter same topic only, a quarter unrelated."""
    rng = np.random.default_rng(seed)
    q1, q2, labels = [], [], []
    for k in range(n):
        first = INTENTS[rng.integers(len(INTENTS))]
        if k % 2 == 0:
            second = first
        elif k % 4 == 1:  # A hard negative: same topic, another action.
            second = (first[0], rng.choice([a for a in ACTIONS if a != first[1]]))
        else:
            second = INTENTS[rng.integers(len(INTENTS))]
        q1.append(encode(ask(first, rng), vocab))
        q2.append(encode(ask(second, rng), vocab))
        labels.append(first == second)
    return pad_batch(q1, max_len), pad_batch(q2, max_len), np.array(labels)


# --- Model and loss --------------------------------------------------------------

def Siamese(vocab_size, d_model=128, mode='train'):
    def normalize(x):  # Unit L2 norm along the features.
        return x / fastnp.sqrt(fastnp.sum(x * x, axis=-1, keepdims=True))

    q_processor = tl.Serial(
        tl.Embedding(vocab_size, d_model),
        tl.LSTM(d_model, mode=mode),
        tl.Mean(axis=1),  # Average over the words.
        tl.Fn('Normalize', lambda x: normalize(x)),
    )
    return tl.Parallel(q_processor, q_processor)  # One encoder, shared by both questions.


def TripletLossFn(v1, v2, margin=0.25):
    """Hard-negative triplet loss of unit vectors ``v1[i]``, ``v2[i]`` (duplicates)."""
    scores = fastnp.dot(v1, v2.T)  # Cosine similarities, (B, B); duplicates on the diagonal.
    batch_size = scores.shape[0]
    positive = fastnp.diagonal(scores)
    off_diagonal = 1.0 - fastnp.eye(batch_size)
    # The most similar non-duplicate of each row (the diagonal pushed out of reach).
    closest_negative = fastnp.max(scores - 2.0 * fastnp.eye(batch_size), axis=1)
    mean_negative = fastnp.sum(scores * off_diagonal, axis=1) / (batch_size - 1)
    loss_closest = fastnp.maximum(0.0, margin - positive + closest_negative)
    loss_mean = fastnp.maximum(0.0, margin - positive + mean_negative)
    return fastnp.mean(loss_closest + loss_mean)


def TripletLoss(margin=0.25):
    return tl.Fn('TripletLoss', partial(TripletLossFn, margin=margin))


# --- Training and evaluation -----------------------------------------------------

def train_model(model, train_gen, eval_gen, output_dir, steps, eval_every, learning_rate):
    lr_schedule = trax.lr.warmup_and_rsqrt_decay(min(100, steps), learning_rate)
    train_task = training.TrainTask(
        labeled_data=train_gen,
        loss_layer=TripletLoss(),
        optimizer=trax.optimizers.Adam(learning_rate),
        lr_schedule=lr_schedule,
        n_steps_per_checkpoint=eval_every,
    )
    eval_task = training.EvalTask(
        labeled_data=eval_gen,
        metrics=[TripletLoss()],
        n_eval_batches=2,
    )
    training_loop = training.Loop(model, train_task, eval_tasks=[eval_task],
                                  output_dir=output_dir)
    training_loop.run(steps)
    training_loop.save_checkpoint('model')
    return training_loop


def classify(q1, q2, labels, threshold, model):
    """Accuracy of "duplicate when cosine similarity > threshold"."""
    v1, v2 = model((q1, q2))
    similarity = np.sum(np.asarray(v1) * np.asarray(v2), axis=-1)  # Unit vectors: cosines.
    return float(np.mean((similarity > threshold) == labels)), similarity


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    # The longest question has 11 words. Mean(axis=1) averages the padding too, so
    # much more padding makes all questions look alike and training starts slowly.
    parser.add_argument("--max-len", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--output-dir", default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="siamese_lstm_")

    vocab = make_vocab()
    print(f"vocabulary {len(vocab)} words, {len(INTENTS)} different questions; e.g. "
          f"{ask(INTENTS[0], np.random.default_rng(0))!r} ~ "
          f"{ask(INTENTS[0], np.random.default_rng(3))!r}")

    model = Siamese(len(vocab), d_model=args.d_model)
    print(model)
    loop = train_model(model,
                       data_generator(args.batch_size, vocab, args.max_len, seed=1),
                       data_generator(args.batch_size, vocab, args.max_len, seed=2),
                       output_dir, args.steps, args.eval_every, args.learning_rate)

    trained = Siamese(len(vocab), d_model=args.d_model)
    trained.init_from_file(os.path.join(output_dir, 'model.pkl.gz'), weights_only=True)
    q1, q2, labels = make_test_pairs(512, vocab, args.max_len, seed=3)
    accuracy, similarity = classify(q1, q2, labels, args.threshold, trained)
    print(f"mean cosine similarity: duplicates {similarity[labels].mean():.3f}, "
          f"others {similarity[~labels].mean():.3f}")
    print(f"duplicate accuracy on {len(labels)} held-out pairs (threshold {args.threshold}): "
          f"{accuracy:.4f}")
    return {"loop": loop, "output_dir": output_dir, "accuracy": accuracy,
            "similarity": similarity, "labels": labels}


if __name__ == "__main__":
    main(sys.argv[1:])
