"""Trax's stream mixing and skipping: Parallel, CountAndSkip/data_counters, UniformlySeek, Prefetch.

Orders are computed by hand from Trax 1.4.1's rules (round-robin over the
streams still due in a round of ``sum(counters)``; nesting by counter for
``gradually_reweight``).
"""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from retrax import data
from retrax.data import counters, inputs


def take(stream, n):
    return [next(stream) for _ in range(n)]


def letters(letter):
    """A stream function yielding 'a0', 'a1', ... (endless)."""
    def fn():
        i = 0
        while True:
            yield f"{letter}{i}"
            i += 1
    return fn


# -- Parallel: orders -----------------------------------------------------------------


def test_parallel_without_counters_alternates():
    mixed = data.Parallel([letters("a"), letters("b"), letters("c")])()
    assert take(mixed, 7) == ["a0", "b0", "c0", "a1", "b1", "c1", "a2"]


def test_parallel_counters_round_robin_within_a_round():
    # Round of 1 + 3 = 4: pass 1 takes a, b; pass 2 b; pass 3 b (a is done) -> reset.
    mixed = data.Parallel([letters("a"), letters("b")], counters=(1, 3))()
    assert take(mixed, 8) == ["a0", "b0", "b1", "b2", "a1", "b3", "b4", "b5"]
    # (3, 1, 2): a b c | a c | a -> reset after the 6th; the next round starts after a.
    mixed = data.Parallel([letters("a"), letters("b"), letters("c")], counters=(3, 1, 2))()
    assert take(mixed, 12) == ["a0", "b0", "c0", "a1", "c1", "a2",
                               "b1", "c2", "a3", "c3", "a4", "a5"]


def test_parallel_zero_counter_leaves_a_stream_out_without_calling_it():
    def never():
        raise AssertionError("a stream with counter 0 must not be called")

    mixed = data.Parallel([letters("a"), never, letters("c")], counters=[2, 0, 1])()
    # (2, 1) for a, c: a c | a -> reset, then c is still in the same pass: c | a | a ...
    assert take(mixed, 7) == ["a0", "c0", "a1", "c1", "a2", "a3", "c2"]


def test_parallel_reweight_by_minimum_divides_by_the_smallest_counter():
    # (30, 90, 45) -> (1, 3, 1): a b c | b | b -> reset mid-pass, so c follows: c | a b ...
    mixed = data.Parallel([letters("a"), letters("b"), letters("c")], counters=(30, 90, 45),
                          reweight_by_minimum=True)()
    assert take(mixed, 10) == ["a0", "b0", "c0", "b1", "b2", "c1", "a1", "b3", "b4", "b5"]
    # Ratios as floats work once reweighted: (0.2, 0.5) -> (1, 2).
    mixed = data.Parallel([letters("a"), letters("b")], counters=(0.2, 0.5),
                          reweight_by_minimum=True)()
    assert take(mixed, 6) == ["a0", "b0", "b1", "a1", "b2", "b3"]


def test_parallel_gradually_reweight_nests_streams_by_counter():
    # Sorted counters 1 (a), 2 (b), 4 (c): a (b c^2)^2 per cycle, streams given unsorted.
    mixed = data.Parallel([letters("c"), letters("a"), letters("b")], counters=(4, 1, 2),
                          gradually_reweight=True)()
    assert take(mixed, 14) == ["a0", "b0", "c0", "c1", "b1", "c2", "c3",
                               "a1", "b2", "c4", "c5", "b3", "c6", "c7"]


def test_parallel_use_remainders_adds_what_the_nesting_rounds_away():
    # Counters 1, 2, 5: nesting takes 1 a, 2 b, 2*floor(5/2) = 4 c; one more c per cycle.
    mixed = data.Parallel([letters("a"), letters("b"), letters("c")], counters=(1, 2, 5),
                          gradually_reweight=True, use_remainders=True)()
    cycle = ["a0", "b0", "c0", "c1", "b1", "c2", "c3", "c4"]
    assert take(mixed, 9) == cycle + ["a1"]
    # Without use_remainders the remainder is not taken.
    plain = data.Parallel([letters("a"), letters("b"), letters("c")], counters=(1, 2, 5),
                          gradually_reweight=True)()
    assert take(plain, 8) == cycle[:7] + ["a1"]
    # Smallest counter 2: nesting takes a (b b); the remainders add 2 - 1 a and 4 - 2 b.
    mixed = data.Parallel([letters("a"), letters("b")], counters=(2, 4),
                          gradually_reweight=True, use_remainders=True)()
    assert take(mixed, 8) == ["a0", "b0", "b1", "a1", "b2", "b3", "a2", "b4"]


