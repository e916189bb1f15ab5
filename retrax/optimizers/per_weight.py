"""Trax's per-weight optimizer protocol: ``init(weights)`` and ``update(step, g, w, slots, opt_params)``.

A Trax optimizer describes what happens to *one* weight array; the optimizer
assembles that into an update of the whole weight tree. retrax's built-in
optimizers do their math with optax instead (``make_transform``), but a user's
subclass of ``trax.optimizers.Optimizer`` written the Trax way runs through the
functions here, with Trax's semantics:

- the slots are a tuple with one entry per weight array, in the order of
  ``jax.tree_util.tree_leaves(weights)`` (``()`` weights have none);
- gradients are clipped by their global norm first when ``clip_grad_norm`` is
  set (scaled by ``clip / norm`` when the norm is at least ``clip``);
- each ``update`` must return a weight of the same dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from retrax.optimizers.norms import l2_norm

__all__ = ["tree_init", "tree_update", "global_norm", "per_weight_view"]


def global_norm(leaves: list[Any]) -> jax.Array:
    """The L2 norm of all the arrays in ``leaves`` taken as one vector (float32 or wider;
    :func:`retrax.optimizers.norms.l2_norm`, the built-in optimizers' statistic)."""
    return l2_norm(leaves)


def tree_init(init: Callable[[Any], Any], weight_tree: Any) -> tuple:
    """One slot entry per weight array: ``init(w)`` for each leaf of ``weight_tree``."""
    return tuple(init(w) for w in jax.tree_util.tree_leaves(weight_tree))


def tree_update(name: str, update: Callable[..., tuple[Any, Any]], clip_grad_norm: float | None,
                step: Any, grad_tree: Any, weight_tree: Any, slots: Any,
                opt_params: dict[str, Any]) -> tuple[Any, tuple, dict[str, jax.Array]]:
    """Applies ``update`` to every weight array; returns ``(weights, slots, stats)``."""
    weights, treedef = jax.tree_util.tree_flatten(weight_tree)
    grads = jax.tree_util.tree_leaves(grad_tree)
    if len(grads) != len(weights) or not isinstance(slots, (tuple, list)) \
            or len(slots) != len(weights):
        got = len(slots) if isinstance(slots, (tuple, list)) else type(slots).__name__
        raise ValueError(
            f"{name}: expected one gradient and one slot entry per weight array "
            f"({len(weights)}); got {len(grads)} gradients and {got} slots. Pass the slots "
            f"tree_init returned for these weights.")
    grad_norm = global_norm(grads)
    if clip_grad_norm is not None:
        scale = jnp.where(grad_norm < clip_grad_norm, 1.0, clip_grad_norm / grad_norm)
        grads = [(g * scale).astype(g.dtype) for g in grads]
    new_weights, new_slots = [], []
    for i, (g, w, s) in enumerate(zip(grads, weights, slots)):
        result = update(step, g, w, s, opt_params)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ValueError(f"{name}.update must return (new_weights, new_slots); got "
                             f"{type(result).__name__} for weight array {i}.")
        new_w, new_s = result
        if jnp.shape(new_w) != jnp.shape(w) or jnp.asarray(new_w).dtype != w.dtype:
            raise ValueError(
                f"{name}.update returned a weight of shape {jnp.shape(new_w)} and dtype "
                f"{jnp.asarray(new_w).dtype} for weight array {i} of shape {w.shape} and "
                f"dtype {w.dtype}; it must keep both (cast with .astype(w.dtype)).")
        new_weights.append(new_w)
        new_slots.append(new_s)
    stats = {"gradients_l2": grad_norm, "weights_l2": global_norm(weights)}
    return jax.tree_util.tree_unflatten(treedef, new_weights), tuple(new_slots), stats


def per_weight_view(flat: list[Any], n_weights: int) -> tuple | None:
    """Flat slot arrays grouped per weight as Trax shows them: None (no slots), the one
    array, or a tuple of them; None when the arrays do not group evenly."""
    if n_weights == 0:
        return ()
    if len(flat) % n_weights:
        return None
    k = len(flat) // n_weights
    return tuple(None if k == 0 else flat[i] if k == 1 else tuple(flat[i * k:(i + 1) * k])
                 for i in range(n_weights))
