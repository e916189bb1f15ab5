"""data.Serial, Stream positions (state_dict / load_state_dict), counters, empty streams."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from retrax import data


def assert_same(a, b):
    """Examples (nested tuples/dicts of arrays, str, numbers) are equal."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def check_resume(make_pipeline, n_before: int, n_after: int):
    """Saving after ``n_before`` items and loading into a fresh stream continues exactly."""
    straight = make_pipeline()()
    expected = [next(straight) for _ in range(n_before + n_after)]
    first = make_pipeline()()
    for _ in range(n_before):
        next(first)
    saved = json.loads(json.dumps(first.state_dict()))  # Must survive JSON (checkpoint metadata).
    resumed = make_pipeline()()
    resumed.load_state_dict(saved)
    got = [next(resumed) for _ in range(n_after)]
    for a, b in zip(got, expected[n_before:]):
        assert_same(a, b)
    assert resumed.yielded == n_before + n_after
    return saved


def token_examples(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, 30, rng.integers(1, 9)).astype(np.int32) for _ in range(n)]


def test_serial_composes_in_order_and_flattens_nested_lists():
    add = lambda g: (x + 1 for x in g)  # noqa: E731
    double = lambda g: (x * 2 for x in g)  # noqa: E731
    inner = data.Serial(double)
    pipeline = data.Serial([1, 2, 3], [add, [inner]], [])
    assert list(pipeline()) == [4, 6, 8]
    assert list(data.Serial(add, double)([1, 2])) == [4, 6]
    assert list(data.Serial(lambda _: iter("ab"))()) == ["a", "b"]  # Trax-style source function.


def test_stage_applied_directly_and_lowercase_helpers():
    x = np.array([1, 2])
    out = next(data.Dup()([x]))
    assert_same(out, (x, x))
    assert sorted(data.shuffle(iter(range(5)), 2)) == [0, 1, 2, 3, 4]
    xs, ys = next(data.batch([(x, x), (x, x)], 2))
    assert xs.shape == (2, 2)


def test_serial_errors():
    with pytest.raises(ValueError, match="needs an input stream"):
        data.Serial(data.Shuffle())()
    with pytest.raises(ValueError, match="is a source"):
        data.Serial(data.Shuffle(), data.TFDS.__new__(data.TFDS))([1])
    with pytest.raises(TypeError, match="not a stream of examples"):
        data.Serial("corpus.txt")()
    with pytest.raises(TypeError, match="returned int"):
        data.Serial([1], lambda g: 3)()
    with pytest.raises(TypeError, match="item 1 .* is not a stream function"):
        data.Serial([1], 5)
    with pytest.raises(ValueError, match="at least one"):
        data.Serial()


def test_empty_stream_raises_clear_error_with_counters():
    pipeline = data.Serial(data.FilterByLength(2), data.Batch(2))
    stream = pipeline([np.arange(5), np.arange(4), np.arange(1)])
    with pytest.raises(data.EmptyStreamError, match=r"ended without yielding any example.*"
                       r"FilterByLength: dropped_too_long=2.*Batch: dropped_remainder=1"):
        next(stream)
    with pytest.raises(ValueError, match="without yielding"):
        next(data.Serial(lambda _: iter(()))())
    # A stream that did yield ends with a plain StopIteration.
    s = data.Serial([1])()
    assert next(s) == 1
    with pytest.raises(StopIteration):
        next(s)


def test_state_roundtrip_through_shuffle_batch_and_packing():
    def make():
        return data.Serial(token_examples(), data.Shuffle(7, seed=3),
                           data.PackSequences(6), data.Shuffle(5, seed=4), data.Batch(3),
                           data.ConcatenateToLMInput(), data.AddLossWeights(id_to_mask=0))
    for n in (0, 1, 4):
        saved = check_resume(make, n, 3)
    assert saved["stages"] == ["Iterable", "Shuffle", "PackSequences", "Shuffle", "Batch",
                               "ConcatenateToLMInput", "AddLossWeights"]
    assert saved["nodes"] is not None