def test_parallel_nests_and_passes_its_input_to_every_stream():
    inner = data.Parallel([letters("a"), letters("b")])
    outer = data.Parallel([inner, letters("c")])()
    assert take(outer, 6) == ["a0", "c0", "b0", "c1", "a1", "c2"]
    # Called on an input, every stream function gets it (here: a function, as in Trax's use).
    seen = []
    mixed = data.Parallel([lambda g: (seen.append(g) or iter(range(3))),
                           lambda g: iter(range(10, 13))])(gen=len)
    assert take(mixed, 4) == [0, 10, 1, 11] and seen == [len]
    # A stream function taking an argument is called with None when there is no input.
    mixed = data.Parallel([lambda _: iter("xy"), lambda _: iter("XY")])()
    assert list(mixed) == ["x", "X", "y", "Y"]


def test_parallel_in_a_serial_then_batched():
    pipeline = data.Serial(
        data.Parallel([lambda: iter([(np.array([1, 2]), 0)] * 9),
                       lambda: iter([(np.array([7]), 1)] * 9)], counters=(1, 2)),
        data.Batch(3),
    )
    x, y = next(pipeline())
    assert x.tolist() == [[1, 2], [7, 0], [7, 0]] and y.tolist() == [0, 1, 1]


def test_parallel_ends_with_its_first_exhausted_stream_and_counts_it(caplog):
    mixed = data.Parallel([lambda: iter([1, 2]), lambda: iter([10, 20, 30, 40])])()
    assert list(mixed) == [1, 10, 2, 20]
    assert mixed.stats() == {"Parallel": {"ended_with": 1}}
    assert "stream 0 of the mix ended" in caplog.text


def test_parallel_position_is_exact_with_retrax_pipelines():
    def make():
        return data.Serial(data.Parallel(
            [data.Serial(list(range(100)), data.Shuffle(5, seed=3)),
             data.Serial(list(range(100, 200)))],
            counters=(2, 3)))

    reference = take(make()(), 40)
    stream = make()()
    take(stream, 17)
    assert stream.exact
    saved = stream.state_dict()
    fresh = make()()
    fresh.load_state_dict(saved)
    assert take(fresh, 23) == reference[17:]
    # gradually_reweight mid-cycle.
    grad = data.Parallel([data.Serial(list(range(50))), data.Serial(list(range(100, 200)))],
                         counters=(1, 3), gradually_reweight=True)
    reference = take(grad(), 20)
    stream = grad()
    take(stream, 6)
    fresh = grad()
    fresh.load_state_dict(stream.state_dict())
    assert take(fresh, 14) == reference[6:]


def test_parallel_of_plain_generators_restores_by_redrawing():
    make = lambda: data.Parallel([lambda: iter(range(50)), lambda: iter(range(100, 150))])  # noqa: E731
    stream = make()()
    take(stream, 5)
    assert not stream.exact
    fresh = make()()
    fresh.load_state_dict(stream.state_dict())
    assert take(fresh, 3) == [102, 3, 103]


@pytest.mark.parametrize("kwargs, match", [
    (dict(fns=[]), "at least one stream function"),
    (dict(fns=letters("a")), "wrap a single one in a list"),
    (dict(fns=[letters("a"), 3]), r"fns\[1\] is a int"),
    (dict(fns=[letters("a")], counters=(1, 2)), "1 streams but 2 counters"),
    (dict(fns=[letters("a"), letters("b")], counters=(1, -1)), r"counters\[1\] is -1"),
    (dict(fns=[letters("a"), letters("b")], counters=(0, 0)), "every counter is 0"),
    (dict(fns=[letters("a"), letters("b")], counters=(0.5, 1)), "must be integers"),
])
def test_parallel_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        data.Parallel(**kwargs)


