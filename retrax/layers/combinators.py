"""Combinators: layers built from layers, moving data on the stack.

This module gathers them under one name (``retrax.layers.combinators.X``, as
in Trax); each concept lives in a module of its own:

- ``retrax.layers.stack_combinators``: ``Serial``, ``Parallel``, ``Branch``,
  ``Residual``, ``SerialWithSideOutputs`` and the stack moves ``Select``,
  ``Dup``, ``Drop``, ``Swap``;
- ``retrax.layers.merge``: ``Add``, ``SubtractTop``, ``Multiply``, ``Gate``,
  ``Concatenate``, ``Split``, ``FlattenList``;
- ``retrax.layers.control_flow``: ``Scan``, ``Cond``, ``Cache``,
  ``BatchLeadingAxes``;
- ``retrax.layers.chunk``: ``Chunk`` (a layer run on batch chunks);
- ``retrax.layers.stack``: ``inputs_from_stack``, ``outputs_onto_stack``;
- ``retrax.layers.rnn``: ``Bidirectional`` (Trax keeps it among the combinators).

>>> import numpy as np
>>> from retrax import layers as tl
>>> model = tl.Serial(tl.Dup(), tl.Parallel(tl.Fn('Inc', lambda x: x + 1), None), tl.Add())
>>> model(np.array([1.0, 2.0])).tolist()   # (x + 1) + x
[3.0, 5.0]
>>> print(tl.Branch(tl.Add(), tl.Add()))
Branch_in2_out2[
  Add_in2
  Add_in2
]
"""

from __future__ import annotations

from retrax.layers import chunk, control_flow, merge, stack_combinators
from retrax.layers.chunk import *  # noqa: F403
from retrax.layers.control_flow import *  # noqa: F403
from retrax.layers.merge import *  # noqa: F403
from retrax.layers.rnn import Bidirectional
from retrax.layers.stack import inputs_from_stack, outputs_onto_stack
from retrax.layers.stack_combinators import *  # noqa: F403

__all__ = [
    *stack_combinators.__all__,
    *merge.__all__,
    *control_flow.__all__,
    *chunk.__all__,
    "Bidirectional",
    "inputs_from_stack",
    "outputs_onto_stack",
]
