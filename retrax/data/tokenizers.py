"""Tokenizers (bytes, characters, subwords, SentencePiece); ``Tokenize``/``Detokenize`` stages.

Every tokenizer has ``encode(str) -> list[int]``, ``decode(ids) -> str``,
``vocab_size``, ``save(directory)`` and ``load(directory)``; ``save`` writes
``tokenizer.json`` (plus the SentencePiece model file) so that a directory of
checkpoints also holds the vocabulary, and :func:`load_tokenizer` reads any of
them back. Ids 0 and 1 are reserved for padding and end-of-sequence in all
three (2 is "unknown" where there are unknowns), matching Trax's conventions
(``PadToLength``/``Batch`` pad with 0, decoding stops at ``eos_id=1``).

* :class:`ByteTokenizer`: UTF-8 bytes, id = byte + 2; no vocabulary to build
  (Trax's ``vocab_type='char'``).
* :class:`CharTokenizer`: one id per character of a vocabulary built from a
  corpus; unknown characters map to id 2 and are counted by ``Tokenize``.
* :class:`SubwordTokenizer`: Trax's default ``vocab_type='subword'`` files
  (Tensor2Tensor's format, read without TensorFlow; :mod:`retrax.data.subword`).
* :class:`SentencePieceTokenizer`: a SentencePiece model, trained on your
  corpus with :meth:`SentencePieceTokenizer.train` (needs ``sentencepiece``).

>>> tok = ByteTokenizer()
>>> tok.encode('hé'), tok.decode(tok.encode('hé') + [1]), tok.vocab_size
([106, 197, 171], 'hé', 258)
"""

from __future__ import annotations

import collections
import io
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from retrax.data.stream import MapStage, Node
from retrax.data.subword import SubwordVocabulary
from retrax.io import read_bytes, write_bytes_atomic

__all__ = [
    "Tokenizer", "ByteTokenizer", "CharTokenizer", "SubwordTokenizer", "SentencePieceTokenizer",
    "load_tokenizer",
    "Tokenize", "Detokenize", "tokenize", "detokenize", "vocab_size", "PAD_ID", "EOS_ID", "UNK_ID",
]

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
TRAX_VOCAB_DIR = "gs://trax-ml/vocabs/"  # Trax's default vocab_dir
CONFIG_FILE = "tokenizer.json"


def _write_json(directory: str, config: dict) -> None:
    write_bytes_atomic(os.path.join(directory, CONFIG_FILE),
                                   json.dumps(config, indent=1, ensure_ascii=False).encode())


