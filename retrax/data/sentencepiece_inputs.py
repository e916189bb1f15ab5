"""Trax's ``SentencePieceTokenize``: text to ids with a SentencePiece model file, no TensorFlow.

Trax reads the model through T5's vocabulary class (TensorFlow); retrax reads
the same ``.model`` file with the ``sentencepiece`` package (``pip install
'retrax[sentencepiece]'``), from a local path or an fsspec URL. The default
``spm_path`` is T5's (``gs://t5-data/vocabs/cc_all.32000/sentencepiece.model``,
which needs ``gcsfs``). The model is read when the first example arrives.

Each example is a string, bytes, or a tuple whose first component is one
(Trax's rule); the stage yields a 1-D int32 array of ids (not a tuple).
``extra_ids`` (T5's sentinel ids above the model's own) never appear in
encoded text, so they do not change the ids.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrax.data.stream import MapStage, Node
from retrax.data.tokenizers import SentencePieceTokenizer

__all__ = ["SentencePieceTokenize", "sentencepiece_tokenize", "T5_DEFAULT_SPM_PATH"]

T5_DEFAULT_SPM_PATH = "gs://t5-data/vocabs/cc_all.32000/sentencepiece.model"


class SentencePieceTokenize(MapStage):
    """Encodes text with the SentencePiece model at ``spm_path`` (see the module)."""

    name = "SentencePieceTokenize"

    def __init__(self, spm_path: str | None = None, extra_ids: int = 0):
        if isinstance(extra_ids, bool) or not isinstance(extra_ids, (int, np.integer)) \
                or extra_ids < 0:
            raise ValueError(f"SentencePieceTokenize: extra_ids must be an int >= 0; got "
                             f"{extra_ids!r}.")
        self.spm_path = spm_path or T5_DEFAULT_SPM_PATH
        self.extra_ids = int(extra_ids)
        self._tokenizer: SentencePieceTokenizer | None = None

    @property
    def tokenizer(self) -> SentencePieceTokenizer:
        """The model, read from ``spm_path`` on first use."""
        if self._tokenizer is None:
            self._tokenizer = SentencePieceTokenizer.from_file(self.spm_path)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """The model's pieces plus ``extra_ids`` (T5's vocabulary size)."""
        return self.tokenizer.vocab_size + self.extra_ids

    def apply(self, example: Any, node: Node, index: int) -> Any:
        text = example[0] if isinstance(example, tuple) and example else example
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not isinstance(text, str):
            raise TypeError(f"SentencePieceTokenize: example {index} is a "
                            f"{type(text).__name__}; expected a string or a tuple (string, ...).")
        return np.asarray(self.tokenizer.encode(text), np.int32)

    def __repr__(self) -> str:
        return f"data.SentencePieceTokenize({self.spm_path!r}, extra_ids={self.extra_ids})"


def sentencepiece_tokenize(stream: Any, spm_path: str | None = None, extra_ids: int = 0) -> Any:
    """Trax's function form of :class:`SentencePieceTokenize`."""
    return SentencePieceTokenize(spm_path, extra_ids)(stream)
