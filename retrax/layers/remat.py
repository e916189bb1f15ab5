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
import numpy as np

from retrax.fastmath.cotangents import cotangent_like
from retrax.fastmath.scheduling import tied, zero_from
from retrax.layers.pass_context import Pass, new_pass
from retrax.layers.stack_combinators import Serial

__all__ = ["RematSerial"]


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


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

            anchor = zero_from(jax.tree_util.tree_leaves(cts))
            outputs, vjp = jax.vjp(again, *tied(list(arrays), anchor))
            return vjp(cotangent_like(outputs, cts))

        remat.defvjp(remat_fwd, remat_bwd)
        out = remat(*[leaves[i] for i in slots])
        ctx.key_index = last_key_index[0]
        return out
