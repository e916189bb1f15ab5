"""Trax's 'subword' vocabularies (Tensor2Tensor's SubwordTextEncoder) without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import data
from retrax.data.subword import SubwordVocabulary, join_tokens, split_tokens

# A vocabulary in Trax's file format: quoted lines, reserved ids first.
VOCAB_FILE = "\n".join([
    "'<pad>'", "'<EOS>'", "'the_'", "'cat_'", "'sat_'", "'on_'", "'mat_'", "'. _'", "'s'",
    "'at_'", "'c'", "'m'", "'_'", "'t'", "'h'", "'e'", "'a'", "'o'", "'n'", "'.'", "' '",
    "'\\'", "'u'", "';'", "'0'", "'1'", "'2'", "'3'", "'4'", "'5'", "'6'", "'7'", "'8'",
    "'9'", "'!'", "'<'", "'p'", "'d'", "'>'", "'E'", "'O'", "'S'",
]) + "\n"


@pytest.fixture
def vocab_dir(tmp_path):
    (tmp_path / "tiny.subword").write_text(VOCAB_FILE, encoding="utf-8")
    return str(tmp_path)


def test_the_tokenizer_splits_like_tensor2tensor():
    assert split_tokens("The cat sat.") == ["The", "cat", "sat", "."]
    assert split_tokens("  two  spaces") == ["  ", "two", "  ", "spaces"]
    assert split_tokens("é1 ü") == ["é1", "ü"]  # letters and numbers of any script
    assert join_tokens(["The", "cat", "sat", "."]) == "The cat sat."


def test_ids_are_line_numbers_and_the_greedy_longest_match(vocab_dir):
    tok = data.get_tokenizer("subword", "tiny.subword", vocab_dir)
    assert tok.vocab_size == 42
    assert tok.encode("the cat sat on the mat") == [2, 3, 4, 5, 2, 6]
    # "mats": no 'mats_' subtoken: 'm' then the longest match 'at_' fails at 's' ...
    assert tok.encode("mats") == [11, 16, 13, 8, 12]  # m a t s _
    assert tok.decode([2, 3, 4, 5, 2, 6]) == "the cat sat on the mat"
    # As in Trax, reserved ids decode to their strings (strip them before decoding).
    assert tok.decode([2, 3, 1, 0]) == "the cat<EOS><pad>"


@pytest.mark.parametrize("text", [
    "the cat sat on the mat.", "snake_case and back\\slash", "unknown ∑ and 漢字 chars",
    "line\nbreaks\tand  double  spaces", "", "  leading", "trailing  ", "123 4.5!",
])
def test_any_text_round_trips_through_escapes(vocab_dir, text):
    tok = data.get_tokenizer("subword", "tiny.subword", vocab_dir)
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_escapes_follow_the_format(vocab_dir):
    tok = data.get_tokenizer("subword", "tiny.subword", vocab_dir)
    # '_' becomes '\u', an unknown character '\<code point>;'.
    assert tok.decode(tok.encode("a_")) == "a_"
    pieces = "".join(tok.vocabulary._subtokens[i] for i in tok.encode("∑"))  # noqa: SLF001
    assert pieces == "\\8721;_"


def test_tokenize_stages_save_and_load(vocab_dir, tmp_path):
    stage = data.Tokenize(vocab_type="subword", vocab_file="tiny.subword", vocab_dir=vocab_dir)
    (out,) = list(stage(iter(["the mat"])))
    np.testing.assert_array_equal(out, [2, 6])
    assert out.dtype == np.int32
    assert data.detokenize(out, vocab_type="subword", vocab_file="tiny.subword",
                           vocab_dir=vocab_dir) == "the mat"
    tok = data.get_tokenizer("subword", "tiny.subword", vocab_dir)
    saved = tmp_path / "saved"
    saved.mkdir()
    tok.save(str(saved))
    again = data.load_tokenizer(str(saved))
    assert isinstance(again, data.SubwordTokenizer)
    assert again.encode("the cat sat") == tok.encode("the cat sat")


def test_an_incomplete_vocabulary_is_named():
    vocab = SubwordVocabulary(["<pad>", "<EOS>", "ab_"])
    with pytest.raises(ValueError, match=r"\(in 'c'\) has no subtoken"):
        vocab.encode("c")
    with pytest.raises(ValueError, match="needs vocab_file"):
        data.get_tokenizer("subword")


def test_trax_tokenize_function(vocab_dir):
    stream = iter([("the cat", "sat on the mat")])
    (inputs, targets), = list(data.tokenize(stream, keys=[0], vocab_type="subword",
                                            vocab_file="tiny.subword", vocab_dir=vocab_dir,
                                            n_reserved_ids=1))
    np.testing.assert_array_equal(inputs, [3, 4])  # ids shifted by n_reserved_ids
    assert targets == "sat on the mat"  # only key 0 is tokenized


def test_an_empty_vocabulary_is_refused():
    with pytest.raises(ValueError, match="the vocabulary has no subtokens"):
        SubwordVocabulary(["", ""])
