"""retrax.rl.space_serializer: exact tokens, round trips, duck-typed spaces, clear refusals."""

from __future__ import annotations

import importlib
import logging
import types

import jax
import numpy as np
import pytest

from retrax.rl import space_serializer, spaces


def test_box_tokens_are_base_vocab_digits_most_significant_first():
    srl = space_serializer.create(spaces.Box(low=-2.0, high=2.0, shape=(2,)), vocab_size=4,
                                  precision=3)
    # (x + 2) / 4: 0.640625 = 2/4 + 2/16 + 1/64; 0.0 -> 0.5 = 2/4.
    x = np.array([[0.5625, 0.0]])
    np.testing.assert_array_equal(srl.serialize(x), [[2, 2, 1, 2, 0, 0]])
    assert srl.representation_length == 6
    np.testing.assert_array_equal(srl.significance_map, [0, 1, 2, 0, 1, 2])
    np.testing.assert_allclose(srl.deserialize(np.array([[2, 2, 1, 2, 0, 0]])), x)


def test_box_bounds_map_to_the_lowest_and_highest_tokens():
    srl = space_serializer.create(spaces.Box(low=-1.0, high=1.0, shape=(1,)), vocab_size=256,
                                  precision=4)
    tokens = np.asarray(srl.serialize(np.array([[-1.0], [1.0], [5.0], [-7.0]])))
    np.testing.assert_array_equal(tokens, [[0] * 4, [255] * 4, [255] * 4, [0] * 4])


def test_box_round_trip_is_within_one_bin_and_gives_the_bin_lower_edge():
    vocab, precision = 257, 3
    srl = space_serializer.BoxSpaceSerializer(spaces.Box(low=-10.0, high=10.0, shape=(3, 2)),
                                              vocab_size=vocab, precision=precision)
    x = np.random.default_rng(0).uniform(-10, 10, size=(5, 3, 2)).astype(np.float32)
    back = np.asarray(srl.deserialize(srl.serialize(x)))
    assert back.shape == x.shape
    bin_width = 20.0 / vocab ** precision
    assert np.all(back <= x + 1e-5)
    assert np.max(x - back) < bin_width + 1e-5


def test_box_scalar_space_and_compiled_equals_eager():
    srl = space_serializer.create(spaces.Box(low=0.0, high=1.0, shape=()), vocab_size=10,
                                  precision=2)
    x = np.array([0.25, 0.5, 0.75], np.float32)
    eager = np.asarray(srl.serialize(x))
    np.testing.assert_array_equal(eager, [[2, 5], [5, 0], [7, 5]])
    np.testing.assert_array_equal(jax.jit(srl.serialize)(x), eager)
    assert srl.deserialize(eager).shape == (3,)


def test_box_wider_than_max_range_is_clipped_with_a_warning(caplog):
    space = spaces.Box(low=-1e18, high=1e18, shape=(1,))
    with caplog.at_level(logging.WARNING, logger="retrax.rl.space_serializer"):
        srl = space_serializer.create(space, vocab_size=257, precision=4, max_range=(-10, 10))
    assert "max_range" in caplog.text
    np.testing.assert_array_equal(srl.low, [-10.0])
    np.testing.assert_array_equal(srl.high, [10.0])
    back = srl.deserialize(srl.serialize(np.array([[1.2345]])))
    np.testing.assert_allclose(back, [[1.2345]], atol=1e-5)


def test_discrete_is_one_token_and_honours_start():
    srl = space_serializer.create(spaces.Discrete(3, start=5), vocab_size=4)
    tokens = srl.serialize(np.array([5, 7, 6]))
    np.testing.assert_array_equal(tokens, [[0], [2], [1]])
    np.testing.assert_array_equal(srl.deserialize(tokens), [5, 7, 6])
    np.testing.assert_array_equal(srl.significance_map, [0])
    assert srl.representation_length == 1


def test_multi_discrete_is_one_token_per_entry():
    srl = space_serializer.create(spaces.MultiDiscrete([[2, 3], [4, 5]]), vocab_size=5)
    x = np.array([[[1, 2], [3, 4]], [[0, 0], [2, 1]]])
    tokens = srl.serialize(x)
    np.testing.assert_array_equal(tokens, [[1, 2, 3, 4], [0, 0, 2, 1]])
    np.testing.assert_array_equal(srl.deserialize(tokens), x)
    np.testing.assert_array_equal(srl.significance_map, [0, 0, 0, 0])


def test_duck_typed_spaces_without_gym():
    box = types.SimpleNamespace(shape=(1,), dtype=np.float32, low=np.zeros(1), high=np.ones(1))
    discrete = types.SimpleNamespace(n=4)
    assert type(space_serializer.create(box, 4)).__name__ == "BoxSpaceSerializer"
    assert type(space_serializer.create(discrete, 4)).__name__ == "DiscreteSpaceSerializer"


def test_unsupported_space_names_what_is_expected():
    with pytest.raises(TypeError, match="Box-like space.*Discrete-like.*MultiDiscrete-like"):
        space_serializer.create(object(), vocab_size=4)
    multi_binary = types.SimpleNamespace(n=3, shape=(3,))  # has n, but is not one integer
    with pytest.raises(TypeError, match="cannot serialize a SimpleNamespace"):
        space_serializer.create(multi_binary, vocab_size=4)
    with pytest.raises(TypeError, match="expected a box space; got Discrete"):
        space_serializer.BoxSpaceSerializer(spaces.Discrete(2), vocab_size=4)


def test_bad_sizes_and_shapes_are_refused():
    with pytest.raises(ValueError, match="5 elements but the vocabulary only 4"):
        space_serializer.create(spaces.Discrete(5), vocab_size=4)
    with pytest.raises(ValueError, match="an entry has 6 values"):
        space_serializer.create(spaces.MultiDiscrete([2, 6]), vocab_size=4)
    with pytest.raises(ValueError, match="precision must be a positive int"):
        space_serializer.create(spaces.Box(0.0, 1.0, ()), vocab_size=4, precision=0)
    srl = space_serializer.create(spaces.Box(0.0, 1.0, (1,)), vocab_size=4)
    with pytest.raises(ValueError, match=r"expected a batch of shape \(batch, 1\); got shape \(1, 2\)"):
        srl.serialize(np.array([[0.1, 0.2]]))


def test_gym_spaces_work_as_they_are():
    # gymnasium is in the dev extra (retrax itself does not need it); gym 0.26 has the same
    # spaces and was checked by hand for the Trax conformance run.
    gym = importlib.import_module("gymnasium")
    box = space_serializer.create(gym.spaces.Box(low=0.0, high=1.0, shape=(2,)), vocab_size=4)
    np.testing.assert_array_equal(box.serialize(np.array([[0.5625, 1.0]])), [[2, 1, 3, 3]])
    assert space_serializer.create(gym.spaces.Discrete(3), 3).representation_length == 1
    assert space_serializer.create(gym.spaces.MultiDiscrete([2, 3]), 3).representation_length == 2
    # A space's own samples round-trip (a box within one bin of the lower edge).
    sample = np.stack([gym.spaces.MultiDiscrete([2, 3]).sample() for _ in range(4)])
    multi = space_serializer.create(gym.spaces.MultiDiscrete([2, 3]), 3)
    np.testing.assert_array_equal(multi.deserialize(multi.serialize(sample)), sample)
    with pytest.raises(TypeError, match="cannot serialize a MultiBinary"):
        space_serializer.create(gym.spaces.MultiBinary(3), vocab_size=2)