def test_state_roundtrip_bucket_filter_truncate_unbatch():
    def make():
        pairs = [(x, x[::-1].copy()) for x in token_examples(80, seed=1)]
        return data.Serial(pairs, data.FilterByLength(7, min_length=2),
                           data.TruncateToLength({0: 5}), data.Shuffle(4, seed=9),
                           data.BucketByLength([3, 5], [3, 2, 2]), data.UnBatch(),
                           data.Batch(4))
    check_resume(make, 2, 5)


def test_one_shot_generator_source_is_restored_by_redrawing():
    def gen():
        rng = np.random.default_rng(5)
        while True:
            yield rng.integers(0, 100, 3)

    def make():
        return data.Serial(gen(), data.Shuffle(4, seed=0), data.Batch(2))
    saved = check_resume(make, 3, 4)
    assert saved["nodes"][0] == {"stats": {}, "position": 3 * 2 + 4}  # 4 fill the buffer


def test_plain_function_stage_falls_back_to_re_skipping():
    def make():
        return data.Serial(list(range(20)), lambda g: (x * 3 for x in g), data.Batch(2))
    saved = check_resume(make, 3, 2)
    assert saved["nodes"] is None and saved["yielded"] == 3
    stream = make()()
    for _ in range(5):
        next(stream)
    with pytest.raises(ValueError, match="already yielded 5 examples, past the saved position"):
        stream.load_state_dict(saved)


def test_load_state_checks_the_pipeline():
    saved = data.Serial([1, 2], data.Shuffle(2))().state_dict()
    with pytest.raises(ValueError, match=r"for the pipeline \[Iterable -> Shuffle\] but this one "
                                         r"is \[Iterable -> Batch\]"):
        data.Serial([1, 2], data.Batch(1))().load_state_dict(saved)
    with pytest.raises(ValueError, match="Not a saved data-stream position"):
        data.Serial([1])().load_state_dict({"yielded": 3})


def test_generator_source_cannot_move_back():
    stream = data.Serial(iter(range(10)))()
    saved = stream.state_dict()
    next(stream)
    next(stream)
    with pytest.raises(ValueError, match="Cannot move a one-shot iterable back"):
        stream.load_state_dict(saved)


def test_stats_report_and_first_case_logged(caplog):
    caplog.set_level(logging.WARNING, logger="retrax.data")
    stream = data.FilterByLength(3)([np.arange(1), np.arange(5), np.arange(6), np.arange(2)])
    assert [x.tolist() for x in stream] == [[0], [0, 1]]
    assert stream.stats() == {"FilterByLength": {"dropped_too_long": 2}}
    assert stream.report() == "FilterByLength: dropped_too_long=2."
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "dropped example 1 has length 5 > max_length=3" in messages[0]
    assert data.Serial([1])().report() == "No stage counted anything."


def test_buffered_examples_of_every_type_survive_a_saved_position():
    # A Shuffle holds examples in its buffer, so the saved position holds them too:
    # arrays of several dtypes, numpy scalars, bytes, str, None, bools, nested containers.
    def examples():
        return [(np.arange(600, dtype=np.int32).reshape(2, 300) % 7 + i, np.float32(2.5 * i),
                 b"\xff" * i, {"k": [np.array(["a", "bc"]), None, i % 2 == 0]}, "t\u00e9xt")
                for i in range(6)]

    def make():
        return data.Serial(examples(), data.Shuffle(4, seed=1))

    saved = check_resume(make, 2, 4)
    # Large arrays are compressed: the four buffered examples (2.4 kB of int32 each)
    # take much less than their raw size in the saved JSON.
    assert len(json.dumps(saved)) < 4 * 2400 / 2
    stream = data.Serial([{1}, {2}, {3}, {4}], data.Shuffle(2))()
    next(stream)  # (the buffer now holds sets)
    with pytest.raises(TypeError, match="Cannot save a pipeline position holding a set"):
        stream.state_dict()
