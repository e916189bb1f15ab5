"""The hooks ``with_mode`` is built on: ``own_mode``, ``set_own_mode``, ``own_weights_and_state``.

Also that every name ``retrax.layers.layer`` had before it was split stays
importable from there and is the same object as the one in its new module.
"""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.layers import base, custom_gradient, layer, layer_storage, layer_walks


def test_own_mode_is_the_layers_own_and_mode_follows_the_sublayers():
    dropout = tl.Dropout(0.5, mode="eval")
    model = tl.Serial(tl.Dense(2), dropout)
    assert [lyr.own_mode for lyr in layer_walks.walk_layers(model)] == [None, None, "eval"]
    assert model.own_mode is None and model.mode == "eval"


def test_set_own_mode_switches_only_that_layer_and_refuses_a_layer_without_modes():
    dropout = tl.Dropout(0.5)
    model = tl.Serial(tl.Dense(2), dropout)
    dropout.set_own_mode("eval")
    assert (dropout.own_mode, model.mode) == ("eval", "eval")
    with pytest.raises(ValueError, match=r"Serial has no mode of its own; .*tl.with_mode\(model, 'eval'\)"):
        model.set_own_mode("eval")
    with pytest.raises(ValueError, match="allows setting only"):
        dropout.own_mode = "train"


def test_own_weights_and_state_are_a_leafs_values_and_empty_for_a_combinator():
    dense = tl.Dense(3)
    model = tl.Serial(dense)
    model.init(shapes.ShapeDtype((2, 4)))
    w, s = dense.own_weights_and_state
    assert [a.shape for a in w] == [(4, 3), (3,)] and s == ()
    assert model.own_weights_and_state == ((), ())


def test_with_mode_copy_shares_arrays_with_its_model_and_keeps_sharing_inside():
    dense = tl.Dense(2)
    model = tl.Serial(dense, tl.Dropout(0.5), dense)
    model.init(shapes.ShapeDtype((1, 2)))
    copy = tl.with_mode(model, "eval")
    assert copy.sublayers[0] is copy.sublayers[2] and copy.sublayers[0] is not dense
    assert all(a is b for a, b in zip(copy.sublayers[0].weights, dense.weights))
    assert (copy.sublayers[1].own_mode, model.sublayers[1].own_mode) == ("eval", "train")
    x = np.arange(2.0).reshape(1, 2)
    np.testing.assert_array_equal(copy(x), tl.Serial(dense, dense)(x))


def test_names_stay_importable_from_layer_and_base():
    assert layer.with_mode is layer_walks.with_mode is base.with_mode is tl.with_mode
    assert layer.walk_layers is layer_walks.walk_layers is base.walk_layers
    assert base.Layer is layer.Layer and issubclass(layer.Layer, layer_storage.LayerStorage)
    assert callable(custom_gradient.run_with_own_backward)