def test_parallel_stream_function_must_return_an_iterator():
    with pytest.raises(TypeError, match="stream function 1 .* returned int"):
        data.Parallel([letters("a"), lambda: 5])()


# -- CountAndSkip and data_counters -------------------------------------------------------


@pytest.fixture
def clean_counters():
    saved = dict(counters.data_counters)
    counters.data_counters.clear()
    yield counters.data_counters
    counters.data_counters.clear()
    counters.data_counters.update(saved)


def test_count_and_skip_counts_and_a_new_stream_skips_what_was_counted(clean_counters):
    pipeline = data.Serial(lambda _: iter("abcdefg"), data.CountAndSkip("letters"))
    first = pipeline()
    assert take(first, 3) == ["a", "b", "c"]
    assert inputs.data_counters == {"letters": 3}
    second = pipeline()
    assert next(second) == "d" and inputs.data_counters["letters"] == 4
    assert second.stats() == {"CountAndSkip": {"skipped": 3}}
    # The counter is shared: the first stream, still at "c", now skips past "d".
    assert next(first) == "e" and inputs.data_counters["letters"] == 5
    inputs.data_counters["letters"] = 0  # Reset: a new stream starts over.
    assert next(pipeline()) == "a" and inputs.data_counters["letters"] == 1
    assert list(data.count_and_skip(iter("xyz"), "other")) == ["x", "y", "z"]
    assert inputs.data_counters == {"letters": 1, "other": 3}
    with pytest.raises(ValueError, match="non-empty string"):
        data.CountAndSkip("")


def test_data_counters_save_and_load_in_trax_file_format(clean_counters, tmp_path):
    clean_counters.update({"train": 12, "eval": 3})
    counters.save_data_counters(str(tmp_path), host_id=0)
    path = tmp_path / "data_counters0.pkl"
    assert pickle.loads(path.read_bytes()) == {"train": 12, "eval": 3}  # Trax reads it.
    same_dict = inputs.data_counters
    clean_counters.clear()
    clean_counters["stale"] = 1
    counters.load_data_counters(str(tmp_path), host_id=0)
    assert same_dict is counters.data_counters is inputs.data_counters  # Changed in place.
    assert same_dict == {"train": 12, "eval": 3}
    counters.load_data_counters(str(tmp_path), host_id=5)  # Missing file: unchanged.
    assert same_dict == {"train": 12, "eval": 3}
    # A resumed pipeline skips what the saved run counted.
    assert next(data.Serial(lambda _: iter(range(20)), data.CountAndSkip("eval"))()) == 3


@pytest.mark.parametrize("first", [list(range(30)), lambda _: iter(range(30))],
                         ids=["exact", "redrawn"])
def test_counters_and_a_restored_position_together_do_not_skip_twice(clean_counters, tmp_path,
                                                                      first):
    pipeline = data.Serial(first, data.CountAndSkip("both"))
    stream = pipeline()
    assert take(stream, 4) == [0, 1, 2, 3]
    saved = stream.state_dict()
    counters.save_data_counters(str(tmp_path), host_id=0)
    clean_counters.clear()  # A new process: load the counters, then restore the position.
    counters.load_data_counters(str(tmp_path), host_id=0)
    resumed = pipeline()
    resumed.load_state_dict(saved)
    assert take(resumed, 2) == [4, 5] and clean_counters == {"both": 6}
    clean_counters.clear()  # Without the counters file the position alone is enough too.
    resumed = pipeline()
    resumed.load_state_dict(saved)
    assert next(resumed) == 4 and clean_counters == {"both": 5}


def test_restoring_into_a_stream_that_read_ahead_resets_its_counter(clean_counters):
    def make():
        return data.Serial(list(range(100)), data.CountAndSkip("ahead"), data.Batch(2),
                           data.Prefetch(4))

    stream = make()()
    take(stream, 3)
    saved = stream.state_dict()
    stream.last.close()  # Its Prefetch thread would go on counting into the shared counters.
    clean_counters.clear()
    fresh = make()()
    next(fresh)  # Its Prefetch reads ahead, counting up to 10 more examples.
    fresh.load_state_dict(saved)
    assert clean_counters["ahead"] == 6
    assert [b.tolist() for b in take(fresh, 2)] == [[6, 7], [8, 9]]


