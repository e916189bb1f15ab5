"""A layer's own gradient: Trax's ``has_backward``/``backward`` hook on ``jax.custom_vjp``.

A layer whose ``has_backward`` is True runs its ``forward`` as usual, but
differentiating through it uses exactly what its ``backward`` returns:
``(inputs_grad, weights_grad)`` for the gradient ``grad`` of the loss with
respect to the output. The state and the key get no gradient.

>>> import jax, jax.numpy as jnp
>>> from retrax import layers as tl
>>> class StraightThroughRound(tl.Layer):
...     has_backward = True
...     def forward(self, x):
...         return jnp.round(x)
...     def backward(self, inputs, output, grad, weights, state, new_state, rng):
...         return grad, weights
>>> layer = StraightThroughRound()
>>> w, s = layer.init(None)
>>> jax.grad(lambda x: layer.pure_fn(x, w, s, None)[0].sum())(jnp.array([0.4, 2.6])).tolist()
[1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax

if TYPE_CHECKING:
    from retrax.layers.layer import Layer

__all__ = ["run_with_own_backward"]


def run_with_own_backward(layer: Layer, run: Callable[..., tuple[Any, Any]], x: Any,
                          weights: Any, state: Any, rng: Any) -> tuple[Any, Any]:
    """``run(x, weights, state, rng) -> (outputs, new_state)``, differentiated by ``layer.backward``.

    ``layer.backward(x, outputs, grad, weights, state, new_state, rng)`` must
    return ``(inputs_grad, weights_grad)`` shaped like ``x`` and ``weights``;
    anything else raises a ``ValueError`` naming the layer.
    """

    def run_fwd(x, weights, state, rng):
        outputs, new_state = run(x, weights, state, rng)
        return (outputs, new_state), (x, weights, state, rng, outputs, new_state)

    def run_bwd(saved, grads):
        x, weights, state, rng, outputs, new_state = saved
        given = layer.backward(x, outputs, grads[0], weights, state, new_state, rng)
        if not isinstance(given, (tuple, list)) or len(given) != 2:
            raise ValueError(
                f"{layer.name_with_arity}.backward must return (inputs_grad, weights_grad); "
                f"got {type(given).__name__}"
                f"{f' of length {len(given)}' if isinstance(given, (tuple, list)) else ''}.")
        for what, value, like in (("inputs_grad", given[0], x),
                                  ("weights_grad", given[1], weights)):
            if jax.tree_util.tree_structure(value) != jax.tree_util.tree_structure(like):
                raise ValueError(
                    f"{layer.name_with_arity}.backward returned a {what} whose structure "
                    f"{jax.tree_util.tree_structure(value)} differs from that of the "
                    f"{what.split('_')[0]}, {jax.tree_util.tree_structure(like)}; return "
                    f"one gradient per array, shaped like it.")
        return given[0], given[1], None, None

    custom = jax.custom_vjp(run)
    custom.defvjp(run_fwd, run_bwd)
    return custom(x, weights, state, rng)
