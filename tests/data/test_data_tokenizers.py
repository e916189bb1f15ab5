"""Byte, character and SentencePiece tokenizers; Tokenize / Detokenize stages."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from retrax import data

TEXT = "def f(x):\n    return x  # é\n"


def test_byte_tokenizer_exact_ids_and_roundtrip(tmp_path):
    tok = data.ByteTokenizer()
    assert tok.vocab_size == 258 and tok.pad_id == 0 and tok.eos_id == 1
    assert tok.encode("Aé") == [65 + 2, 0xC3 + 2, 0xA9 + 2]
    assert tok.decode(tok.encode(TEXT)) == TEXT
    assert tok.decode([0, 67, 1, 0xC3 + 2]) == "A\ufffd"  # Reserved ids dropped; bad UTF-8.
    with pytest.raises(ValueError, match=r"ids must be in \[0, 258\); got ids from 0 to 300"):
        tok.decode([0, 300])
    tok.save(str(tmp_path))
    again = data.load_tokenizer(str(tmp_path))
    assert isinstance(again, data.ByteTokenizer) and again.encode(TEXT) == tok.encode(TEXT)
    raw = data.ByteTokenizer(n_reserved_ids=0)
    assert raw.vocab_size == 256 and raw.encode("A") == [65] and raw.eos_id is None


def test_char_tokenizer_built_from_a_corpus(tmp_path):
    tok = data.CharTokenizer.build(["aab", "bca", "a"], min_count=2)
    assert tok.chars == ["a", "b"] and tok.vocab_size == 5
    assert tok.encode("abcz") == [3, 4, 2, 2]
    assert tok.decode([3, 4, 2, 1, 0]) == "ab\ufffd"
    tok.save(str(tmp_path))
    assert (tmp_path / "tokenizer.json").read_text().count('"a"') == 1
    again = data.CharTokenizer.load(str(tmp_path))
    assert again.chars == tok.chars
    with pytest.raises(TypeError, match="holds a CharTokenizer, not a ByteTokenizer"):
        data.ByteTokenizer.load(str(tmp_path))
    with pytest.raises(ValueError, match="has no characters"):
        data.CharTokenizer.build([""])
    with pytest.raises(FileNotFoundError, match="tokenizer.json is missing"):
        data.load_tokenizer(str(tmp_path / "nowhere"))


def test_sentencepiece_trained_on_a_corpus_saved_and_loaded(tmp_path):
    pytest.importorskip("sentencepiece")
    corpus = [f"the cat {w} sat on the mat number {i}" for i, w in
              enumerate(["black", "white", "grey", "small", "big"] * 20)]
    tok = data.SentencePieceTokenizer.train(corpus, vocab_size=40)
    assert tok.vocab_size == 40
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    ids = tok.encode("the black cat sat")
    assert all(3 <= i < 40 for i in ids) and tok.decode(ids) == "the black cat sat"
    assert tok.decode(ids + [1, 0]) == "the black cat sat"
    tok.save(str(tmp_path))
    assert (tmp_path / "sentencepiece.model").exists()
    again = data.load_tokenizer(str(tmp_path))
    assert again.encode("the white mat") == tok.encode("the white mat")
    assert data.SentencePieceTokenizer.train(corpus, vocab_size=40).encode("grey cat") == \
        tok.encode("grey cat")  # Deterministic training.
    via_trax_names = data.Tokenize(vocab_type="sentencepiece", vocab_dir=str(tmp_path),
                                   vocab_file="sentencepiece.model")
    assert next(via_trax_names(["the cat"])).tolist() == tok.encode("the cat")
    with pytest.raises(ValueError, match="smaller vocab_size"):
        data.SentencePieceTokenizer.train(["ab"], vocab_size=500)


def test_tokenize_keys_reserved_ids_bytes_and_detokenize():
    tok = data.ByteTokenizer()
    stream = data.Tokenize(keys=[0], tokenizer=tok, n_reserved_ids=1)([("ab", "cd", 3)])
    x, y, z = next(stream)
    assert x.dtype == np.int32 and x.tolist() == [100, 101] and y == "cd" and z == 3
    x, y, z = next(data.Tokenize(vocab_type="char")([("ab", b"c\xff", 3)]))
    assert x.tolist() == [99, 100] and y.tolist() == [101, 257]  # Bytes are bytes.
    d = next(data.Tokenize(keys=["t"], tokenizer=tok)([{"t": "a", "n": 1}]))
    assert d["t"].tolist() == [99] and d["n"] == 1
    assert next(data.Detokenize(tokenizer=tok)([np.array([99, 100])])) == "ab"
    assert next(data.Detokenize(keys=[0], vocab_type="char")([(np.array([99]), 5)])) == ("a", 5)
    assert data.detokenize([100], vocab_type="char", n_reserved_ids=1) == "a"
    assert data.vocab_size(vocab_type="char", n_reserved_ids=3) == 261
    with pytest.raises(TypeError, match="component 2 of example 0 is a int, not a string"):
        next(data.Tokenize(keys=[2], tokenizer=tok)([("a", "b", 3)]))


def test_tokenize_counts_bad_utf8_and_unknown_characters(caplog):
    caplog.set_level(logging.WARNING, logger="retrax.data")
    chars = data.CharTokenizer(["a", "b"])
    stream = data.Tokenize(tokenizer=chars)([b"ab\xff", "abc", "zz"])
    assert [x.tolist() for x in stream] == [[3, 4, 2], [3, 4, 2], [2, 2]]
    assert stream.stats() == {"Tokenize": {"invalid_utf8": 1, "unknown_tokens": 4}}
    assert "example 0 has 1 tokens not in the vocabulary" in caplog.text
    with pytest.raises(ValueError, match="example 0 is not valid UTF-8"):
        next(data.Tokenize(tokenizer=chars, errors="strict")([b"\xff"]))


def test_trax_vocab_types():
    # Trax's default: a subword file in Trax's public bucket, read through fsspec.
    with pytest.raises(ImportError, match="gs://trax-ml/vocabs/en_8k.subword.*pip install gcsfs"):
        data.Tokenize(vocab_file="en_8k.subword")
    with pytest.raises(NotImplementedError, match="BERT"):
        data.Tokenize(vocab_type="bert", vocab_file="vocab.txt")
    with pytest.raises(ValueError, match="needs vocab_dir"):
        data.Tokenize(vocab_type="saved")
    with pytest.raises(ValueError, match="Unknown vocab_type 'words'"):
        data.get_tokenizer("words")
