"""Trax's default vocabulary type, ``'subword'``: Tensor2Tensor's ``SubwordTextEncoder``.

Trax reads these vocabularies (``en_8k.subword``, ``en_32k.subword``, ...)
through TensorFlow; this is the same file format and the same algorithm in
plain Python, so ids match Trax's:

- the file has one subtoken per line, optionally in single or double quotes;
  a subtoken's id is its line number (Trax's files start with ``<pad>`` and
  ``<EOS>``, so 0 pads and 1 ends a sequence);
- text is split into tokens at every change between alphanumeric (Unicode
  letter or number) and other characters; a single space between two
  alphanumeric tokens is dropped (decoding puts it back);
- each token is escaped (``\\`` -> ``\\\\``, ``_`` -> ``\\u``, a character not in the
  vocabulary's alphabet -> ``\\<code point>;``) and ends in ``_``; then it is
  cut greedily into the longest subtokens of the vocabulary, left to right.

>>> vocab = SubwordVocabulary(['<pad>', '<EOS>', 'hello_', 'wor', 'ld_', 'l', 'd', 'o', 'w',
...                            'r', '_', 'h', 'e', ' ', '!'])
>>> vocab.encode('hello world!')
[2, 3, 4, 14, 10]
>>> vocab.decode([2, 3, 4, 14, 10])
'hello world!'
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Sequence

__all__ = ["SubwordVocabulary", "split_tokens", "join_tokens"]

_ESCAPE_CHARS = set("\\_u;0123456789")
_UNESCAPE = re.compile(r"\\u|\\\\|\\([0-9]+);")
_ALNUM_CACHE: dict[str, bool] = {}


def _is_alnum(char: str) -> bool:
    known = _ALNUM_CACHE.get(char)
    if known is None:
        known = _ALNUM_CACHE[char] = unicodedata.category(char)[0] in "LN"
    return known


def split_tokens(text: str) -> list[str]:
    """Tensor2Tensor's tokenizer: runs of alphanumeric / other characters; a lone
    space between two alphanumeric runs is dropped (not at the start)."""
    if not text:
        return []
    tokens, start = [], 0
    for pos in range(1, len(text)):
        if _is_alnum(text[pos]) != _is_alnum(text[pos - 1]):
            token = text[start:pos]
            if token != " " or start == 0:
                tokens.append(token)
            start = pos
    tokens.append(text[start:])
    return tokens


def join_tokens(tokens: Sequence[str]) -> str:
    """The inverse of ``split_tokens``: a space between two alphanumeric tokens."""
    out = []
    for i, token in enumerate(tokens):
        if i and _is_alnum(tokens[i - 1][0]) and _is_alnum(token[0]):
            out.append(" ")
        out.append(token)
    return "".join(out)


def _unescape(escaped: str) -> str:
    def replace(match: re.Match) -> str:
        if match.group(1) is None:
            return "_" if match.group(0) == "\\u" else "\\"
        code = int(match.group(1))
        return chr(code) if code <= sys.maxunicode else "\u3013"  # (an undefined character)

    return _UNESCAPE.sub(replace, escaped[:-1] if escaped.endswith("_") else escaped)


class SubwordVocabulary:
    """A ``SubwordTextEncoder`` vocabulary: ``encode(text)``, ``decode(ids)``, ``vocab_size``.

    Args:
      subtokens: the subtoken strings in id order (the vocabulary file's lines).
    """

    def __init__(self, subtokens: Sequence[str]):
        subtokens = list(subtokens)
        if not any(subtokens):
            raise ValueError("SubwordVocabulary: the vocabulary has no subtokens.")
        self._subtokens = subtokens
        self._ids = {s: i for i, s in enumerate(subtokens) if s}
        self._max_len = max(len(s) for s in subtokens)
        self._alphabet = {c for s in subtokens for c in s} | _ESCAPE_CHARS
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_text(cls, text: str) -> SubwordVocabulary:
        """Parses a vocabulary file's contents (one subtoken per line, maybe quoted)."""
        subtokens = []
        for line in text.splitlines():
            s = line.rstrip()
            if len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
                s = s[1:-1]
            subtokens.append(s)
        return cls(subtokens)

    def to_text(self) -> str:
        """The vocabulary file's contents, quoted as Trax's files are."""
        return "".join(f"'{s}'\n" for s in self._subtokens)

    @property
    def vocab_size(self) -> int:
        return len(self._subtokens)

    def _escape(self, token: str) -> str:
        token = token.replace("\\", "\\\\").replace("_", "\\u")
        return "".join(c if c in self._alphabet and c != "\n" else f"\\{ord(c)};"
                       for c in token) + "_"

    def _token_ids(self, token: str) -> list[int]:
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        escaped = self._escape(token)
        ids, start = [], 0
        while start < len(escaped):
            for end in range(min(len(escaped), start + self._max_len), start, -1):
                sub_id = self._ids.get(escaped[start:end])
                if sub_id is not None:
                    ids.append(sub_id)
                    start = end
                    break
            else:
                raise ValueError(
                    f"SubwordVocabulary: {escaped[start]!r} (in {token!r}) has no subtoken; "
                    f"a complete vocabulary holds every character of its alphabet and "
                    f"{''.join(sorted(_ESCAPE_CHARS))!r}.")
        if len(self._cache) < 1 << 16:
            self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """The subtoken ids of ``text``."""
        return [i for token in split_tokens(text) for i in self._token_ids(token)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; ids outside the vocabulary decode to nothing."""
        joined = "".join(self._subtokens[i] if 0 <= i < len(self._subtokens) else ""
                         for i in (int(i) for i in ids))
        tokens = [_unescape(t + "_") for t in joined.split("_") if t]
        return join_tokens([t for t in tokens if t])