def test_load_data_counters_refuses_files_that_are_not_counters(clean_counters, tmp_path):
    (tmp_path / "data_counters0.pkl").write_bytes(pickle.dumps({"x": threading.Lock}))
    with pytest.raises(ValueError, match="not a data counters file"):
        counters.load_data_counters(str(tmp_path), host_id=0)
    (tmp_path / "data_counters1.pkl").write_bytes(pickle.dumps({"x": "1"}))
    with pytest.raises(ValueError, match="dict of names to ints"):
        counters.load_data_counters(str(tmp_path), host_id=1)
    assert clean_counters == {}


def test_uniformly_seek_starts_each_host_at_its_share():
    starts = [next(data.UniformlySeek("toy", host_id=h, n_hosts=4, dataset_size=10)(range(10)))
              for h in range(4)]
    assert starts == [0, 2, 4, 6]
    stream = data.UniformlySeek("toy", host_id=1, n_hosts=2, dataset_size=10)(range(10))
    assert take(stream, 2) == [5, 6]
    fresh = data.UniformlySeek("toy", host_id=1, n_hosts=2, dataset_size=10)(range(10))
    fresh.load_state_dict(stream.state_dict())
    assert list(fresh) == [7, 8, 9]
    with pytest.raises(ValueError, match="give the dataset a name"):
        data.UniformlySeek()
    with pytest.raises(ValueError, match=r"host_id=4 is not in \[0, n_hosts=4\)"):
        data.UniformlySeek("toy", host_id=4, n_hosts=4, dataset_size=8)(range(8))


# -- Prefetch --------------------------------------------------------------------------


def test_prefetch_keeps_order_and_reads_ahead():
    drawn = []
    ahead = threading.Event()

    def source(_):
        for i in range(10):
            drawn.append(i)
            if len(drawn) == 4:  # 1 handed out + 2 waiting + 1 drawn, blocked on the queue.
                ahead.set()
            yield i

    stream = data.Serial(source, data.Prefetch(2))()
    assert next(stream) == 0
    assert ahead.wait(timeout=30)
    assert list(stream) == list(range(1, 10))
    assert [x.tolist() for x in data.Serial(
        [np.arange(3), np.arange(2)], data.Prefetch(1), data.Batch(2))()] == [[[0, 1, 2],
                                                                              [0, 1, 0]]]


def test_prefetch_raises_upstream_errors_in_order():
    def source(_):
        yield from (1, 2)
        raise KeyError("bad record")

    stream = data.Serial(source, data.Prefetch(3))()
    assert take(stream, 2) == [1, 2]
    with pytest.raises(KeyError, match="bad record"):
        next(stream)


def test_prefetch_saves_the_position_of_the_last_example_handed_out():
    def make():
        return data.Serial(list(range(60)), data.Shuffle(8, seed=2), data.Prefetch(4),
                           data.Batch(3))

    reference = [b.tolist() for b in make()()]
    stream = make()()
    take(stream, 5)
    assert stream.exact
    saved = stream.state_dict()
    assert len(saved["nodes"]) == 2  # Prefetch holds the position of the stages before it.
    take(stream, 3)  # Moving on does not change what was saved.
    fresh = make()()
    fresh.load_state_dict(saved)
    assert [b.tolist() for b in fresh] == reference[5:]
    # Loading into a stream that is running ahead discards its read-ahead.
    stream.load_state_dict(saved)
    assert [b.tolist() for b in stream] == reference[5:]


def test_prefetch_close_loses_nothing_and_plain_functions_restore_by_redrawing():
    stream = data.Serial(lambda _: iter(range(8)), data.Prefetch(3))()
    assert take(stream, 2) == [0, 1]
    stream.last.close()
    assert list(stream) == [2, 3, 4, 5, 6, 7]
    stream = data.Serial(lambda _: iter(range(8)), data.Prefetch(3))()
    take(stream, 3)
    assert not stream.exact
    fresh = data.Serial(lambda _: iter(range(8)), data.Prefetch(3))()
    fresh.load_state_dict(stream.state_dict())
    assert list(fresh) == [3, 4, 5, 6, 7]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_prefetch_bad_size(bad):
    with pytest.raises(ValueError, match="n_prefetch must be a positive int"):
        data.Prefetch(bad)
