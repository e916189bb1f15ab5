"""The public layer protocol (docs/writing_a_combinator.md): hooks, pass context, file I/O."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes
from retrax.layers import base, file_io


def sig(*shape):
    return shapes.ShapeDtype(shape, np.float32)


def test_read_only_properties_describe_the_layer():
    dense = tl.Dense(2)
    branch = tl.Branch(tl.Dense(2), None)
    assert not dense.initialized and not dense.has_rng
    dense.init(sig(1, 3))
    assert dense.initialized and dense.caller[0].endswith("test_protocol.py")
    parallel = branch.sublayers[1]
    assert parallel.hidden_in_path and not branch.hidden_in_path
    assert [str(x) for x in branch.sublayers_to_print] == ["Dense_2", "None"]
    assert dense.sublayers_to_print is None
    for name in ("initialized", "caller", "hidden_in_path", "sublayers_to_print", "has_rng"):
        with pytest.raises(ValueError, match="allows setting only"):
            setattr(dense, name, True)


def test_a_subclass_defining_an_old_private_hook_is_refused():
    with pytest.raises(TypeError, match="rename _forward_pure to forward_in_pass"):
        class Old(tl.Layer):  # noqa: F841
            def _forward_pure(self, x, weights, state, rng, ctx):
                return x, state


def test_pass_resolves_a_shared_layer_to_its_first_occurrence():
    dense = tl.Dense(3)
    model = tl.Serial(dense, dense)
    weights, _ = model.init(sig(1, 3))
    assert base.is_weights_marker(weights[1])
    with base.new_pass() as ctx:
        w0, _ = ctx.init_layer(dense, sig(1, 3), None)
        again = ctx.init_layer(dense, sig(1, 3), None)
        assert again == (tl.GET_WEIGHTS_FROM_CACHE, tl.GET_STATE_FROM_CACHE)
        x = np.ones((1, 3), np.float32)
        y, _ = ctx.apply_layer(dense, x, w0, (), None)
        y_marker, _ = ctx.apply_layer(dense, x, tl.GET_WEIGHTS_FROM_CACHE, (), None)
    np.testing.assert_array_equal(y, y_marker)


def test_init_child_and_apply_child_add_the_parent_to_the_error_path():
    boom = tl.Fn("Boom", lambda x: x.reshape(7))
    parent = tl.Serial(tl.Relu(), boom)
    with base.new_pass() as ctx:
        with pytest.raises(tl.LayerError) as info:
            base.apply_child(parent, 1, boom, np.ones(3), (), (), None, ctx)
    assert info.value.layer_path == "Serial[1] > Boom"


def test_save_and_load_go_through_the_registered_implementation(tmp_path):
    saved = file_io.registered()
    assert [f.__module__ + "." + f.__name__ for f in saved] == [
        "retrax.checkpoints.save_layer", "retrax.checkpoints.load_layer"]
    calls = []
    file_io.register(save=lambda *a: calls.append(("save",) + a),
                     load=lambda *a: calls.append(("load",) + a) or ((), ()))
    try:
        layer = tl.Relu()
        layer.save_to_file("x.ckpt", weights_only=True)
        assert layer.init_from_file("x.ckpt") == ((), ())
    finally:
        file_io.register(*saved)
    assert calls == [("save", layer, "x.ckpt", True, None), ("load", layer, "x.ckpt", False, None)]
    model = tl.Serial(tl.Dense(2))
    model.init(sig(1, 3))
    model.save_to_file(str(tmp_path / "m.safetensors"), input_signature=sig(1, 3))
    fresh = tl.Serial(tl.Dense(2))
    fresh.init_from_file(str(tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(fresh.weights[0][0], model.weights[0][0])
