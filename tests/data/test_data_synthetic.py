"""Trax's toy Inputs (copy, addition, sine, random), the Inputs bundle, bucket_by_length,
and the names Trax programs reach through ``trax.data.inputs``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from retrax import data
from retrax.data import inputs as inputs_module


def take(stream, n):
    return [next(stream) for _ in range(n)]


def same_batches(a, b):
    return all(all(np.array_equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b))


# -- Copy tasks -----------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_copy_rows_are_0_w_0_w(reverse):
    inputs = data.sequence_copy_inputs(vocab_size=7, batch_size=5, train_length=6,
                                       eval_min_length=8, eval_max_length=10, reverse=reverse,
                                       pad_to_multiple=16)
    lengths = set()
    for x, y, w in take(inputs.train_stream(1), 30):
        assert x.dtype == np.int32 and w.dtype == np.float32 and (x == y).all()
        assert x.shape[0] == 5 and x.shape[1] % 16 == 0 and w.shape == x.shape
        n = int(w[0].sum())  # Length of w: weights are 1 on the answer only.
        lengths.add(n)
        src, answer = x[:, 1:n + 1], x[:, n + 2:2 * n + 2]
        assert (x[:, 0] == 0).all() and (x[:, n + 1] == 0).all() and (x[:, 2 * n + 2:] == 0).all()
        assert ((src >= 1) & (src <= 5)).all()
        assert np.array_equal(answer, src[:, ::-1] if reverse else src)
        expected_w = np.r_[np.zeros(n + 2), np.ones(n), np.zeros(x.shape[1] - 2 * n - 2)]
        assert np.array_equal(w, np.tile(expected_w, (5, 1)))
    assert lengths == {1, 2, 3, 4, 5}  # Trax's range: 1 .. train_length - 1.
    eval_lengths = {int(w[0].sum()) for _, _, w in take(inputs.eval_stream(1), 30)}
    assert eval_lengths == {8, 9}  # eval_min_length .. eval_max_length - 1.


def test_copy_inputs_are_seeded():
    make = lambda seed: data.sequence_copy_inputs(9, 2, 5, 2, 4, seed=seed)  # noqa: E731
    a = take(make(0).train_stream(1), 4)
    assert same_batches(a, take(make(0).train_stream(1), 4))
    assert not same_batches(a, take(make(1).train_stream(1), 4))
    assert not same_batches(a, take(make(0).eval_stream(1), 4))
    with pytest.raises(ValueError, match="train_length must be an int >= 2"):
        data.sequence_copy_inputs(9, 2, 1, 2, 4)
    with pytest.raises(ValueError, match="eval_max_length must be an int >= 3"):
        data.sequence_copy_inputs(9, 2, 5, 2, 2)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 3"):
        data.sequence_copy_inputs(2, 2, 5, 2, 4)


def test_simple_sequence_copy_rows_are_w_with_weights_one():
    inputs = data.simple_sequence_copy_inputs(vocab_size=5, batch_size=3, train_length=4,
                                              eval_min_length=6, eval_max_length=6,
                                              pad_to_multiple=8)
    lengths = set()
    for x, y, w in take(inputs.train_stream(1), 30):
        n = int(w[0].sum())
        lengths.add(n)
        assert x.shape == (3, 8) and (x == y).all()
        assert ((x[:, :n] >= 1) & (x[:, :n] <= 3)).all() and (x[:, n:] == 0).all()
    assert lengths == {1, 2, 3, 4}
    assert {int(w[0].sum()) for _, _, w in take(inputs.eval_stream(1), 5)} == {6}


# -- Addition -------------------------------------------------------------------------


def digits_value(tokens, base):
    return sum((t - 1) * base ** i for i, t in enumerate(tokens))


def test_addition_lm_layout_adds_correctly():
    vocab, base = 13, 10  # Digits 0..9 are tokens 1..10, '+' is 11, <S> is 12.
    inputs = data.addition_inputs(vocab_size=vocab, batch_size=8, train_length=12,
                                  eval_min_length=6, eval_max_length=9, pad_to_multiple=8)
    for x, y, w in take(inputs.train_stream(1), 5):
        assert x.shape[1] % 8 == 0 and (x == y).all() and w.dtype == np.float32
        for row, weights in zip(x.tolist(), w.tolist()):
            assert row[0] == 12
            second = row.index(12, 1)
            question, answer = row[1:second], [t for t in row[second + 1:] if t]
            plus = question.index(11)
            a, b = question[:plus], question[plus + 1:]
            assert 3 <= len(question) <= 12
            assert all(len(n) == 1 or n[-1] != 1 for n in (a, b))  # No leading zero digit.
            assert digits_value(answer, base) == digits_value(a, base) + digits_value(b, base)
            assert weights == [0.0] * (second + 1) + [1.0] * len(answer) + \
                [0.0] * (len(row) - second - 1 - len(answer))


def test_addition_encdec_layout_and_length_bounds():
    inputs = data.addition_inputs(vocab_size=5, batch_size=64, train_length=16,
                                  eval_min_length=16, eval_max_length=16, pad_to_multiple=16,
                                  encdec=True)
    for stream in (inputs.train_stream(1), inputs.eval_stream(1)):
        for x, y, w in take(stream, 3):
            assert x.shape == y.shape == w.shape == (64, 16)
            for q, s, ww in zip(x.tolist(), y.tolist(), w.tolist()):
                q = [t for t in q if t]
                answer = [t for t in s if t]
                plus = q.index(3)  # Base 2: digits are tokens 1, 2; '+' is 3.
                assert digits_value(answer, 2) == digits_value(q[:plus], 2) + \
                    digits_value(q[plus + 1:], 2)
                assert ww == [1.0] * len(answer) + [0.0] * (16 - len(answer))


@pytest.mark.parametrize("kwargs, match", [
    (dict(train_length=2), "at least 3"),
    (dict(eval_min_length=1), "at least 3"),
    (dict(eval_min_length=9, eval_max_length=8), "min_length=9 is above max_length=8"),
    (dict(vocab_size=4), "vocab_size .* must be an int >= 5"),
])
def test_addition_inputs_bad_arguments_fail_at_construction(kwargs, match):
    args = dict(vocab_size=6, batch_size=4, train_length=10, eval_min_length=4,
                eval_max_length=8)
    with pytest.raises(ValueError, match=match):
        data.addition_inputs(**{**args, **kwargs})


def test_lower_endian_helpers():
    assert inputs_module.number_to_lower_endian(0, 10) == [0]
    assert inputs_module.number_to_lower_endian(1234, 10) == [4, 3, 2, 1]
    assert inputs_module.number_to_lower_endian(6, 2) == [0, 1, 1]
    assert inputs_module.lower_endian_to_number([0, 1, 1], 2) == 6
    rng = np.random.default_rng(0)
    for length in (1, 2, 5):
        digits = inputs_module.random_number_lower_endian(length, 3, rng)
        assert len(digits) == length and all(0 <= d < 3 for d in digits)
        assert length == 1 or digits[-1] != 0


# -- Sine and random inputs ------------------------------------------------------------


def test_sine_rows_are_sinusoids():
    inputs = data.sine_inputs(batch_size=4, length=12, min_period=1.0, max_period=3.0)
    obs, act, obs2, mask = next(inputs.train_stream(1))
    assert obs.shape == act.shape == mask.shape == (4, 12) and obs is obs2
    assert act.dtype == np.int32 and not act.any() and (mask == 1).all()
    for row in obs.astype(np.float64):
        # sin(a + 2d) = 2 cos(d) sin(a + d) - sin(a): one coefficient 2 cos(d) fits every t.
        lhs, mid = row[2:] + row[:-2], row[1:-1]
        c = (lhs @ mid) / (mid @ mid)
        np.testing.assert_allclose(lhs, c * mid, atol=1e-5)
        period = 1 / math.acos(c / 2)  # d = 1 / period.
        assert 1.0 - 1e-3 <= period <= 3.0 + 1e-3
    assert same_batches([next(inputs.train_stream(1))], [(obs, act, obs2, mask)])
    assert not np.array_equal(next(inputs.eval_stream(1))[0], obs)
    with pytest.raises(ValueError, match="0 < min_period <= max_period"):
        data.sine_inputs(2, 3, min_period=0.0)


def test_random_inputs_ranges_are_inclusive_and_typed():
    inputs = data.random_inputs(input_shape=(64, 5), input_range=(0, 2), output_shape=(64,),
                                output_dtype=np.float32, output_range=(-1.0, 1.0))
    x, y = next(inputs.train_stream(1))
    assert x.shape == (64, 5) and x.dtype == np.int32 and set(np.unique(x)) == {0, 1, 2}
    assert y.shape == (64,) and y.dtype == np.float32 and (-1 <= y).all() and (y < 1).all()
    assert inputs.input_shape == (5,) and inputs.target_shape == ()
    with pytest.raises(ValueError, match="give input_shape and output_shape"):
        data.random_inputs(input_shape=(2, 3))


# -- The Inputs bundle -----------------------------------------------------------------


def test_inputs_bundle_shapes_and_streams():
    train = lambda n: iter([(np.zeros((n * 2, 7), np.int32), np.ones((n * 2, 3), np.float32))] * 3)  # noqa: E731
    evals = lambda n: iter([("eval",)])  # noqa: E731
    train_eval = lambda n: iter([("train_eval",)])  # noqa: E731
    bundle = data.Inputs(train, evals, train_eval)
    assert bundle.input_shape == (7,) and bundle.target_shape == (3,)
    assert bundle.input_dtype == np.int32 and bundle.target_dtype == np.float32
    assert bundle.example_shape_dtype == ([(2, 7), (2, 3)], [np.int32, np.float32])
    assert next(bundle.train_stream(2))[0].shape == (4, 7)
    assert next(bundle.eval_stream(1)) == ("eval",)
    assert next(bundle.train_eval_stream(1)) == ("train_eval",)  # Trax returns train here.
    assert next(data.Inputs(train).eval_stream(1))[0].shape == (2, 7)
    with pytest.raises(ValueError, match="Did you forget the n_devices argument"):
        data.Inputs(iter([]))
    with pytest.raises(ValueError, match="yielded no batch"):
        data.Inputs(lambda n: iter([]))
    made = inputs_module.make_inputs([[(np.zeros(3), np.zeros(()))] * 2, data.Batch(2)])
    assert made.input_shape == (3,)
    mixed = inputs_module.make_parallel_stream([lambda: iter("ab"), lambda: iter("AB")])
    assert list(mixed) == ["a", "A", "b", "B"]


# -- bucket_by_length and Trax's module path -------------------------------------------


def test_bucket_by_length_function_with_length_fn():
    examples = [(np.ones(n), np.ones(2 * n)) for n in (3, 7, 2, 6)]
    batches = list(data.bucket_by_length(iter(examples), lambda ex: len(ex[1]), [8, 16],
                                         [2, 2], strict_pad_on_len=True))
    # Lengths 6, 14, 4, 12: bucket 0 gets 6 and 4, bucket 1 gets 14 and 12.
    assert [b[1].shape for b in batches] == [(2, 8), (2, 16)]
    assert batches[0][0].shape == (2, 8)  # Strict: every axis up to a multiple of 8.
    stream = data.bucket_by_length(iter(examples + [(np.ones(9), np.ones(18))]),
                                   lambda ex: len(ex[1]), [8, 16], [2, 2])
    with pytest.raises(ValueError, match="example 4 has length 18, longer than the last "
                                         "boundary 16, and there is no bucket"):
        list(stream)
    with pytest.raises(TypeError, match="length_fn must be callable"):
        data.BucketByLength([4], [1, 1], length_fn=3)


def test_trax_inputs_module_path():
    from retrax.data import inputs

    assert inputs.pad_to_max_dims([np.ones((2, 10)), np.ones((3, 9))], 12).shape == (2, 4, 12)
    assert inputs.pad_to_max_dims([np.ones((6,)), np.ones((3,))], 4, True).shape == (2, 8)
    names = ["Serial", "Parallel", "Shuffle", "shuffle", "Batch", "batch", "BucketByLength",
             "bucket_by_length", "UnBatch", "Prefetch", "CountAndSkip", "count_and_skip",
             "UniformlySeek", "PrefixLM", "MLM", "generate_sequential_chunks",
             "generate_random_noise_mask", "consume_noise_mask", "random_spans_noise_mask",
             "Inputs", "addition_inputs", "sequence_copy_inputs", "simple_sequence_copy_inputs",
             "sine_inputs", "random_inputs", "FilterByLength", "PadToLength", "AddLossWeights",
             "add_loss_weights", "save_data_counters", "load_data_counters"]
    missing = [n for n in names if not callable(getattr(inputs, n, None))]
    assert not missing
    assert isinstance(inputs.data_counters, dict)
    for name in ["Parallel", "Prefetch", "CountAndSkip", "bucket_by_length", "PrefixLM", "MLM",
                 "random_spans_noise_mask", "sine_inputs", "addition_inputs", "UniformlySeek"]:
        assert getattr(data, name) is getattr(inputs, name)