def _read_json(directory: str) -> dict:
    path = os.path.join(os.fspath(directory), CONFIG_FILE)
    try:
        return json.loads(read_bytes(path, "Tokenizer file").decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No tokenizer in {os.fspath(directory)!r}: {CONFIG_FILE} is missing (it is written "
            f"by tokenizer.save(directory))."
        ) from None


def _ids(ids: Any, vocab: int, who: str) -> np.ndarray:
    arr = np.asarray(ids).reshape(-1)
    if arr.size and arr.dtype.kind not in "iu":
        raise TypeError(f"{who}.decode: ids must be integers; got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab):
        raise ValueError(f"{who}.decode: ids must be in [0, {vocab}); got ids from {arr.min()} "
                         f"to {arr.max()}.")
    return arr


class Tokenizer:
    """Base class: ``encode``, ``decode``, ``vocab_size``, ``save``, ``load``."""

    kind = "base"
    pad_id: int | None = PAD_ID
    eos_id: int | None = EOS_ID
    unk_id: int | None = None

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_array(self, text: str | bytes) -> np.ndarray:
        """``encode`` as an int32 array (what ``Tokenize`` yields)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return np.asarray(self.encode(text), np.int32)

    def decode(self, ids: Any) -> str:
        raise NotImplementedError

    def save(self, directory: str) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str) -> Tokenizer:
        tok = load_tokenizer(directory)
        if not isinstance(tok, cls):
            raise TypeError(f"{directory!r} holds a {type(tok).__name__}, not a {cls.__name__}.")
        return tok

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes: id = byte + ``n_reserved_ids`` (default 2: 0 pad, 1 EOS).

    ``decode`` drops the reserved ids and replaces invalid UTF-8 (a model can
    sample any byte sequence) with U+FFFD.
    """

    kind = "byte"

    def __init__(self, n_reserved_ids: int = 2):
        if not isinstance(n_reserved_ids, int) or n_reserved_ids < 0:
            raise ValueError(f"ByteTokenizer: n_reserved_ids must be an int >= 0; "
                             f"got {n_reserved_ids!r}.")
        self.n_reserved_ids = n_reserved_ids
        self.pad_id = PAD_ID if n_reserved_ids > PAD_ID else None
        self.eos_id = EOS_ID if n_reserved_ids > EOS_ID else None

    @property
    def vocab_size(self) -> int:
        return 256 + self.n_reserved_ids

    def encode_array(self, text: str | bytes) -> np.ndarray:
        raw = text if isinstance(text, bytes) else text.encode("utf-8")
        return np.frombuffer(raw, np.uint8).astype(np.int32) + self.n_reserved_ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Any) -> str:
        arr = _ids(ids, self.vocab_size, "ByteTokenizer")
        arr = arr[arr >= self.n_reserved_ids] - self.n_reserved_ids
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def save(self, directory: str) -> None:
        _write_json(directory, {"type": self.kind, "n_reserved_ids": self.n_reserved_ids})


class CharTokenizer(Tokenizer):
    """One id per character: 0 pad, 1 EOS, 2 unknown, then ``chars`` in order.

    Build the vocabulary from a corpus with :meth:`build`; save it as JSON.

    >>> tok = CharTokenizer.build(['abba', 'cab'])
    >>> tok.chars, tok.encode('abcz'), tok.decode([3, 4, 5, 2])
    (['a', 'b', 'c'], [3, 4, 5, 2], 'abc\\ufffd')
    """

    kind = "char"
    unk_id = UNK_ID
    n_reserved_ids = 3

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"CharTokenizer: each vocabulary entry must be one character; "
                                 f"got {c!r}.")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: the vocabulary has repeated characters.")
        self.chars = chars
        self._index = {c: i + self.n_reserved_ids for i, c in enumerate(chars)}

    @classmethod
    def build(cls, texts: Iterable[str], *, min_count: int = 1,
              max_chars: int | None = None) -> CharTokenizer:
        """The characters of ``texts`` seen ``min_count`` times, most frequent first."""
        counts: collections.Counter[str] = collections.Counter()
        for text in texts:
            counts.update(text)
        ranked = sorted((c for c, n in counts.items() if n >= min_count),
                        key=lambda c: (-counts[c], c))
        if not ranked:
            raise ValueError("CharTokenizer.build: the corpus has no characters.")
        return cls(ranked[:max_chars] if max_chars else ranked)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + self.n_reserved_ids

    def encode(self, text: str) -> list[int]:
        get = self._index.get
        return [get(c, UNK_ID) for c in text]

    def decode(self, ids: Any) -> str:
        arr = _ids(ids, self.vocab_size, "CharTokenizer")
        return "".join("\ufffd" if i == UNK_ID else self.chars[i - self.n_reserved_ids]
                       for i in arr.tolist() if i >= UNK_ID)

    def save(self, directory: str) -> None:
        _write_json(directory, {"type": self.kind, "chars": self.chars})


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (needs ``pip install 'retrax[sentencepiece]'``).

    Ids: 0 pad, 1 EOS, 2 unknown when trained by :meth:`train`; a model from
    elsewhere keeps its own ids (see ``pad_id``/``eos_id``/``unk_id``).
    """

    kind = "sentencepiece"
    MODEL_FILE = "sentencepiece.model"

    def __init__(self, model_proto: bytes):
        spm = _sentencepiece()
        self.model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.pad_id = self._id_or_none(self._sp.pad_id())
        self.eos_id = self._id_or_none(self._sp.eos_id())
        self.unk_id = self._id_or_none(self._sp.unk_id())

    @staticmethod
    def _id_or_none(i: int) -> int | None:
        return None if i < 0 else int(i)

    @classmethod
    def from_file(cls, path: str) -> SentencePieceTokenizer:
        """Loads a ``.model`` file (local or fsspec URL)."""
        return cls(read_bytes(path, "SentencePiece model file"))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, *, model_type: str = "unigram",
              character_coverage: float = 1.0, **trainer_kwargs: Any) -> SentencePieceTokenizer:
        """Trains a model on ``texts`` (each split into lines, empty lines skipped).

        Deterministic for a corpus (one thread). ``trainer_kwargs`` go to
        ``sentencepiece.SentencePieceTrainer.train`` (e.g.
        ``normalization_rule_name='identity'``, ``user_defined_symbols``).
        """
        spm = _sentencepiece()

        def lines() -> Iterable[str]:
            for text in texts:
                yield from (line for line in text.splitlines() if line.strip())

        model = io.BytesIO()
        options = dict(vocab_size=vocab_size, model_type=model_type,
                       character_coverage=character_coverage, pad_id=PAD_ID, eos_id=EOS_ID,
                       unk_id=UNK_ID, bos_id=-1, num_threads=1, minloglevel=2)
        options.update(trainer_kwargs)
        try:
            spm.SentencePieceTrainer.train(sentence_iterator=iter(lines()), model_writer=model,
                                           **options)
        except RuntimeError as err:
            raise ValueError(f"SentencePieceTokenizer.train failed: {str(err).rstrip('.')}. A "
                             f"smaller vocab_size "
                             f"or a larger corpus usually fixes it.") from err
        return cls(model.getvalue())

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Any) -> str:
        arr = _ids(ids, self.vocab_size, "SentencePieceTokenizer")
        return self._sp.decode([int(i) for i in arr if i != self.pad_id])

    def save(self, directory: str) -> None:
        write_bytes_atomic(os.path.join(directory, self.MODEL_FILE), self.model_proto)
        _write_json(directory, {"type": self.kind, "model_file": self.MODEL_FILE})


class SubwordTokenizer(Tokenizer):
    """A Trax/Tensor2Tensor subword vocabulary file (``vocab_type='subword'``).

    Ids are the file's line numbers, exactly as Trax assigns them (its files
    start with ``<pad>`` and ``<EOS>``: 0 pads, 1 ends a sequence).
    """

    kind = "subword"
    VOCAB_FILE = "vocab.subword"

    def __init__(self, vocabulary: SubwordVocabulary):
        self.vocabulary = vocabulary

    @classmethod
    def from_file(cls, path: str) -> SubwordTokenizer:
        """Reads a vocabulary file (local path or any fsspec URL)."""
        return cls(SubwordVocabulary.from_text(read_bytes(path, "Subword vocabulary").decode(
            "utf-8")))

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.vocab_size

    def encode(self, text: str) -> list[int]:
        return self.vocabulary.encode(text)

    def decode(self, ids: Any) -> str:
        return self.vocabulary.decode(_ids(ids, self.vocab_size, "SubwordTokenizer").tolist())

    def save(self, directory: str) -> None:
        write_bytes_atomic(os.path.join(directory, self.VOCAB_FILE),
                           self.vocabulary.to_text().encode("utf-8"))
        _write_json(directory, {"type": self.kind, "vocab_file": self.VOCAB_FILE})


def _sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError as err:
        raise ImportError(
            "SentencePiece tokenizers need the sentencepiece package, which is not installed. "
            "Install it with `pip install 'retrax[sentencepiece]'` (or `pip install "
            "sentencepiece`)."
        ) from err
    return sentencepiece


def load_tokenizer(directory: str) -> Tokenizer:
    """The tokenizer saved in ``directory`` by ``tokenizer.save(directory)``."""
    directory = os.fspath(directory)
    config = _read_json(directory)
    kind = config.get("type")
    if kind == "byte":
        return ByteTokenizer(int(config.get("n_reserved_ids", 2)))
    if kind == "char":
        return CharTokenizer(config["chars"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer.from_file(os.path.join(directory, config["model_file"]))
    if kind == "subword":
        return SubwordTokenizer.from_file(os.path.join(directory, config["vocab_file"]))
    raise ValueError(f"{os.path.join(directory, CONFIG_FILE)}: unknown tokenizer type {kind!r}.")


def get_tokenizer(vocab_type: str | None = "subword", vocab_file: str | None = None,
                  vocab_dir: str | None = None) -> Tokenizer:
    """Trax's ``(vocab_type, vocab_file, vocab_dir)`` as a retrax tokenizer.

    ``'char'`` (or ``'byte'``) is bytes (as in Trax); ``'subword'`` reads
    ``vocab_dir/vocab_file`` (Trax's default ``vocab_dir`` is its public bucket,
    ``gs://trax-ml/vocabs/``, read through fsspec); ``'sentencepiece'`` reads
    ``vocab_dir/vocab_file`` (a ``.model`` file) or a saved directory;
    ``'saved'`` reads a directory written by ``tokenizer.save``.
    """
    if vocab_type in ("char", "byte"):
        return ByteTokenizer()
    if vocab_type == "saved" or (vocab_type == "sentencepiece" and vocab_file is None):
        if vocab_dir is None:
            raise ValueError(f"vocab_type={vocab_type!r} needs vocab_dir (a directory written "
                             f"by tokenizer.save) or vocab_file.")
        return load_tokenizer(vocab_dir)
    if vocab_type == "sentencepiece":
        path = vocab_file if vocab_dir is None else os.path.join(vocab_dir, vocab_file)
        return SentencePieceTokenizer.from_file(path)
    if vocab_type == "subword":
        if vocab_file is None:
            raise ValueError("vocab_type='subword' needs vocab_file (e.g. 'en_8k.subword') in "
                             "vocab_dir.")
        directory = TRAX_VOCAB_DIR if vocab_dir is None else vocab_dir
        return SubwordTokenizer.from_file(os.path.join(directory, vocab_file))
    if vocab_type in ("bert", "bert-lowercase"):
        raise NotImplementedError(
            f"vocab_type={vocab_type!r}: retrax does not read BERT vocabularies. Use "
            f"vocab_type='subword', 'sentencepiece' or 'char', or tokenizer=<a retrax tokenizer>."
        )
    raise ValueError(f"Unknown vocab_type {vocab_type!r}; use 'char', 'sentencepiece' or "
                     f"'saved', or pass tokenizer=.")


class Tokenize(MapStage):
    """Turns strings into int32 token arrays (Trax's signature, plus ``tokenizer=``).

    Args:
      keys: which tuple positions / dict keys to tokenize; default every
        string (or bytes) component, or the example itself if it is a string.
      vocab_type, vocab_file, vocab_dir: Trax's way to name a vocabulary, see
        :func:`get_tokenizer`.
      n_reserved_ids: added to every id (Trax).
      tokenizer: keyword-only; a tokenizer object (overrides ``vocab_type``).
      errors: keyword-only; bytes input that is not UTF-8: ``'replace'``
        (counted) or ``'strict'``.

    Unknown tokens (a ``CharTokenizer`` seeing new characters) are counted as
    ``unknown_tokens``.
    """

    name = "Tokenize"

    def __init__(self, keys: Sequence[Any] | None = None, vocab_type: str | None = "subword",
                 vocab_file: str | None = None, vocab_dir: str | None = None,
                 n_reserved_ids: int = 0, *, tokenizer: Tokenizer | None = None,
                 errors: str = "replace"):
        if errors not in ("replace", "strict"):
            raise ValueError(f"Tokenize: errors must be 'replace' or 'strict'; got {errors!r}.")
        self.keys = None if keys is None else list(keys)
        self.tokenizer = tokenizer if tokenizer is not None else get_tokenizer(
            vocab_type, vocab_file, vocab_dir)
        self.n_reserved_ids = n_reserved_ids
        self.errors = errors

    def _encode(self, value: Any, node: Node, where: str) -> np.ndarray:
        tok = self.tokenizer
        if isinstance(value, bytes) and not isinstance(tok, ByteTokenizer):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                if self.errors == "strict":
                    raise ValueError(f"Tokenize: {where} is not valid UTF-8 ({err.reason}); pass "
                                     f"errors='replace' to replace the bad bytes.") from None
                node.count("invalid_utf8", message=f"replaced invalid UTF-8 bytes in {where}")
                value = value.decode("utf-8", errors="replace")
        elif not isinstance(value, (str, bytes)):
            raise TypeError(f"Tokenize: {where} is a {type(value).__name__}, not a string.")
        ids = tok.encode_array(value)
        if tok.unk_id is not None:
            n = int(np.count_nonzero(ids == tok.unk_id))
            if n:
                node.count("unknown_tokens", n, f"{where} has {n} tokens not in the vocabulary")
        return ids + self.n_reserved_ids if self.n_reserved_ids else ids

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if isinstance(example, (str, bytes)):
            return self._encode(example, node, f"example {index}")
        if isinstance(example, (tuple, list, dict)):
            keys = self.keys
            items = example.items() if isinstance(example, dict) else enumerate(example)
            out = {k: (self._encode(v, node, f"component {k!r} of example {index}")
                       if (k in keys if keys is not None else isinstance(v, (str, bytes))) else v)
                   for k, v in items}
            return out if isinstance(example, dict) else tuple(out.values())
        raise TypeError(f"Tokenize: example {index} is a {type(example).__name__}; expected a "
                        f"string or a tuple/dict holding strings.")


class Detokenize(MapStage):
    """Turns token arrays back into strings (the inverse of :class:`Tokenize`)."""

    name = "Detokenize"

    def __init__(self, keys: Sequence[Any] | None = None, vocab_type: str | None = "subword",
                 vocab_file: str | None = None, vocab_dir: str | None = None,
                 n_reserved_ids: int = 0, *, tokenizer: Tokenizer | None = None):
        self.keys = None if keys is None else list(keys)
        self.tokenizer = tokenizer if tokenizer is not None else get_tokenizer(
            vocab_type, vocab_file, vocab_dir)
        self.n_reserved_ids = n_reserved_ids

    def _decode(self, ids: Any) -> str:
        return self.tokenizer.decode(np.asarray(ids) - self.n_reserved_ids)

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if isinstance(example, (tuple, list)):
            keys = self.keys if self.keys is not None else range(len(example))
            return tuple(self._decode(x) if i in keys else x for i, x in enumerate(example))
        if isinstance(example, dict):
            keys = self.keys if self.keys is not None else list(example)
            return {k: self._decode(v) if k in keys else v for k, v in example.items()}
        return self._decode(example)


def tokenize(stream: Any, keys: Sequence[Any] | None = None, vocab_type: str | None = "subword",
             vocab_file: str | None = None, vocab_dir: str | None = None,
             n_reserved_ids: int = 0, *, tokenizer: Tokenizer | None = None) -> Any:
    """Trax's generator function: the examples of ``stream`` with their strings tokenized
    (``Tokenize(keys, vocab_type, vocab_file, vocab_dir, n_reserved_ids)(stream)``)."""
    return Tokenize(keys, vocab_type, vocab_file, vocab_dir, n_reserved_ids,
                    tokenizer=tokenizer)(stream)


def detokenize(x: Any, vocab_type: str | None = "subword", vocab_file: str | None = None,
               vocab_dir: str | None = None, n_reserved_ids: int = 0, *,
               tokenizer: Tokenizer | None = None) -> str:
    """Token ids -> string (Trax's function)."""
    tok = tokenizer if tokenizer is not None else get_tokenizer(vocab_type, vocab_file, vocab_dir)
    return tok.decode(np.asarray(x) - n_reserved_ids)


def vocab_size(vocab_type: str | None = "subword", vocab_file: str | None = None,
               vocab_dir: str | None = None, n_reserved_ids: int = 0) -> int:
    """The number of ids of a vocabulary, including ``n_reserved_ids`` (Trax's function)."""
    return get_tokenizer(vocab_type, vocab_file, vocab_dir).vocab_size + n_reserved_ids
