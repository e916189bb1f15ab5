"""The layer contract: Trax's data-stack layers on pure JAX functions.

A layer takes ``n_in`` inputs from the top of a stack and pushes ``n_out``
outputs. One input is passed as a bare array, several as a tuple; the same for
outputs. The pure core is::

    weights, state = layer.init(input_signature, rng=None)
    outputs, new_state = layer.pure_fn(x, weights, state, rng)

``pure_fn`` can be wrapped in ``jax.jit``, ``jax.grad``, ``jax.vmap`` and
``lax.scan``. ``layer(x)`` is a convenience that keeps weights on the layer.

Subclasses write Trax-style code: ``forward(self, inputs)`` reads
``self.weights``, ``self.state`` and ``self.rng`` (installed only for the
duration of the call) and may assign ``self.state``;
``init_weights_and_state(self, input_signature)`` assigns ``self.weights``
and/or ``self.state``. Combinators override the pure hooks ``init_in_pass`` and
``forward_in_pass`` instead and drive their children with the public protocol
re-exported here (``init_child``, ``apply_child``, ``child_state``, ``pack``,
...; see docs/writing_a_combinator.md).

This module is the contract's namespace (Trax's ``trax.layers.base``): it
defines nothing and gathers the names from the modules below it: ``layer``
(the ``Layer`` class), ``layer_storage`` (its stored weights, state and key),
``custom_gradient`` (its ``backward`` hook), ``layer_walks`` (``walk_layers``,
``with_mode``), ``function_layers`` (``PureLayer``, ``Fn``), ``errors``
(``LayerError``), ``pass_context`` (one init/apply pass: shared layers, keys),
``trees`` (weight and state trees), ``stack`` (the data stack),
``retrax.fastmath.random`` (init keys) and ``file_io`` (where checkpoints plug
in).

>>> import numpy as np
>>> from retrax import layers as tl
>>> layer = tl.Fn('Twice', lambda x: 2 * x)
>>> layer(np.array([1.0, 2.0])).tolist()
[2.0, 4.0]
"""

from __future__ import annotations

from retrax.fastmath.random import init_rng_split, numpy_generator, split_rng
from retrax.layers.errors import LayerError
from retrax.layers.function_layers import Fn, PureLayer
from retrax.layers.layer import Layer
from retrax.layers.layer_walks import walk_layers, with_mode
from retrax.layers.pass_context import Pass, apply_child, init_child, new_pass, signature_key
from retrax.layers.stack import as_stack, inputs_from_stack, outputs_onto_stack, pack
from retrax.layers.trees import (
    EMPTY_STATE,
    EMPTY_WEIGHTS,
    GET_STATE_FROM_CACHE,
    GET_WEIGHTS_FROM_CACHE,
    abstract,
    assign_child_state,
    child_state,
    flatten_weights_and_state,
    is_state_marker,
    is_weights_marker,
    to_list,
    unflatten_weights_and_state,
)

__all__ = [
    "Layer", "PureLayer", "Fn", "LayerError", "with_mode", "walk_layers", "EMPTY_WEIGHTS", "EMPTY_STATE",
    "GET_WEIGHTS_FROM_CACHE", "GET_STATE_FROM_CACHE", "flatten_weights_and_state",
    "unflatten_weights_and_state", "to_list",
    # Defined beside Layer before it was split, importable from here as then:
    "init_rng_split", "numpy_generator", "split_rng", "signature_key", "inputs_from_stack",
    "outputs_onto_stack",
    # The combinator protocol (docs/writing_a_combinator.md), in one namespace:
    "Pass", "new_pass", "init_child", "apply_child", "child_state", "assign_child_state",
    "as_stack", "pack", "abstract", "is_weights_marker", "is_state_marker",
]
