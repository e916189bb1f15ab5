"""Language-model data from text files: corpus, split, tokenizer and batches.

Used by ``examples/train_lm.py`` and by ``retrax train`` (task ``text_lm``).

>>> import os, tempfile
>>> from retrax import data
>>> root = tempfile.mkdtemp()
>>> for name in ('a.txt', 'b.txt'):
...     with open(os.path.join(root, name), 'w') as f:
...         _ = f.write('hello world ' * 20)
>>> train, held = split_by_hash(root, corpus_files(os.path.join(root, '*.txt')), 50)
>>> len(train) + len(held)
2
>>> x, y, w = next(text_lm_batches(train + held, data.ByteTokenizer(), seq_len=16,
...                                batch_size=2, seed=0)())
>>> x.shape, w.dtype.name
((2, 16), 'float32')
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig

from retrax.data.batching import Batch
from retrax.data.inputs import AddLossWeights, ConcatenateToLMInput
from retrax.data.packing import PackSequences
from retrax.data.shuffle import Shuffle
from retrax.data.sources import TextDocuments
from retrax.data.stream import Serial
from retrax.data.tokenizers import ByteTokenizer, Tokenize, Tokenizer

__all__ = ["stdlib_files", "corpus_files", "split_by_hash", "text_lm_batches", "make_tokenizer"]


def stdlib_files() -> tuple[str, list[str]]:
    """The Python standard library's directory and its ``.py`` files (sorted).

    Installed packages (``site-packages``) are left out, so the corpus is the
    same on every machine with the same Python version.
    """
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in ("site-packages", "dist-packages", "__pycache__"))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    if not files:
        raise FileNotFoundError(f"No .py files found under {root}.")
    return root, files


def corpus_files(corpus: str) -> list[str]:
    """Files of ``corpus``: ``'stdlib'`` or a glob pattern (``**`` allowed), sorted."""
    if corpus == "stdlib":
        return stdlib_files()[1]
    files = sorted(f for f in glob.glob(os.path.expanduser(corpus), recursive=True)
                   if os.path.isfile(f))
    if not files:
        raise FileNotFoundError(f"corpus {corpus!r} matches no files.")
    return files


def split_by_hash(root: str, files: list[str], held_out_percent: int) -> tuple[list, list]:
    """Deterministic train / held-out split by the MD5 of each path relative to ``root``."""
    if not 0 <= held_out_percent < 100:
        raise ValueError(f"held_out_percent must be in [0, 100); got {held_out_percent}.")
    train, held = [], []
    for path in files:
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        bucket = int(hashlib.md5(rel.encode("utf-8")).hexdigest(), 16) % 100
        (held if bucket < held_out_percent else train).append(path)
    return train, held


def make_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name; only ``'byte'`` needs no training data."""
    if name == "byte":
        return ByteTokenizer()
    raise ValueError(
        f"unknown tokenizer {name!r} for a text_lm task; use 'byte' (character and "
        f"SentencePiece vocabularies are trained from a corpus with retrax.data.tokenizers)."
    )


def text_lm_batches(files: list[str], tokenizer: Tokenizer, seq_len: int, batch_size: int, *,
                    seed: int, shuffle: bool = True, repeat: bool = True,
                    shuffle_queue: int = 1024) -> Serial:
    """Files -> batches ``(x, x, weights)`` of ``batch_size`` packed rows of ``seq_len`` tokens.

    Documents are tokenized, separated by the EOS id and packed; padding gets
    weight 0. The pipeline is resumable (``state_dict``), so a Loop continues it.
    """
    return Serial(
        TextDocuments(files, repeat=repeat, shuffle_files=True, seed=seed),
        Tokenize(tokenizer=tokenizer),
        PackSequences(seq_len, separator_id=tokenizer.eos_id, pad_id=tokenizer.pad_id),
        Shuffle(shuffle_queue, seed=seed) if shuffle else [],
        Batch(batch_size),
        ConcatenateToLMInput(),
        AddLossWeights(id_to_mask=tokenizer.pad_id),
    )
