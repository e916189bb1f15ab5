"""Combinators: stack semantics, arity, names and exact values (TRAX_REFERENCE §1.3, §2)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def f32(*values):
    """A float32 vector of ``values``."""
    return np.array(values, dtype=np.float32)


def sc(value):
    """A float32 scalar (0-d array)."""
    return np.array(value, dtype=np.float32)


Inc = lambda: tl.Fn("Inc", lambda x: x + 1)  # noqa: E731
Double = lambda: tl.Fn("Double", lambda x: 2 * x)  # noqa: E731
Neg = lambda: tl.Fn("Neg", lambda x: -x)  # noqa: E731


def arity(layer):
    return layer.n_in, layer.n_out


# -- Serial -------------------------------------------------------------------


def test_serial_arity_rules():
    assert arity(tl.Serial(tl.Dup(), tl.Dup())) == (1, 3)
    assert arity(tl.Serial(tl.Select([0, 1]), tl.Add())) == (2, 1)
    assert arity(tl.Serial(tl.Dense(3), tl.Add())) == (2, 1)
    assert arity(tl.Serial(tl.Drop())) == (1, 0)
    assert arity(tl.Serial(tl.Add(), tl.Add())) == (3, 1)
    assert arity(tl.Serial(tl.Dup(), tl.Add())) == (1, 1)


@pytest.mark.parametrize("empty", [tl.Serial(), tl.Serial(None), tl.Serial([])])
def test_empty_serial_is_a_one_to_one_no_op(empty):
    assert arity(empty) == (1, 1)
    assert str(empty) == "Serial"
    x = f32(1, 2)
    assert empty(x).tolist() == [1.0, 2.0]
    a, b = empty((x, f32(5)))  # Extra items pass through.
    assert a.tolist() == [1.0, 2.0] and b.tolist() == [5.0]


def test_serial_values():
    s = tl.Serial(Inc(), Double())
    assert arity(s) == (1, 1)
    assert s(f32(1, 2)).tolist() == [4.0, 6.0]


def test_serial_passes_extra_items_through():
    s = tl.Serial(Inc(), Double())
    y, extra = s((f32(1), f32(7)))
    assert y.tolist() == [4.0] and extra.tolist() == [7.0]
    # Add consumes two of three items; the third stays below the sum.
    total, rest = tl.Serial(tl.Add())((f32(1), f32(2), f32(3)))
    assert total.tolist() == [3.0] and rest.tolist() == [3.0]
    # Items below n_in are untouched by every sublayer.
    a, b, c = tl.Serial(tl.Swap(), Inc())((f32(1), f32(10), f32(100)))
    assert (a.item(), b.item(), c.item()) == (11.0, 1.0, 100.0)


def test_serial_stack_order_top_is_index_0():
    # SubtractTop computes x1 - x0, where x0 is the top of the stack.
    assert tl.Serial(tl.SubtractTop())((f32(2), f32(10))).item() == 8.0
    # After Dup the stack is (x, x); Parallel(Inc, Double) then (x+1, 2x).
    a, b = tl.Serial(tl.Dup(), tl.Parallel(Inc(), Double()))(f32(3))
    assert (a.item(), b.item()) == (4.0, 6.0)


def test_serial_flattens_nested_lists():
    s = tl.Serial(tl.Dup(), [tl.Add(), [tl.Dup(), [tl.Multiply()]]])
    assert len(s.sublayers) == 4
    assert s(f32(3)).item() == 36.0  # (3 + 3) ** 2
    assert str(s) == "Serial[\n  Dup_out2\n  Add_in2\n  Dup_out2\n  Multiply_in2\n]"


def test_serial_rejects_non_layers_naming_position_and_type():
    with pytest.raises(ValueError, match=r"Serial: .*position \[1\]\[1\]: int"):
        tl.Serial(tl.Dense(2), [tl.Relu(), 3])
    with pytest.raises(ValueError, match=r"position \[0\]: function"):
        tl.Serial(lambda x: x)


def test_serial_state_is_a_tuple_of_sublayer_states():
    s = tl.Serial(tl.Dropout(0.1), Inc(), tl.Dropout(0.2))
    _, state = s.init(shapes.ShapeDtype((2,)))
    assert len(state) == 3
    assert (
        float(state[0]) == pytest.approx(0.1)
        and state[1] == ()
        and float(state[2]) == pytest.approx(0.2)
    )


# -- Parallel -----------------------------------------------------------------


def test_parallel_values_and_arity():
    p = tl.Parallel(Neg(), tl.Add(), None)
    assert arity(p) == (4, 3)
    a, b, c = p((f32(1), f32(2), f32(3), f32(4)))
    assert (a.item(), b.item(), c.item()) == (-1.0, 5.0, 4.0)


def test_parallel_none_and_list_arguments():
    p = tl.Parallel(tl.Dense(2), None)
    assert str(p) == "Parallel_in2_out2[\n  Dense_2\n  Serial\n]"
    q = tl.Parallel([tl.Dup(), tl.Add()], [])
    assert arity(q) == (2, 2)
    a, b = q((f32(3), f32(5)))
    assert (a.item(), b.item()) == (6.0, 5.0)
    assert str(q) == "Parallel_in2_out2[\n  Serial[\n    Dup_out2\n    Add_in2\n  ]\n  Serial\n]"


def test_parallel_errors():
    with pytest.raises(ValueError, match="at least 2 sublayers"):
        tl.Parallel(tl.Dense(2))
    with pytest.raises(ValueError, match=r"sublayer 1 \(Weights_\(\)_in0\) takes no inputs"):
        tl.Parallel(tl.Dense(2), tl.Weights(tl.RandomNormalInitializer()))
    with pytest.raises(
        ValueError, match=r"Parallel: found a non-layer object at position \[1\]: str"
    ):
        tl.Parallel(tl.Dense(2), "dense")


# -- Branch / Residual --------------------------------------------------------


def test_branch_values_and_arity():
    b = tl.Branch(Inc(), tl.Add(), None)
    assert arity(b) == (2, 3)
    x, y, z = b((f32(2), f32(5)))
    assert (x.item(), y.item(), z.item()) == (3.0, 7.0, 2.0)


def test_branch_names():
    assert str(tl.Branch(tl.Add(), tl.Add())) == "Branch_in2_out2[\n  Add_in2\n  Add_in2\n]"
    # Branch prints its raw arguments: None as None, a list as a Python list.
    b = tl.Branch(None, [tl.Dup(), tl.Add()])
    assert str(b) == "Branch_out2[\n  None\n  [Dup_out2, Add_in2]\n]"
    dense = tl.Dense(2)
    assert tl.Branch(dense) is dense


def test_branch_rejects_non_layers():
    with pytest.raises(
        ValueError, match=r"Branch: found a non-layer object at position \[1\]: int"
    ):
        tl.Branch(tl.Dense(2), 3)


def test_residual_values():
    assert tl.Residual(Double())(f32(1, 2)).tolist() == [3.0, 6.0]
    assert tl.Residual(Double(), shortcut=Neg())(f32(1, 2)).tolist() == [1.0, 2.0]
    assert tl.Residual(Inc(), Double())(f32(1)).item() == 5.0  # x + 2 (x + 1)
    assert tl.Residual([Inc(), Double()])(f32(1)).item() == 5.0


def test_residual_prints_as_trax():
    assert str(tl.Residual(tl.Dense(2))) == (
        "Serial[\n  Branch_out2[\n    None\n    Dense_2\n  ]\n  Add_in2\n]"
    )
    # Several layers (or a list) become one Serial branch.
    expected = "Serial[\n  Branch_out2[\n    None\n    Serial[\n      Inc\n      Double\n    ]\n  ]\n  Add_in2\n]"
    assert str(tl.Residual(Inc(), Double())) == expected
    assert str(tl.Residual([Inc(), Double()])) == expected
    with pytest.raises(ValueError, match="at least one layer"):
        tl.Residual()


# -- Select, Dup, Drop, Swap --------------------------------------------------


def test_select():
    s = tl.Select([0, 0])
    assert str(s) == "Select[0,0]_out2" and arity(s) == (1, 2)
    a, b = s(f32(4))
    assert (a.item(), b.item()) == (4.0, 4.0)
    s = tl.Select([2, 0])
    assert str(s) == "Select[2,0]_in3_out2"
    a, b = s((f32(1), f32(2), f32(3)))
    assert (a.item(), b.item()) == (3.0, 1.0)
    s = tl.Select([1], n_in=3)
    assert arity(s) == (3, 1) and s((f32(1), f32(2), f32(3))).item() == 2.0
    assert tl.Select([0, 1], name="Keep").name == "Keep"


def test_select_errors():
    with pytest.raises(ValueError, match="non-negative ints"):
        tl.Select([0, -1])
    with pytest.raises(ValueError, match="index 2 is out of range for n_in=2"):
        tl.Select([2], n_in=2)


def test_dup_drop_swap():
    assert str(tl.Dup()) == "Dup_out2" and arity(tl.Dup()) == (1, 2)
    assert str(tl.Drop()) == "Drop_out0" and arity(tl.Drop()) == (1, 0)
    assert str(tl.Swap()) == "Swap_in2_out2" and arity(tl.Swap()) == (2, 2)
    a, b = tl.Swap()((f32(1), f32(2)))
    assert (a.item(), b.item()) == (2.0, 1.0)
    assert tl.Drop()(f32(1)) == ()
    assert tl.Serial(tl.Drop())((f32(1), f32(2))).item() == 2.0


# -- Elementwise --------------------------------------------------------------


def test_add_multiply_subtract_gate():
    assert str(tl.Add()) == "Add_in2" and tl.Add()((f32(2), f32(3))).item() == 5.0
    assert str(tl.Multiply()) == "Multiply_in2" and tl.Multiply()((f32(2), f32(3))).item() == 6.0
    assert str(tl.SubtractTop()) == "SubtractTop_in2"
    assert tl.SubtractTop()((f32(2), f32(3))).item() == 1.0  # x1 - x0
    assert str(tl.Gate()) == "Gate_in3"
    # g * m + (1 - g) * c with m=2, g=0.25, c=6.
    assert tl.Gate()((f32(2), f32(0.25), f32(6))).item() == 5.0


def test_concatenate_and_split():
    assert str(tl.Concatenate()) == "Concatenate_in2"
    assert str(tl.Concatenate(axis=0)) == "Concatenate_axis0_in2"
    assert str(tl.Concatenate(n_items=3)) == "Concatenate_in3"
    a, b = np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])
    assert tl.Concatenate()((a, b)).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert tl.Concatenate(axis=0)((a, b)).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert tl.Concatenate(n_items=3)((a, b, a)).tolist() == [[1.0, 2.0, 3.0, 4.0, 1.0, 2.0]]
    with pytest.raises(ValueError, match="n_items must be a positive int; got 0"):
        tl.Concatenate(n_items=0)
    assert str(tl.Split()) == "Split_out2"
    x, y = tl.Split()(np.array([[1.0, 2.0, 3.0, 4.0]]))
    assert x.tolist() == [[1.0, 2.0]] and y.tolist() == [[3.0, 4.0]]
    with pytest.raises(ValueError, match="n_items must be a positive int"):
        tl.Split(n_items=-1)


def test_flatten_list():
    out = tl.FlattenList()((f32(1), [f32(2), (f32(3),)]))
    assert [o.item() for o in out] == [1.0, 2.0, 3.0]


# -- Fn -----------------------------------------------------------------------


def test_fn_arity_and_name_from_function():
    f = tl.Fn("Mix", lambda a, b, c: a * b + c)
    assert arity(f) == (3, 1) and str(f) == "Mix_in3"
    assert f((f32(2), f32(3), f32(4))).item() == 10.0
    g = tl.Fn("Both", lambda x: (x, -x), n_out=2)
    assert str(g) == "Both_out2"
    const = tl.Fn("One", lambda: jnp.ones(()))
    assert arity(const) == (0, 1) and str(const) == "One_in0"
    assert tl.Fn("", lambda x: x).name == "Fn"


def test_fn_rejects_defaults_kwargs_varargs():
    with pytest.raises(ValueError, match="default arguments"):
        tl.Fn("F", lambda x, y=1: x)
    with pytest.raises(ValueError, match="keyword arguments"):
        tl.Fn("F", lambda x, **kw: x)
    with pytest.raises(ValueError, match="variable args"):
        tl.Fn("F", lambda *xs: xs[0])


def test_fn_n_out_mismatch_is_reported():
    bad = tl.Fn("Pair", lambda x: x, n_out=2)
    with pytest.raises(tl.LayerError, match="declares n_out=2 but its forward returned one array"):
        bad(f32(1))


# -- Scan ---------------------------------------------------------------------


def _cumsum_cell():
    # (x, carry) -> (x + carry, x + carry): output and new carry are the same.
    return tl.Fn("add", lambda x, c: (x + c, x + c), n_out=2)


def test_scan_cumulative_sum():
    scan = tl.Scan(_cumsum_cell(), axis=0)
    assert arity(scan) == (2, 2)
    assert str(scan) == "Scan_in2_out2[\n  add_in2_out2\n]"
    ys, carry = scan((f32(1, 2, 3), sc(0)))
    assert ys.tolist() == [1.0, 3.0, 6.0] and carry.item() == 6.0


def test_scan_axis_1():
    scan = tl.Scan(_cumsum_cell(), axis=1)
    xs = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], np.float32)
    ys, carry = scan((xs, f32(0, 100)))
    assert ys.tolist() == [[1.0, 3.0, 6.0], [110.0, 130.0, 160.0]]
    assert carry.tolist() == [6.0, 160.0]


def test_scan_without_carry_maps_over_the_axis():
    scan = tl.Scan(tl.Fn("Sq", lambda x: x * x), n_carry=0)
    assert arity(scan) == (1, 1)
    assert scan(f32(1, 2, 3)).tolist() == [1.0, 4.0, 9.0]


def test_scan_with_several_inputs_and_weights():
    # (a, b, c) -> (a * b + c, a * b + c): running sum of a * b.
    cell = tl.Fn("mac", lambda a, b, c: (a * b + c, a * b + c), n_out=2)
    ys, carry = tl.Scan(cell)((f32(1, 2, 3), f32(4, 5, 6), sc(0)))
    assert ys.tolist() == [4.0, 14.0, 32.0] and carry.item() == 32.0
    # A cell with weights: carry' = Dense(x) + carry, output = carry'.
    dense = tl.Dense(1)
    cell = tl.Serial(tl.Parallel(dense, None), tl.Add(), tl.Dup())
    scan = tl.Scan(cell)
    xs = np.array([[1.0], [2.0]], np.float32)  # Two steps of a (1,) input.
    scan.init((shapes.ShapeDtype((2, 1)), shapes.ShapeDtype((1,))))
    w = np.array([[3.0]], np.float32)
    b = np.array([0.5], np.float32)
    scan.weights = ((((w, b), ()), (), ()),)
    ys, carry = scan((xs, f32(0)))
    assert ys.tolist() == [[3.5], [10.0]] and carry.tolist() == [10.0]


def test_scan_predict_mode_keeps_the_carry():
    scan = tl.Scan(_cumsum_cell(), mode="predict")
    _, state = scan.init((shapes.ShapeDtype((2,)), shapes.ShapeDtype(())))
    assert state == ((), ())
    ys, carry = scan((f32(1, 2), sc(0)))
    assert ys.tolist() == [1.0, 3.0] and carry.item() == 3.0
    assert [c.item() for c in scan.state[1]] == [3.0]
    # The saved carry replaces the one passed in.
    ys, carry = scan((f32(4), sc(100)))
    assert ys.tolist() == [7.0] and carry.item() == 7.0
    # In train mode the input carry is always used.
    train = tl.Scan(_cumsum_cell())
    train((f32(1, 2), sc(0)))
    assert train.state == ((), ())
    assert train((f32(4), sc(100)))[0].tolist() == [104.0]


def test_scan_errors():
    with pytest.raises(ValueError, match="n_carry=3 must be between 0"):
        tl.Scan(_cumsum_cell(), n_carry=3)
    scan = tl.Scan(tl.Fn("Sq", lambda x: x * x), axis=2, n_carry=0)
    with pytest.raises(tl.LayerError, match="axis 2 is out of range"):
        scan.init(shapes.ShapeDtype((3,)))


# -- Cond ---------------------------------------------------------------------


def _is_positive():
    return tl.Fn("IsPos", lambda x: x > 0)


def test_cond_true_and_false():
    c = tl.Cond(_is_positive(), Neg(), Double())
    assert arity(c) == (2, 1)
    assert c((f32(1), f32(5))).item() == -5.0
    assert c((f32(-1), f32(5))).item() == 10.0


def test_cond_default_false_is_identity():
    c = tl.Cond(_is_positive(), Neg())
    assert c((f32(-1), f32(5))).item() == 5.0
    c2 = tl.Cond(_is_positive(), tl.Swap())  # 2 -> 2 branch; false keeps the order.
    a, b = c2((f32(-1), f32(1), f32(2)))
    assert (a.item(), b.item()) == (1.0, 2.0)
    a, b = c2((f32(1), f32(1), f32(2)))
    assert (a.item(), b.item()) == (2.0, 1.0)


def test_cond_prints_as_trax():
    c = tl.Cond(tl.Fn("c", lambda x: x > 0), tl.Dense(2))
    assert str(c) == "Cond_in2[\n  c\n  Dense_2\n  Serial\n]"


def test_cond_with_weights_under_jit():
    c = tl.Cond(_is_positive(), tl.Dense(2))
    weights, state = c.init((shapes.ShapeDtype(()), shapes.ShapeDtype((1, 2))))
    w = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([0.0, 1.0], np.float32)
    weights = ((), (w, b), ())
    x = np.array([[1.0, 1.0]], np.float32)
    run = jax.jit(c.pure_fn)
    y, _ = run((f32(1), x), weights, state, None)
    assert y.tolist() == [[4.0, 7.0]]
    y, _ = run((f32(-1), x), weights, state, None)
    assert y.tolist() == [[1.0, 1.0]]


def test_cond_arity_errors():
    with pytest.raises(ValueError, match="cond layer must have n_out=1; got 2"):
        tl.Cond(tl.Dup(), Neg())
    with pytest.raises(ValueError, match="same number of inputs; got 1 and 2"):
        tl.Cond(_is_positive(), Neg(), tl.Add())
    with pytest.raises(ValueError, match="same number of outputs; got 1 and 2"):
        tl.Cond(_is_positive(), Neg(), tl.Dup())


def test_cond_requires_a_scalar_condition():
    c = tl.Cond(tl.Fn("Vec", lambda x: x > 0), Neg())
    with pytest.raises(tl.LayerError, match="must return one boolean scalar; got shape \\(2,\\)"):
        c((f32(1, 2), f32(5)))


# -- Cache, BatchLeadingAxes --------------------------------------------------


def test_cache_runs_once_then_returns_the_stored_result():
    c = tl.Cache(Inc())
    assert str(c) == "Cache[\n  Inc\n]" and arity(c) == (1, 1)
    _, state = c.init(shapes.ShapeDtype(()))
    assert state == ((), ())
    assert c(f32(1)).item() == 2.0
    assert c.state[0].item() == 2.0
    assert c(f32(10)).item() == 2.0  # Cached.
    # pure_fn with the initial state computes afresh and leaves the layer alone.
    y, new_state = c.pure_fn(f32(10), ((),), state, None)
    assert y.item() == 11.0 and new_state[0].item() == 11.0
    assert c.state[0].item() == 2.0


def test_cache_keeps_the_weights_of_a_skipped_layer_for_a_later_shared_use():
    # An embedding tied between a cached "encoder" and a later "decoder" use (as
    # in a predict-mode Transformer with a shared embedding): once the cache is
    # full the encoder is skipped, and the later occurrence, whose weights are
    # the shared-weights marker, must still find the table of this pass.
    emb = tl.Embedding(10, 4)
    encoder = tl.Serial(emb, tl.Fn("Double", lambda x: 2 * x))
    model = tl.Serial(tl.Parallel(tl.Cache(encoder), emb), tl.Add())
    ids = shapes.ShapeDtype((1, 3), np.int32)
    weights, state = model.init((ids, ids))
    assert weights[0][1] == tl.GET_WEIGHTS_FROM_CACHE  # the decoder's occurrence
    table = np.asarray(emb.weights)
    src, tgt = np.array([[1, 2, 3]]), np.array([[4, 5, 6]])
    np.testing.assert_allclose(model((src, tgt)), 2 * table[src] + table[tgt])
    # Cache full: the encoder is skipped (a new source is ignored) and the
    # decoder's embedding still reads the shared table.
    tgt2 = np.array([[7, 8, 0]])
    np.testing.assert_allclose(model((np.array([[9, 9, 9]]), tgt2)), 2 * table[src] + table[tgt2])
    # Pure and jitted: the table comes from the weights passed, not from the layer.
    _, full = model.pure_fn((src, tgt), weights, state, None)
    other = jax.tree_util.tree_map(lambda w: w + 1.0, weights)
    y, _ = jax.jit(lambda w, s: model.pure_fn((src, tgt2), w, s, None))(other, full)
    np.testing.assert_allclose(y, 2 * table[src] + table[tgt2] + 1.0, rtol=1e-6)


def test_batch_leading_axes():
    dense = tl.Dense(2)
    bla = tl.BatchLeadingAxes(dense)
    assert str(bla) == "BatchLeadingAxes[\n  Dense_2\n]"
    seen_shapes = []

    def record(x):
        seen_shapes.append(x.shape)
        return x.sum(-1, keepdims=True)

    summed = tl.BatchLeadingAxes(tl.Fn("Record", record))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = summed(x)
    assert seen_shapes[-1] == (6, 4) and y.shape == (2, 3, 1)
    np.testing.assert_array_equal(y, x.sum(-1, keepdims=True))
    with pytest.raises(ValueError, match="n_out=1; got 2"):
        tl.BatchLeadingAxes(tl.Dup())


def test_cond_branches_must_agree_on_shapes():
    c = tl.Cond(_is_positive(), tl.Fn("Head", lambda x: x[:1]))
    with pytest.raises(tl.LayerError, match="must return outputs of the same shapes and dtypes"):
        c((f32(1), f32(1, 2)))


def test_scan_and_cache_state_round_trip_through_the_setter():
    scan = tl.Scan(_cumsum_cell(), mode="predict")
    scan.init((shapes.ShapeDtype((2,)), shapes.ShapeDtype(())))
    scan.state = ((), (sc(5),))
    assert scan((f32(1), sc(0)))[0].tolist() == [6.0]
    with pytest.raises(ValueError, match="its state must be a pair"):
        scan.state = ((),)
    cache = tl.Cache(Inc())
    cache.init(shapes.ShapeDtype(()))
    cache.state = (sc(42), ())
    assert cache(sc(1)).item() == 42.0


def test_stack_helpers():
    a, b, c = sc(1), sc(2), sc(3)
    assert tl.inputs_from_stack((a, b, c), 1) is a
    assert tl.inputs_from_stack((a, b, c), 2) == (a, b)
    assert tl.inputs_from_stack(a, 0) == ()
    assert tl.outputs_onto_stack(c, (a, b), 1) == (c, b)
    assert tl.outputs_onto_stack((), (a, b), 1) is b


def test_select_accepts_numpy_ints():
    assert str(tl.Select(np.array([1, 0]))) == "Select[1,0]_in2_out2"
