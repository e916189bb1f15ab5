"""An LSTM translator with attention (``trax.models.LSTMSeq2SeqAttn``), written as a Trax program.

    python examples/lstm_translator.py                      # 600 steps, ~30 s on 2 CPU cores
    python examples/lstm_translator.py --steps 40 --d-model 32

The "language" pair is synthetic: a target sentence is its source sentence
read backwards, each word replaced by its fixed translation (source word ``i``
becomes target word ``TRANSLATION[i]``). Sentences have 2 to 8 words and end
with EOS (1); batches are padded with 0 and yield ``(inputs, targets,
weights)`` with weight 0 on the padding. ``LSTMSeq2SeqAttn`` takes
``(inputs, targets)`` and returns ``(log-probs, targets)``, so
``CrossEntropyLoss`` finds ``log-probs, targets, weights`` on the stack.

After ``TrainTask``/``EvalTask``/``Loop``, the weights are loaded from the
Loop's ``model.pkl.gz`` into a ``mode='predict'`` model, and held-out
sentences are translated greedily with ``autoregressive_sample`` (one compiled
loop; the encoder runs once, the decoder's LSTMs keep their state). The last
line is the share of held-out sentences translated exactly. From a Trax
program only the imports changed (``import trax`` -> ``import retrax as
trax``, ``from trax ...`` -> ``from retrax ...``).
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

PAD, EOS = 0, 1
VOCAB_SIZE = 32  # Ids 2..31 are words, in both languages.
TRANSLATION = np.concatenate([[PAD, EOS], 2 + np.random.default_rng(1234).permutation(30)])


# --- Data ------------------------------------------------------------------------

def translate(sentence: np.ndarray) -> np.ndarray:
    """The reference translation: backwards, word by word."""
    return TRANSLATION[sentence[::-1]]


def make_pairs(n: int, min_len: int, max_len: int, seed: int):
    rng = np.random.default_rng(seed)
    sources = [rng.integers(2, VOCAB_SIZE, rng.integers(min_len, max_len + 1))
               for _ in range(n)]
    return sources, [translate(s) for s in sources]


def pad_with_eos(rows, length: int) -> np.ndarray:
    out = np.full((len(rows), length), PAD, np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row) + 1] = [*row, EOS]
    return out


def data_generator(batch_size, sources, targets, max_len, seed=0):
    """Endless ``(inputs, targets, weights)`` batches; weights are 0 on padding."""
    rng = np.random.default_rng(seed)
    while True:
        rows = rng.integers(0, len(sources), batch_size)
        x = pad_with_eos([sources[i] for i in rows], max_len + 1)
        y = pad_with_eos([targets[i] for i in rows], max_len + 1)
        yield x, y, (y != PAD).astype(np.float32)


# --- Model, training, decoding ----------------------------------------------------

def NMTAttn(d_model=128, n_layers=1, n_heads=4, mode='train'):
    return trax.models.LSTMSeq2SeqAttn(
        input_vocab_size=VOCAB_SIZE, target_vocab_size=VOCAB_SIZE, d_model=d_model,
        n_encoder_layers=n_layers, n_decoder_layers=n_layers, n_attention_heads=n_heads,
        mode=mode)


def train_model(model, train_gen, eval_gen, output_dir, steps, eval_every, learning_rate):
    train_task = training.TrainTask(
        labeled_data=train_gen,
        loss_layer=tl.CrossEntropyLoss(),
        optimizer=trax.optimizers.Adam(learning_rate),
        lr_schedule=trax.lr.warmup_and_rsqrt_decay(min(100, steps), learning_rate),
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
    training_loop.save_checkpoint('model')
    return training_loop


def greedy_translate(model, sources: np.ndarray, max_length: int) -> np.ndarray:
    """Greedy decoding of a batch of padded sources; ``(B, <= max_length)`` ids."""
    return trax.supervised.decoding.autoregressive_sample(
        model, sources, batch_size=len(sources), temperature=0.0, max_length=max_length,
        eos_id=EOS)


def until_eos(ids) -> list[int]:
    ids = [int(i) for i in ids]
    return ids[:ids.index(EOS)] if EOS in ids else ids


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=8, help="longest sentence, in words")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=1)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--n-test", type=int, default=64)
    parser.add_argument("--output-dir", default=None, help="default: a new temporary directory")
    args = parser.parse_args(argv)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="lstm_translator_")

    train_src, train_tgt = make_pairs(5000, 2, args.max_len, seed=0)
    eval_src, eval_tgt = make_pairs(500, 2, args.max_len, seed=1)
    print(f"e.g. {train_src[0].tolist()} -> {train_tgt[0].tolist()}")

    model = NMTAttn(args.d_model, args.n_layers, args.n_heads)
    print(model)
    loop = train_model(model,
                       data_generator(args.batch_size, train_src, train_tgt, args.max_len, 1),
                       data_generator(args.batch_size, eval_src, eval_tgt, args.max_len, 2),
                       output_dir, args.steps, args.eval_every, args.learning_rate)

    # Held-out sentences, translated by a predict-mode model loaded from the checkpoint.
    test_src, test_tgt = make_pairs(args.n_test, 2, args.max_len, seed=3)
    sources = pad_with_eos(test_src, args.max_len + 1)
    translator = NMTAttn(args.d_model, args.n_layers, args.n_heads, mode='predict')
    translator.init_from_file(
        os.path.join(output_dir, 'model.pkl.gz'), weights_only=True,
        input_signature=(trax.shapes.ShapeDtype(sources.shape, np.int32),
                         trax.shapes.ShapeDtype((len(sources), 1), np.int32)))
    decoded = greedy_translate(translator, sources, max_length=args.max_len + 2)
    exact = float(np.mean([until_eos(row) == tgt.tolist()
                           for row, tgt in zip(decoded, test_tgt)]))
    for src, row, tgt in list(zip(test_src, decoded, test_tgt))[:3]:
        print(f"{src.tolist()} -> {until_eos(row)} (reference {tgt.tolist()})")
    print(f"exact greedy translations: {exact:.4f} of {len(test_src)} held-out sentences")
    return {"loop": loop, "output_dir": output_dir, "decoded": decoded, "sources": sources,
            "references": test_tgt, "exact": exact}


if __name__ == "__main__":
    main(sys.argv[1:])
