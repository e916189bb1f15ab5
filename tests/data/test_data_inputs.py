"""Stream functions with exact values: Shuffle, Batch, BucketByLength, filters, LM inputs."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from retrax import data

A = np.array


def rows(batch):
    return [x.tolist() for x in batch] if isinstance(batch, tuple) else batch.tolist()


# -- Shuffle ---------------------------------------------------------------------------


def test_shuffle_is_a_seeded_permutation_within_its_window():
    a = list(data.Shuffle(4, seed=1)(range(50)))
    assert a == list(data.Shuffle(4, seed=1)(range(50)))
    assert a != list(data.Shuffle(4, seed=2)(range(50)))
    assert sorted(a) == list(range(50)) and a != list(range(50))
    # Item i enters the buffer when item i-4 leaves at the earliest: it cannot come sooner.
    assert all(pos >= item - 4 for pos, item in enumerate(a))
    assert list(data.Shuffle(1)(range(5))) == [0, 1, 2, 3, 4]
    assert sorted(data.Shuffle(10)(range(3))) == [0, 1, 2]  # Shorter than the buffer.
    with pytest.raises(ValueError, match=r"Arg queue_size \(0\) is less than 1"):
        data.Shuffle(0)


# -- Batch -------------------------------------------------------------------------------


def test_batch_pads_each_component_to_the_largest_shape():
    examples = [(A([1, 2, 3]), A([1]), A(7)), (A([4]), A([2, 3]), A(8))]
    x, y, z = next(data.Batch(2)(examples))
    assert rows((x, y, z)) == [[[1, 2, 3], [4, 0, 0]], [[1, 0], [2, 3]], [7, 8]]
    batch = next(data.Batch(2)([{"a": A([1.5])}, {"a": A([2.5, 3.5])}]))
    assert batch["a"].tolist() == [[1.5, 0.0], [2.5, 3.5]]
    assert next(data.Batch(1)([A([[1, 2]])])).shape == (1, 1, 2)


def test_batch_drops_the_partial_last_batch_counted_or_keeps_it(caplog):
    caplog.set_level(logging.WARNING, logger="retrax.data")
    stream = data.Batch(2)([A([i]) for i in range(5)])
    assert [b.tolist() for b in stream] == [[[0], [1]], [[2], [3]]]
    assert stream.stats() == {"Batch": {"dropped_remainder": 1}}
    assert "dropped the last 1 examples of the stream" in caplog.text
    kept = data.Batch(2, drop_remainder=False)([A([i]) for i in range(5)])
    assert [b.tolist() for b in kept] == [[[0], [1]], [[2], [3]], [[4]]]
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        data.Batch(0)


def test_batch_errors_name_the_example_and_shapes():
    bad_rank = [(A([1, 2]), A([1])), (A([3]), A([1])), (A([4]), A([1])),
                (A([[5, 6], [7, 8]]), A([1]))]
    stream = data.Batch(2)(bad_rank)
    next(stream)
    with pytest.raises(ValueError, match=r"Batch: component 0 of example 3 has shape \(2, 2\) "
                                         r"\(rank 2\) but in example 2 it has shape \(1,\) "
                                         r"\(rank 1\)"):
        next(stream)
    with pytest.raises(ValueError, match="example 1 has number of components 3 but example 0 "
                                         "has 2"):
        next(data.Batch(2)([(A([1]), A([1])), (A([1]), A([1]), A([1]))]))
    with pytest.raises(TypeError, match="component 1 of example 0 is a str.*data.Tokenize"):
        next(data.Batch(2)([(A([1]), "text"), (A([1]), "more")]))
    with pytest.raises(TypeError, match="example 1 has dtype float64 but in example 0 it has "
                                        "dtype int64"):
        next(data.Batch(2)([A([1]), A([1.5])]))


def test_pad_to_max_dims_matches_trax_rules():
    two = [np.ones((2, 10)), np.ones((3, 9))]
    assert data.pad_to_max_dims(two).shape == (2, 3, 10)
    assert data.pad_to_max_dims(two, boundary=12).shape == (2, 4, 12)  # 2*3 < 12: power of 2.
    assert data.pad_to_max_dims([np.ones((8, 10)), np.ones((8, 9))], 12).shape == (2, 12, 12)
    assert data.pad_to_max_dims([np.ones(5), np.ones(3)], 4, strict_pad_on_len=True).shape == (2, 8)
    assert data.pad_to_max_dims([np.ones(4), np.ones(4)], 4).shape == (2, 4)
    padded = data.pad_to_max_dims([A([1, 2]), A([3])])
    assert padded.tolist() == [[1, 2], [3, 0]]
    with pytest.raises(ValueError, match=r"array 1 has shape \(\) \(rank 0\)"):
        data.pad_to_max_dims([A([1]), A(2)])


# -- BucketByLength --------------------------------------------------------------------


def test_bucket_by_length_groups_and_pads_to_the_boundary(caplog):
    caplog.set_level(logging.WARNING, logger="retrax.data")
    examples = [np.arange(1, n + 1) for n in (1, 3, 2, 5, 4, 3)]
    stream = data.BucketByLength([2, 4], [2, 2, 1])(examples)
    got = [rows(b) for b in stream]
    assert got == [[[1, 0], [1, 2]], [[1, 2, 3, 4, 5]], [[1, 2, 3, 0], [1, 2, 3, 4]]]
    assert stream.stats() == {"BucketByLength": {"dropped_remainder": 1}}
    assert "dropped 1 examples left in partly filled buckets" in caplog.text
    kept = data.BucketByLength([2, 4], [2, 2, 1], drop_remainder=False)(examples)
    assert [rows(b) for b in kept][-1] == [[1, 2, 3, 0]]  # Padded to its boundary too.
    pairs = [(np.arange(n), np.arange(n + 1)) for n in (1, 2)]
    x, y = next(data.BucketByLength([8], [2, 1], length_keys=[0])(pairs))
    assert x.shape == (2, 2) and y.shape == (2, 4)  # 2*max < boundary: next power of two.
    with pytest.raises(ValueError, match="needs one batch size per bucket"):
        data.BucketByLength([2, 4], [2])


# -- Length filters, truncation, padding ---------------------------------------------------


def test_filter_by_length_drops_truncates_or_raises():
    ex = [(np.arange(n), np.arange(n)) for n in (2, 6, 1, 4)]
    stream = data.FilterByLength(4, min_length=2)(ex)
    assert [len(x) for x, _ in stream] == [2, 4]
    assert stream.stats() == {"FilterByLength": {"dropped_too_long": 1, "dropped_too_short": 1}}
    cut = data.FilterByLength(4, too_long="truncate")(ex)
    assert [(x.tolist(), y.tolist()) for x, y in cut][1] == ([0, 1, 2, 3], [0, 1, 2, 3])
    assert cut.stats() == {"FilterByLength": {"truncated": 1}}
    with pytest.raises(ValueError, match=r"example 1 has length 6 > max_length=4 "
                                         r"\(too_long='error'\)"):
        list(data.FilterByLength(4, too_long="error")(ex))
    with pytest.raises(ValueError, match="too_long must be"):
        data.FilterByLength(4, too_long="cut")
    with pytest.raises(TypeError, match="tokenize text first"):
        list(data.FilterByLength(4)(["abc"]))


def test_truncate_pad_and_filter_empty():
    ex = (np.arange(5), np.arange(12).reshape(4, 3))
    stream = data.TruncateToLength({0: 2, 1: (3, 2)})([ex])
    x, y = next(stream)
    assert x.tolist() == [0, 1] and y.tolist() == [[0, 1], [3, 4], [6, 7]]
    assert stream.stats() == {"TruncateToLength": {"truncated": 2}}
    assert next(data.TruncateToLength({0: 3})([np.arange(5)])).tolist() == [0, 1, 2]
    assert next(data.TruncateToLength()([ex])) is ex
    x, y = next(data.PadToLength({0: 4, 1: 6}, pad_value={0: -1, 1: 9})([(A([1, 2]), A([3]))]))
    assert x.tolist() == [1, 2, -1, -1] and y.tolist() == [3, 9, 9, 9, 9, 9]
    assert next(data.PadToLength({0: 4}, multiple=True)([np.arange(5)])).shape == (8,)
    with pytest.raises(ValueError, match="len_map parameter should be provided"):
        data.PadToLength()
    empty = data.FilterEmptyExamples()([(A([1]), A([2])), (A([], int), A([2]))])
    assert len(list(empty)) == 1 and empty.stats() == {"FilterEmptyExamples": {"dropped_empty": 1}}


# -- Loss weights and LM inputs --------------------------------------------------------------


def test_add_loss_weights():
    x, y, w = next(data.AddLossWeights()([(A([1, 2]), A([3, 0]))]))
    assert w.dtype == np.float32 and w.tolist() == [1.0, 1.0]
    _, _, w = next(data.AddLossWeights(id_to_mask=0)([(A([1, 2]), A([3, 0]), A([2, 2]))]))
    assert w.tolist() == [2.0, 0.0]
    four = (A([1]), A([1]), A([1]), A([1]))
    assert next(data.AddLossWeights()([four])) is four
    with pytest.raises(ValueError, match="example 0 has 4 components; masking id_to_mask=0"):
        next(data.add_loss_weights([four], id_to_mask=0))


def test_concatenate_to_lm_input():
    x, y, w = next(data.ConcatenateToLMInput(pad_to_length=6)([(A([5, 6]), A([7, 8, 9]))]))
    assert x.tolist() == [5, 6, 7, 8, 9, 0] and (y == x).all()
    assert w.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    x, y = next(data.ConcatenateToLMInput()([A([1, 2])]))
    assert x.tolist() == y.tolist() == [1, 2]
    with pytest.raises(ValueError, match=r"example 0 has lengths \(2, 3\), longer than "
                                         r"pad_to_length=4"):
        next(data.ConcatenateToLMInput(pad_to_length=4)([(A([5, 6]), A([7, 8, 9]))]))


def test_dup_cast_append_unbatch_and_log(capsys):
    assert rows(next(data.Dup()([(A([1]), A([2]))]))) == [[1], [1], [2]]
    x, y = next(data.CastTo(np.float32, indices=(1,))([(A([1]), A([2]))]))
    assert x.dtype == np.int64 and y.dtype == np.float32
    assert rows(next(data.AppendValue({0: [9]})([(A([1]), A([2]))]))) == [[1, 9], [2]]
    stream = data.UnBatch()([(A([[1, 2], [3, 4]]), A([5, 6]))])
    assert [rows(e) for e in stream] == [[[1, 2], 5], [[3, 4], 6]]
    logged = list(data.Log(n_steps_per_example=2)([(A([1, 2]),), (A([3]),), (A([4]),)]))
    assert len(logged) == 3
    out = capsys.readouterr().out.splitlines()
    assert out == ["(ShapeDtype{shape:(2,), dtype:int64},)", "(ShapeDtype{shape:(1,), dtype:int64},)"]
