"""Tensor parallelism (``Loop(..., sharding='tensor:K')``): Megatron-style weight splits.

The devices form a 2-D mesh, ``'data'`` x ``'model'``, with ``K`` devices on
the ``'model'`` axis and ``n_devices / K`` on ``'data'``. Batches are split
over ``'data'``; the weights the rules below recognise are split over
``'model'``; everything else is replicated. GSPMD (``jax.sharding``) inserts
the communication: the replicated run's losses, up to float summation order.

The rules read the model's *structure* (layer types and how they nest), not
the shapes of its arrays alone. With ``w (d_in, d_out)`` and ``b (d_out,)``
of a ``Dense``:

* **Attention** (a ``Serial`` of a branch holding the Q, K, V ``Dense``
  layers, an attention core (``DotProductCausalAttention``, ``PureAttention``
  or ``DotProductAttention``) and a final ``Dense``, as ``CausalAttention``,
  ``Attention`` and ``AttentionQKV`` build): Q, K and V are column-parallel
  (``w`` split on ``d_out``, ``b`` split), so each device holds whole heads;
  the output projection is row-parallel (``w`` split on ``d_in``, ``b``
  replicated). Only when ``K`` divides the number of heads; else the block
  stays replicated.
* **Feed-forward**: two ``Dense`` layers in one ``Serial`` with only
  weightless layers between them (activation, dropout): the first is
  column-parallel, the second row-parallel. Only when ``K`` divides the
  hidden width; else both stay replicated.
* **Embedding** ``(vocab, d)`` and the model's **last** ``Dense`` not claimed
  above (the vocabulary projection of a language model): split on the
  vocabulary axis when ``K`` divides it, else on the other axis when ``K``
  divides that, else replicated.
* Everything else (``LayerNorm``, positional tables, biases of row-parallel
  layers, unrecognised layers) is replicated.

A model with none of these is trained data parallel over all devices, with a
note. Optimizer slots of a weight's shape (Adam's moments) take its layout.

>>> from retrax import layers as tl
>>> from retrax import shapes
>>> model = tl.Serial(tl.Embedding(32, 8), tl.Dense(16), tl.Relu(), tl.Dense(8), tl.Dense(30))
>>> _ = model.init(shapes.ShapeDtype((2, 3), 'int32'))
>>> plan = plan_model(model, 2)
>>> [tuple(s) for s in plan.specs]
[('model', None), (None, 'model'), ('model',), ('model', None), (), (None, 'model'), ('model',)]
>>> plan.summary
'1 feed-forward pair, 1 embedding, 1 output Dense split over 2 devices'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import PartitionSpec

from retrax import shapes
from retrax.layers import attention
from retrax.layers.base import Layer
from retrax.layers.core import Dense, Embedding
from retrax.layers.stack_combinators import Serial

__all__ = ["Plan", "plan_model", "ATTENTION_CORES"]

# Weightless layers that turn projected (q, k, v) into attended values.
ATTENTION_CORES = (attention.DotProductCausalAttention, attention.PureAttention,
                   attention.DotProductAttention)

_REP = PartitionSpec()
_COL_W, _COL_B = PartitionSpec(None, "model"), PartitionSpec("model")
_ROW_W = PartitionSpec("model", None)


@dataclass
class Plan:
    """Where each weight of a model goes: ``specs`` in the order of its leaves.

    ``shapes``: the leaves' shapes; ``summary``: what was split, in words;
    ``skipped``: the recognised layers left replicated, and why.
    """

    treedef: Any
    shapes: list
    specs: list
    summary: str
    skipped: list = field(default_factory=list)

    @property
    def splits_anything(self) -> bool:
        return any(spec != _REP for spec in self.specs)

    def map(self, fn: Any, tree: Any) -> Any:
        """``fn(array, spec)`` over ``tree``: weights take their specs, weight-shaped slots too.

        A subtree with the weights' structure (the weights, their gradients,
        Adam's moments) gets each leaf's spec where the shapes agree; any
        other leaf (step counters, factored slots) is replicated.
        """
        def like_weights(x):
            return jax.tree_util.tree_structure(x) == self.treedef

        def visit(x):
            if not like_weights(x):
                return fn(x, _REP)
            leaves = self.treedef.flatten_up_to(x)
            out = [fn(a, s if np.shape(a) == shape else _REP)
                   for a, s, shape in zip(leaves, self.specs, self.shapes)]
            return self.treedef.unflatten(out)

        return jax.tree_util.tree_map(visit, tree, is_leaf=like_weights)


def _dense_leaves(layer: Layer, weights: Any) -> tuple[Any, Any] | None:
    """``(w, b)`` of a Dense (``b`` None without a bias), or None when not held here."""
    if hasattr(weights, "ndim") and weights.ndim == 2:
        return weights, None
    if (isinstance(weights, tuple) and len(weights) == 2 and hasattr(weights[0], "ndim")
            and weights[0].ndim == 2):
        return weights
    return None


def _walk(layer: Layer, fn: Any, seen: set[int]) -> None:
    """Calls ``fn`` on ``layer`` and every sublayer, depth first, each shared layer once."""
    if id(layer) in seen:
        return
    seen.add(id(layer))
    fn(layer)
    for sub in layer.sublayers:
        _walk(sub, fn, seen)


def _all(layer: Layer) -> list[Layer]:
    found: list[Layer] = []
    _walk(layer, found.append, set())
    return found


def _has_weights(layer: Layer) -> bool:
    return bool(jax.tree_util.tree_leaves(layer.weights))


def _heads(core: Layer, branch: Layer, d_feature: int) -> int | None:
    """The number of attention heads, from the head-splitting layer or the core's shapes."""
    for sub in _all(branch):
        if sub.name == "SplitIntoHeads":  # (1, 1, D) -> (H, 1, dh) or (1, H, 1, dh)
            out = sub.output_signature(shapes.ShapeDtype((1, 1, d_feature), np.float32))
            return int(np.prod(out.shape[:-2]))
    if isinstance(core, attention.PureAttention):
        # The core refuses a width its head count does not divide: the first
        # divisor of d_feature it accepts is the head count.
        for d in (d for d in range(1, d_feature + 1) if d_feature % d == 0):
            x = shapes.ShapeDtype((1, 1, d), np.float32)
            try:
                core.output_signature((x, x, x, shapes.ShapeDtype((1, 1, 1, 1), bool)))
            except Exception:  # noqa: BLE001 (any refusal: not this width)
                continue
            return d
    return None


