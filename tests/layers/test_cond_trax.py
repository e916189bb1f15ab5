"""tl.Cond as Trax's tests use it: exact input count, a branch's [y] output is y."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes


def _const(value, name):
    return tl.PureLayer(lambda xs: value, n_in=0, n_out=1, name=name)


def test_a_branch_returning_a_one_item_list_puts_the_item_on_the_stack():
    cond = tl.Cond(_const(np.array(True), "T"), _const([np.array(2)], "Two"),
                   _const([np.array(5)], "Five"))
    cond.init(())
    assert np.asarray(cond(())).tolist() == 2
    flip = tl.Cond(_const(np.array(False), "F"), _const([np.array(2)], "Two"),
                   _const([np.array(5)], "Five"))
    flip.init(())
    assert np.asarray(flip(())).tolist() == 5


def test_cond_takes_exactly_its_inputs():
    smaller = tl.Fn("SmallerThan3", lambda x: x < 3.0)
    layer = tl.Cond(smaller, _const(np.array(2.0), "Two"), _const(np.array(5.0), "Five"))
    x = np.array(4.0)
    layer.init(shapes.signature(x))
    assert float(layer(x)) == 5.0
    with pytest.raises(tl.LayerError, match=r"takes exactly 1 inputs \(cond 1, branches 0\); got 2"):
        layer((np.array(4.0), np.array([4.0, 12.0])))
