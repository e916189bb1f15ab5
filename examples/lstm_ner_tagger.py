"""An LSTM named-entity tagger with padded batches, written as a Trax program.

    python examples/lstm_ner_tagger.py                       # 300 steps, ~10 s on 2 CPU cores
    python examples/lstm_ner_tagger.py --steps 40 --d-model 16

The model is the Coursera NLP specialization's NER model: ``Embedding``,
``LSTM``, ``Dense`` over the tags, ``LogSoftmax``. Batches are padded with id
0 to a fixed length and carry weights 0 on the padding, so the loss and
``tl.Accuracy`` count real words only. After training, the weights are
loaded from the Loop's ``model.pkl.gz`` into a fresh model (as the course's
notebook does with its pretrained file) and scored on held-out sentences by
masked accuracy: the share of real (non-padding) words whose predicted tag is
right. From a Trax program only the imports changed (``import trax`` ->
``import retrax as trax``, ``from trax ...`` -> ``from retrax ...``).

Data: synthetic sentences over the Groningen Meaning Bank's tag set. Most
words have one tag; "jordan" is a surname (I-per) after a first name and a
place (B-geo) elsewhere, so the tagger has to use the word before it.
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

PAD = 0  # Word id and tag id of padding (its weight is 0).

FIRST_NAMES = ["john", "mary", "ahmed", "li", "olga", "pedro"]
SURNAMES = ["smith", "chen", "garcia", "jordan", "novak"]
PLACES = ["paris", "kenya", "texas", "london", "jordan", "peru"]
ORGS = ["nato", "google", "unicef", "fifa"]
TIMES = ["monday", "january", "yesterday", "2019"]
FILLER = ["the", "said", "in", "on", "met", "visited", "with", "and", "reports", "left",
          "for", "talks", "new", "a", "of", "officials", "from"]
TAGS = ["<PAD>", "O", "B-per", "I-per", "B-geo", "B-org", "B-tim"]
TAG_MAP = {tag: i for i, tag in enumerate(TAGS)}


# --- Data ------------------------------------------------------------------------

def make_vocab() -> dict[str, int]:
    words = ["<PAD>", "<UNK>"]
    for group in (FIRST_NAMES, SURNAMES, PLACES, ORGS, TIMES, FILLER):
        words += [w for w in group if w not in words]
    return {w: i for i, w in enumerate(words)}


def make_sentence(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.integers(2, 6)):  # Chunks: a few filler words, then maybe an entity.
        for _ in range(rng.integers(1, 3)):
            words.append(rng.choice(FILLER))
            tags.append("O")
        kind = rng.choice(["per", "geo", "org", "tim", "none"])
        if kind == "per":
            words.append(rng.choice(FIRST_NAMES))
            tags.append("B-per")
            if rng.random() < 0.7:
                words.append(rng.choice(SURNAMES))
                tags.append("I-per")
        elif kind != "none":
            words.append(rng.choice({"geo": PLACES, "org": ORGS, "tim": TIMES}[kind]))
            tags.append(f"B-{kind}")
    return words, tags


def make_dataset(n: int, vocab: dict[str, int], seed: int):
    rng = np.random.default_rng(seed)
    sentences, labels = [], []
    for _ in range(n):
        words, tags = make_sentence(rng)
        sentences.append([vocab.get(w, vocab["<UNK>"]) for w in words])
        labels.append([TAG_MAP[t] for t in tags])
    return sentences, labels


def pad_batch(rows: list[list[int]], max_len: int) -> np.ndarray:
    out = np.full((len(rows), max_len), PAD, np.int32)
    for i, row in enumerate(rows):
        row = row[:max_len]
        out[i, :len(row)] = row
    return out


def data_generator(batch_size, sentences, labels, max_len, shuffle=True, seed=0):
    """Endless batches ``(words, tags, weights)``, padded with 0 (weight 0)."""
    rng = np.random.default_rng(seed)
    order = np.arange(len(sentences))
    index = len(order)
    while True:
        rows = []
        for _ in range(batch_size):
            if index == len(order):
                index = 0
                if shuffle:
                    rng.shuffle(order)
            rows.append(order[index])
            index += 1
        x = pad_batch([sentences[i] for i in rows], max_len)
        y = pad_batch([labels[i] for i in rows], max_len)
        yield x, y, (x != PAD).astype(np.float32)


# --- Model -----------------------------------------------------------------------

def NER(vocab_size, d_model=50, tags=TAG_MAP):
    return tl.Serial(
        tl.Embedding(vocab_size, d_model),
        tl.LSTM(d_model),
        tl.Dense(len(tags)),
        tl.LogSoftmax(),
    )


# --- Training and evaluation -----------------------------------------------------

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
        n_eval_batches=4,
    )
    training_loop = training.Loop(model, train_task, eval_tasks=[eval_task],
                                  output_dir=output_dir)
    training_loop.run(n_steps=steps)
    training_loop.save_checkpoint('model')
    return training_loop


def evaluate_prediction(pred, labels, pad=PAD):
    """Masked accuracy: predicted tags against ``labels`` on the non-padding words."""
    outputs = np.argmax(pred, axis=-1)
    mask = labels != pad
    return float(np.sum((outputs == labels) & mask) / np.sum(mask))


def predict(sentence: str, model, vocab) -> list[str]:
    ids = np.array([[vocab.get(w, vocab["<UNK>"]) for w in sentence.split()]], np.int32)
    return [TAGS[t] for t in np.argmax(np.asarray(model(ids)), axis=-1)[0]]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=24)
    parser.add_argument("--d-model", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--output-dir", default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="lstm_ner_")

    vocab = make_vocab()
    t_sentences, t_labels = make_dataset(3000, vocab, seed=0)
    v_sentences, v_labels = make_dataset(300, vocab, seed=1)
    test_sentences, test_labels = make_dataset(500, vocab, seed=2)
    print(f"vocabulary {len(vocab)} words, {len(TAGS)} tags; "
          f"{len(t_sentences)} training sentences")

    model = NER(len(vocab), d_model=args.d_model)
    print(model)
    loop = train_model(
        model,
        data_generator(args.batch_size, t_sentences, t_labels, args.max_len, seed=1),
        data_generator(args.batch_size, v_sentences, v_labels, args.max_len, seed=2),
        output_dir, args.steps, args.eval_every, args.learning_rate)

    # A fresh model with the trained weights, as a user loads a saved tagger.
    tagger = NER(len(vocab), d_model=args.d_model)
    tagger.init_from_file(os.path.join(output_dir, 'model.pkl.gz'), weights_only=True)
    x = pad_batch(test_sentences, args.max_len)
    y = pad_batch(test_labels, args.max_len)
    accuracy = evaluate_prediction(np.asarray(tagger(x)), y)
    majority = float(np.mean(np.concatenate(test_labels) == TAG_MAP["O"]))  # Always "O".

    for sentence in ["john jordan visited jordan on monday", "officials from nato met mary"]:
        print(f"{sentence!r}: {predict(sentence, tagger, vocab)}")
    print(f"masked accuracy on {len(test_sentences)} held-out sentences: {accuracy:.4f} "
          f"(always 'O': {majority:.4f})")
    return {"loop": loop, "output_dir": output_dir, "accuracy": accuracy,
            "majority_accuracy": majority}


if __name__ == "__main__":
    main(sys.argv[1:])
