"""PackSequences: exact rows in both modes, long sequences, padding counts, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrax import data

SEQS = [np.array([5, 6, 7]), np.array([8, 9]), np.array([10, 11, 12, 13])]


def packed(stage, seqs=SEQS):
    stream = stage(seqs)
    return [r.tolist() for r in stream], stream.stats().get("PackSequences", {})


def test_concat_mode_cuts_the_token_stream_and_pads_only_the_end():
    got, stats = packed(data.PackSequences(4))
    assert got == [[5, 6, 7, 1], [8, 9, 1, 10], [11, 12, 13, 1]]
    assert stats == {"rows": 3}
    got, stats = packed(data.PackSequences(5, separator_id=None))
    assert got == [[5, 6, 7, 8, 9], [10, 11, 12, 13, 0]]
    assert stats == {"rows": 2, "padded_tokens": 1}
    row = next(data.PackSequences(2)([np.array([3, 4], np.int64)]))
    assert row.dtype == np.int32


def test_whole_mode_keeps_sequences_in_one_row():
    got, stats = packed(data.PackSequences(7, mode="whole"))
    assert got == [[5, 6, 7, 1, 8, 9, 1], [10, 11, 12, 13, 1, 0, 0]]
    assert stats == {"rows": 2, "padded_tokens": 2}


def test_whole_mode_long_sequences_split_truncate_or_drop_counted(caplog):
    seqs = [np.array([2, 3]), np.arange(10, 17), np.array([4])]
    got, stats = packed(data.PackSequences(4, mode="whole"), seqs)  # 'split'
    assert got == [[2, 3, 1, 0], [10, 11, 12, 13], [14, 15, 16, 1], [4, 1, 0, 0]]
    assert stats == {"rows": 4, "padded_tokens": 3}
    got, stats = packed(data.PackSequences(4, mode="whole", too_long="truncate"), seqs)
    assert got == [[2, 3, 1, 0], [10, 11, 12, 13], [4, 1, 0, 0]]
    assert stats == {"rows": 3, "padded_tokens": 3, "truncated": 1, "truncated_tokens": 4}
    got, stats = packed(data.PackSequences(4, mode="whole", too_long="drop"), seqs)
    assert got == [[2, 3, 1, 0], [4, 1, 0, 0]]
    assert stats == {"rows": 2, "padded_tokens": 3, "dropped_too_long": 1, "dropped_tokens": 8}
    assert "dropped example 1 has 8 tokens (with separator) > length=4" in caplog.text


def test_pack_errors():
    with pytest.raises(TypeError, match="example 0 is a str; it packs 1-D token arrays"):
        next(data.PackSequences(4)(["text"]))
    with pytest.raises(TypeError, match=r"example 0 has shape \(1, 2\)"):
        next(data.PackSequences(4)([np.ones((1, 2), int)]))
    with pytest.raises(ValueError, match="length must be a positive int"):
        data.PackSequences(0)
    with pytest.raises(ValueError, match="mode must be"):
        data.PackSequences(4, mode="pack")


@pytest.mark.parametrize("mode", ["concat", "whole"])
def test_resume_in_the_middle_of_a_long_sequence(mode):
    seqs = [np.arange(2, 40), np.array([7]), np.arange(3, 20)]

    def make():
        return data.Serial(seqs, data.PackSequences(8, mode=mode))

    expected = [r.tolist() for r in make()()]
    stream = make()()
    head = [next(stream).tolist() for _ in range(2)]
    saved = json.loads(json.dumps(stream.state_dict()))
    resumed = make()()
    resumed.load_state_dict(saved)
    assert head + [r.tolist() for r in resumed] == expected