class _Roles:
    """Finds the recognised layers of a model: ``{id(Dense or Embedding): role}``."""

    def __init__(self, model: Layer, k: int):
        self.k = k
        self.roles: dict[int, tuple] = {}
        self.counts = {"attention block": 0, "feed-forward pair": 0, "embedding": 0,
                       "output Dense": 0}
        self.skipped: list[str] = []
        layers = _all(model)
        for layer in layers:
            if isinstance(layer, Serial):
                self._attention(layer)
        for layer in layers:
            if isinstance(layer, Serial):
                self._feed_forward(layer)
        for layer in layers:
            if isinstance(layer, Embedding):
                self._split_either(layer, layer.weights, "embedding", vocab_axis=0)
        last = [x for x in layers if isinstance(x, Dense) and id(x) not in self.roles
                and _dense_leaves(x, x.weights) is not None]
        if last:
            self._split_either(last[-1], _dense_leaves(last[-1], last[-1].weights)[0],
                               "output Dense", vocab_axis=1)

    def _attention(self, serial: Layer) -> None:
        subs = list(serial.sublayers)
        cores = [i for i, s in enumerate(subs) if isinstance(s, ATTENTION_CORES)]
        weighted = [i for i, s in enumerate(subs) if _has_weights(s)]
        if len(cores) != 1 or len(weighted) != 2 or not weighted[0] < cores[0] < weighted[1]:
            return
        branch, core, out = subs[weighted[0]], subs[cores[0]], subs[weighted[1]]
        qkv = [x for x in _all(branch) if isinstance(x, Dense)]
        others = [x for x in _all(branch) if not x.sublayers and not isinstance(x, Dense)
                  and _has_weights(x)]
        out_dense = [x for x in _all(out) if _has_weights(x)]
        if (not 1 <= len(qkv) <= 3 or others or len(out_dense) != 1
                or not isinstance(out_dense[0], Dense)
                or any(id(x) in self.roles for x in qkv + out_dense)):
            return
        w_out = _dense_leaves(out_dense[0], out_dense[0].weights)
        if w_out is None or any(_dense_leaves(x, x.weights) is None for x in qkv):
            return
        d_feature = int(_dense_leaves(qkv[0], qkv[0].weights)[0].shape[1])
        n_heads = _heads(core, branch, d_feature)
        for x in qkv + out_dense:
            self.roles[id(x)] = ("skip",)
        if n_heads is None or n_heads % self.k or w_out[0].shape[0] % self.k:
            self.skipped.append(f"attention with {n_heads or '?'} heads ({self.k} does not "
                                f"divide the head count)")
            return
        for x in qkv:
            self.roles[id(x)] = ("column",)
        self.roles[id(out_dense[0])] = ("row",)
        self.counts["attention block"] += 1

    def _feed_forward(self, serial: Layer) -> None:
        first = None
        for sub in serial.sublayers:
            if isinstance(sub, Dense) and id(sub) not in self.roles:
                leaves = _dense_leaves(sub, sub.weights)
                if first is not None and leaves is not None:
                    self._pair(first, sub)
                    first = None
                else:
                    first = sub if leaves is not None else None
            elif _has_weights(sub):
                first = None

    def _pair(self, a: Layer, b: Layer) -> None:
        hidden = _dense_leaves(a, a.weights)[0].shape[1]
        self.roles[id(a)] = self.roles[id(b)] = ("skip",)
        if hidden % self.k:
            self.skipped.append(f"feed-forward pair of width {hidden} ({self.k} does not "
                                f"divide it)")
            return
        self.roles[id(a)], self.roles[id(b)] = ("column",), ("row",)
        self.counts["feed-forward pair"] += 1

    def _split_either(self, layer: Layer, w: Any, what: str, vocab_axis: int) -> None:
        for axis in (vocab_axis, 1 - vocab_axis):
            if w.shape[axis] % self.k == 0:
                self.roles[id(layer)] = ("axis", axis)
                self.counts[what] += 1
                return
        self.roles[id(layer)] = ("skip",)
        self.skipped.append(f"{what} of shape {tuple(w.shape)} ({self.k} divides no axis)")

    def specs(self, layer: Layer, weights: Any, seen: set[int]) -> Any:
        """A tree like ``weights`` with a PartitionSpec at each leaf."""
        role = self.roles.get(id(layer))
        if id(layer) in seen or role is None or role == ("skip",):
            if layer.sublayers and isinstance(weights, tuple) and len(weights) == len(
                    layer.sublayers) and id(layer) not in seen:
                seen.add(id(layer))
                return tuple(self.specs(s, w, seen) for s, w in zip(layer.sublayers, weights))
            return jax.tree_util.tree_map(lambda _: _REP, weights)
        seen.add(id(layer))
        if role[0] == "axis":
            w_spec = _ROW_W if role[1] == 0 else _COL_W
            if isinstance(layer, Embedding):
                return w_spec
            role = ("row",) if role[1] == 0 else ("column",)
        w, b = (weights, None) if hasattr(weights, "ndim") else weights
        w_spec, b_spec = (_COL_W, _COL_B) if role == ("column",) else (_ROW_W, _REP)
        return w_spec if b is None else (w_spec, b_spec)


def plan_model(model: Layer, k: int) -> Plan:
    """The ``'tensor:K'`` layout of ``model``'s (initialized) weights over ``k`` model-axis devices."""
    weights = model.weights
    roles = _Roles(model, k)
    spec_tree = roles.specs(model, weights, set())
    leaves, treedef = jax.tree_util.tree_flatten(weights)
    specs = treedef.flatten_up_to(spec_tree) if leaves else []
    parts = [f"{n} {what}{'s' if n > 1 else ''}" for what, n in roles.counts.items() if n]
    summary = (", ".join(parts) + f" split over {k} devices") if parts else "nothing split"
    return Plan(treedef, [np.shape(x) for x in leaves], list(specs), summary, roles.skipped)
