"""``RematSerial``: a ``Serial`` whose activations are recomputed for the gradient.

Differentiated, a plain ``Serial`` keeps what its layers computed (attention
weights, feed-forward hiddens, dropout masks) from the forward pass until the
backward pass uses them. ``RematSerial`` runs the same layers under
``jax.checkpoint``: only its inputs are kept, and the layers run a second time
in the backward pass. Memory then grows with the number of such blocks times
the size of their inputs instead of everything inside them; the price is one
more forward pass of the block per training step.

It is a ``jax.custom_vjp`` rather than ``jax.checkpoint``: XLA's CPU compiler
removes ``jax.checkpoint``'s optimization barriers and then merges the
recomputation with the forward pass (common-subexpression elimination), so
``jax.checkpoint`` saves no memory there (jax 0.10: same compiled temp memory
with and without). Here the recomputation's inputs are tied to the incoming
gradient, which the forward pass cannot have computed, so it stays a
recomputation on every backend.

Weights, state, outputs, keys (dropout masks) and gradients are those of
``Serial`` with the same layers, so a model can switch it on or off and keep
its checkpoints. Outside ``'train'`` mode there is nothing to differentiate
and it runs as ``Serial``.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> block = RematSerial(tl.Dense(4), tl.Relu(), tl.Dense(2))
>>> _ = block.init(shapes.ShapeDtype((3, 2)))
>>> block(np.ones((3, 2), np.float32)).shape
(3, 2)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.layers.pass_context import Pass, new_pass
from retrax.layers.stack_combinators import Serial

__all__ = ["RematSerial"]


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _cotangent_like(primal: Any, ct: Any) -> Any:
    """``ct`` made a valid cotangent for ``primal``: float0 for integers, zeros for None."""

    def one(p, c):
        if not _is_float(p):
            return np.zeros(jnp.shape(p), jax.dtypes.float0)
        if c is None or jnp.result_type(c) == jax.dtypes.float0:
            return jnp.zeros(jnp.shape(p), jnp.result_type(p))
        return c

    return jax.tree_util.tree_map(one, primal, ct, is_leaf=lambda v: v is None)


def _tied_to(values: list[Any], anchor: Any) -> list[Any]:
    """``values`` unchanged, but computed (for XLA) after ``anchor``'s first float.

    ``min(bits, 0)`` of an unsigned number is 0, which XLA does not fold away:
    the recomputation then depends on the gradient and cannot be merged with
    the forward pass nor scheduled before the gradient exists.
    """
    floats = [a for a in jax.tree_util.tree_leaves(anchor) if _is_float(a) and jnp.size(a)]
    if not floats:
        return values
    first = jnp.ravel(floats[0])[0].astype(jnp.float32)
    keep = jnp.minimum(jax.lax.bitcast_convert_type(first, jnp.uint32), jnp.uint32(0)) == 0
    out = []
    for v in values:
        if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key):
            data = jax.random.key_data(v)
            out.append(jax.random.wrap_key_data(jnp.where(keep, data, jnp.zeros_like(data)),
                                                impl=jax.random.key_impl(v)))
        else:
            out.append(jnp.where(keep, v, jnp.zeros_like(v)))
    return out


class RematSerial(Serial):
    """``Serial(*layers)`` rematerialized: only its inputs are kept for the gradient.

      - inputs, outputs, weights and state: those of ``Serial(*layers)``

    ``name`` defaults to ``'Serial'``, so the printed model is the same as
    without remat. A layer used both inside and outside the block (shared
    weights) is not supported inside it.
    """

    def __init__(self, *layers: Any, name: str | None = "Serial"):
        super().__init__(*layers, name=name)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        if self.mode not in (None, "train"):
            return super().forward_in_pass(xs, weights, state, rng, ctx)
        # Arrays go through the custom_vjp; anything else (shared-weight markers) is
        # closed over.
        leaves, treedef = jax.tree_util.tree_flatten((xs, weights, state, rng))
        slots = [i for i, leaf in enumerate(leaves) if _is_array(leaf)]
        # Leaves inside draw keys by their index in the pass: every trace of the
        # layers (primal, forward, recomputation) starts from the same index, so
        # the recomputed dropout masks are those of the forward pass.
        first_key_index = ctx.key_index
        last_key_index = [first_key_index]

        def run(arrays, pass_):
            full = list(leaves)
            for i, a in zip(slots, arrays):
                full[i] = a
            pass_.key_index = first_key_index
            out = Serial.forward_in_pass(self, *jax.tree_util.tree_unflatten(treedef, full),
                                         pass_)
            last_key_index[0] = pass_.key_index
            return out

        @jax.custom_vjp
        def remat(*arrays):
            return run(arrays, ctx)

        def remat_fwd(*arrays):
            return run(arrays, ctx), arrays  # only the inputs are kept

        def remat_bwd(arrays, cts):
            def again(*arrays):
                with new_pass() as inner:
                    return run(arrays, inner)

            outputs, vjp = jax.vjp(again, *_tied_to(list(arrays), cts))
            return vjp(_cotangent_like(outputs, cts))

        remat.defvjp(remat_fwd, remat_bwd)
        out = remat(*[leaves[i] for i in slots])
        ctx.key_index = last_key_index[0]
        return out
