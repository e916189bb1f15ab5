"""Combinators: layers built from layers, moving data on the stack.

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

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.fastmath.random import init_rng_split, split_rng
from retrax.layers import base
from retrax.layers.base import Fn, Layer, LayerError, PureLayer
from retrax.layers.pass_context import Pass, apply_child, init_child, new_pass, signature_key
from retrax.layers.stack import as_stack, inputs_from_stack, outputs_onto_stack, pack
from retrax.layers.trees import abstract, assign_child_state, child_state

__all__ = [
    "Serial",
    "Parallel",
    "Branch",
    "Residual",
    "Select",
    "Dup",
    "Drop",
    "Swap",
    "Add",
    "SubtractTop",
    "Multiply",
    "Gate",
    "Concatenate",
    "Split",
    "FlattenList",
    "Scan",
    "Cond",
    "Cache",
    "BatchLeadingAxes",
    "inputs_from_stack",
    "outputs_onto_stack",
]


def _ensure_flat(layers: Any, owner: str, prefix: str = "") -> list[Layer]:
    """Deep-flattens nested lists/tuples of layers; rejects anything else."""
    out: list[Layer] = []

    def rec(item: Any, path: str) -> None:
        if item is None:
            return
        if isinstance(item, (list, tuple)):
            for i, sub in enumerate(item):
                rec(sub, f"{path}[{i}]")
        elif isinstance(item, Layer):
            out.append(item)
        else:
            raise ValueError(
                f"{owner}: found a non-layer object at position {path}: "
                f"{type(item).__name__} {item!r:.60}. Combinators take layers or (nested) "
                f"lists of layers; wrap a function as tl.Fn('Name', f)."
            )

    for i, layer in enumerate(layers):
        rec(layer, f"{prefix}[{i}]")
    return out


def _as_layer(item: Any, owner: str, index: int) -> Layer:
    if item is None or (isinstance(item, (list, tuple)) and len(item) == 0):
        return Serial(None)
    if isinstance(item, (list, tuple)):
        return Serial(_ensure_flat(item, owner, f"[{index}]"))
    if not isinstance(item, Layer):
        raise ValueError(
            f"{owner}: found a non-layer object at position [{index}]: "
            f"{type(item).__name__} {item!r:.60}. Pass layers, (nested) lists of layers or "
            f"None; wrap a function as tl.Fn('Name', f)."
        )
    return item


def _abstract_outputs(layer: Layer, inputs: Any, weights: Any, state: Any, rng: Any,
                      ctx: Pass) -> list[Any]:
    """Output signatures of ``layer`` for abstract ``inputs`` (no FLOPs spent)."""
    recorded = ctx.outputs.get((id(layer), signature_key(inputs)))
    if recorded is not None:
        return list(recorded)

    def f(x, w, s):
        with new_pass(ctx.weights) as inner:
            inner.state.update(ctx.state)
            return inner.apply_layer(layer, x, w, s, rng)[0]

    try:
        out = jax.eval_shape(f, abstract(inputs), weights, state)
    except LayerError as e:
        e.function_name = "init"  # Shape inference is part of init.
        raise
    return [out] if layer.n_out == 1 else list(out)


def _too_few_inputs(owner: Layer, index: int, layer: Layer, stack: list[Any]) -> LayerError:
    err = LayerError(
        layer, "pure_fn", pack(stack),
        f"ValueError: {layer.name_with_arity} takes {layer.n_in} inputs but only "
        f"{len(stack)} are on the stack at this point of {owner.name_with_arity}. Give the "
        f"model more inputs, or produce them before this layer (e.g. with tl.Dup, tl.Select "
        f"or tl.Branch).",
    )
    err.push_parent(owner, index)
    return err


class Serial(Layer):
    """Applies sublayers one after another on the data stack.

    Each sublayer pops its ``n_in`` inputs from the top and pushes its ``n_out``
    outputs. Nested lists of layers are flattened; ``None`` and ``[]`` are no-ops.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> s = tl.Serial(tl.Dup(), tl.Dup())
    >>> s.n_in, s.n_out
    (1, 3)
    >>> print(tl.Serial(tl.Dense(4), [tl.Relu(), tl.Dense(2)]))
    Serial[
      Dense_4
      Serial[
        Relu
      ]
      Dense_2
    ]
    """

    def __init__(self, *sublayers: Any, name: str | None = None, sublayers_to_print: Any = None):
        super().__init__(name=name, sublayers_to_print=sublayers_to_print)
        layers = _ensure_flat(sublayers, name or "Serial")
        self._sublayers = tuple(layers)
        self._n_in, self._n_out = _serial_arity(layers)

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass):
        stack = as_stack(input_signature)
        weights, states = [], []
        for i, (layer, r) in enumerate(zip(self._sublayers,
                                           init_rng_split(rng, len(self._sublayers)))):
            k = layer.n_in
            if k > len(stack):
                raise _too_few_inputs(self, i, layer, stack)
            inputs = pack(stack[:k])
            try:
                w, s = ctx.init_layer(layer, inputs, r)
                outs = _abstract_outputs(layer, inputs, w, s, r, ctx)
            except LayerError as e:
                e.push_parent(self, i)
                raise
            stack = outs + stack[k:]
            weights.append(w)
            states.append(s)
        ctx.outputs[(id(self), signature_key(input_signature))] = stack
        return tuple(weights), tuple(states)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        _check_per_sublayer(self, weights, "weights")
        _check_per_sublayer(self, state, "state")
        stack = as_stack(xs)
        new_states = []
        for i, (layer, r) in enumerate(zip(self._sublayers, split_rng(rng, len(self._sublayers)))):
            k = layer.n_in
            if k > len(stack):
                raise _too_few_inputs(self, i, layer, stack)
            try:
                outputs, s = ctx.apply_layer(layer, pack(stack[:k]), weights[i], state[i], r)
            except LayerError as e:
                e.push_parent(self, i)
                raise
            outs = [outputs] if layer.n_out == 1 else list(outputs)
            stack = outs + stack[k:]
            new_states.append(s)
        return pack(stack), tuple(new_states)


def _check_per_sublayer(layer: Layer, tree: Any, what: str) -> None:
    n = len(layer.sublayers)
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, (tuple, list)) else type(tree).__name__
        raise ValueError(
            f"{layer.name_with_arity} has {n} sublayers, so its {what} must be a tuple of "
            f"{n} entries (one per sublayer); got {got}. Pass the {what} returned by init()."
        )


def _check_pair(layer: Layer, state: Any) -> None:
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        got = f"{len(state)} entries" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(
            f"{layer.name_with_arity}: its state must be a pair (Trax's layout); got {got}. "
            f"Pass the state returned by init()."
        )


def _serial_arity(layers: Sequence[Layer]) -> tuple[int, int]:
    running_total = running_max = 0
    for layer in layers:
        running_total += layer.n_in
        running_max = max(running_max, running_total)
        running_total -= layer.n_out
    if not layers:
        return 1, 1
    return running_max, running_max - running_total


class Parallel(Layer):
    """Applies each sublayer to its own consecutive slice of the inputs.

    ``None`` or ``[]`` stands for an identity (1 -> 1); a list becomes a ``Serial``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> p = tl.Parallel(tl.Fn('Neg', lambda x: -x), None)
    >>> [a.tolist() for a in p((np.array(1.0), np.array(2.0)))]
    [-1.0, 2.0]
    """

    def __init__(self, *sublayers: Any, name: str | None = None):
        super().__init__(name=name)
        layers = [_as_layer(item, name or "Parallel", i) for i, item in enumerate(sublayers)]
        if len(layers) < 2:
            raise ValueError(
                f"{name or 'Parallel'} needs at least 2 sublayers; got {len(layers)}. "
                f"Use the layer itself (or Serial) for one."
            )
        for i, layer in enumerate(layers):
            if layer.n_in == 0:
                raise ValueError(
                    f"{name or 'Parallel'}: sublayer {i} ({layer.name_with_arity}) takes no "
                    f"inputs; Parallel needs sublayers with n_in >= 1."
                )
        self._sublayers = tuple(layers)
        self._n_in = sum(layer.n_in for layer in layers)
        self._n_out = sum(layer.n_out for layer in layers)

    def _slices(self, xs: Any) -> list[Any]:
        items = as_stack(xs)
        out, start = [], 0
        for layer in self._sublayers:
            out.append(pack(items[start:start + layer.n_in]))
            start += layer.n_in
        return out

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass):
        weights, states = [], []
        rngs = init_rng_split(rng, len(self._sublayers))
        outputs: list[Any] = []
        for i, (layer, x, r) in enumerate(zip(self._sublayers, self._slices(input_signature), rngs)):
            try:
                w, s = ctx.init_layer(layer, x, r)
                outputs.extend(_abstract_outputs(layer, x, w, s, r, ctx))
            except LayerError as e:
                e.push_parent(self, i)
                raise
            weights.append(w)
            states.append(s)
        ctx.outputs[(id(self), signature_key(input_signature))] = outputs
        return tuple(weights), tuple(states)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        _check_per_sublayer(self, weights, "weights")
        _check_per_sublayer(self, state, "state")
        outputs, new_states = [], []
        rngs = split_rng(rng, len(self._sublayers))
        for i, (layer, x, r) in enumerate(zip(self._sublayers, self._slices(xs), rngs)):
            try:
                y, s = ctx.apply_layer(layer, x, weights[i], state[i], r)
            except LayerError as e:
                e.push_parent(self, i)
                raise
            outputs.extend([y] if layer.n_out == 1 else list(y))
            new_states.append(s)
        return pack(outputs), tuple(new_states)


def Branch(*layers: Any, name: str = "Branch") -> Layer:  # noqa: N802
    """Runs each layer on copies of the top inputs; outputs all their results.

    ``n_in`` is the largest ``n_in`` of the branches, ``n_out`` the sum of theirs.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> b = tl.Branch(None, tl.Fn('Sq', lambda x: x * x))
    >>> [a.tolist() for a in b(np.array(3.0))]
    [3.0, 9.0]
    """
    if len(layers) == 1:
        return _as_layer(layers[0], name, 0)
    if not layers:
        raise ValueError(f"{name}: needs at least one layer (or None for the identity).")
    parallel = Parallel(*[_as_layer(item, name, i) for i, item in enumerate(layers)])
    parallel.hide_in_path()  # Error paths read Branch_out2[i], i = branch index.
    indices = [i for layer in parallel.sublayers for i in range(layer.n_in)]
    return Serial(Select(indices), parallel, name=name, sublayers_to_print=layers)


def Residual(*layers: Any, shortcut: Any = None) -> Layer:  # noqa: N802
    """``layers(x) + shortcut(x)``; the shortcut is the identity by default.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Residual(tl.Fn('Double', lambda x: 2 * x))(np.array([1.0])).tolist()
    [3.0]
    """
    flat = _ensure_flat(layers, "Residual")
    if not flat:
        raise ValueError("Residual: needs at least one layer, e.g. tl.Residual(tl.Dense(d)).")
    layer = flat[0] if len(flat) == 1 else Serial(flat)
    return Serial(Branch(shortcut, layer), Add())


class Select(PureLayer):
    """Copies, reorders or drops stack items: outputs ``inputs[i] for i in indices``.

    >>> from retrax import layers as tl
    >>> tl.Select([0, 0])
    Select[0,0]_out2
    >>> tl.Select([2, 1, 0]).n_in
    3
    """

    def __init__(self, indices: Sequence[int], n_in: int | None = None, name: str | None = None):
        indices = list(indices)
        for i in indices:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
                raise ValueError(f"Select: indices must be non-negative ints; got {indices}.")
        indices = [int(i) for i in indices]
        if n_in is None:
            n_in = max(indices) + 1 if indices else 0
        if indices and max(indices) >= n_in:
            raise ValueError(
                f"Select: index {max(indices)} is out of range for n_in={n_in}; indices "
                f"count from 0 at the top of the stack."
            )
        name = name or f"Select{indices}".replace(" ", "")
        n = n_in

        def select(xs: Any) -> Any:
            items = [xs] if n == 1 else list(xs)
            return pack([items[i] for i in indices]) if indices else ()

        super().__init__(select, n_in=n_in, n_out=len(indices), name=name)
        self._indices = indices


def Dup() -> Layer:  # noqa: N802
    """Duplicates the top item: ``x -> (x, x)``; 1 -> 2.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.tolist() for a in tl.Dup()(np.array([1.0]))]
    [[1.0], [1.0]]
    """
    return Fn("Dup", lambda x: (x, x), n_out=2)


def Drop() -> Layer:  # noqa: N802
    """Removes the top item from the stack; 1 -> 0.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Serial(tl.Drop())((np.array(1.0), np.array(2.0))).item()
    2.0
    """
    return Fn("Drop", lambda x: (), n_out=0)


def Swap() -> Layer:  # noqa: N802
    """Swaps the top two items: ``(a, b) -> (b, a)``; 2 -> 2.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.item() for a in tl.Swap()((np.array(1.0), np.array(2.0)))]
    [2.0, 1.0]
    """
    return Fn("Swap", lambda x0, x1: (x1, x0), n_out=2)


def Add() -> Layer:  # noqa: N802
    """``(a, b) -> a + b``; 2 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Add()((np.array([1.0, 2.0]), np.array([10.0, 20.0]))).tolist()
    [11.0, 22.0]
    """
    return Fn("Add", lambda x0, x1: x0 + x1)


def SubtractTop() -> Layer:  # noqa: N802
    """``(a, b) -> b - a`` (subtracts the top item from the one below); 2 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.SubtractTop()((np.array(2.0), np.array(10.0))).item()
    8.0
    """
    return Fn("SubtractTop", lambda x0, x1: x1 - x0)


def Multiply() -> Layer:  # noqa: N802
    """``(a, b) -> a * b``; 2 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Multiply()((np.array(2.0), np.array(3.0))).item()
    6.0
    """
    return Fn("Multiply", lambda x0, x1: x0 * x1)


def Gate() -> Layer:  # noqa: N802
    """``(m, g, c) -> g * m + (1 - g) * c`` (a highway gate); 3 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Gate()((np.array(2.0), np.array(0.25), np.array(6.0))).item()
    5.0
    """
    return Fn("Gate", lambda m, g, c: g * m + (1.0 - g) * c)


def _check_n_items(owner: str, n_items: int) -> None:
    if not isinstance(n_items, int) or n_items < 1:
        raise ValueError(f"{owner}: n_items must be a positive int; got {n_items!r}.")


def Concatenate(n_items: int = 2, axis: int = -1) -> Layer:  # noqa: N802
    """Concatenates the top ``n_items`` arrays along ``axis``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.Concatenate()((np.ones((1, 2)), np.zeros((1, 1)))).tolist()
    [[1.0, 1.0, 0.0]]
    """
    _check_n_items("Concatenate", n_items)
    name = "Concatenate" if axis == -1 else f"Concatenate_axis{axis}"

    def concat(xs: Any) -> Any:
        return jnp.concatenate(as_stack(xs), axis)

    return PureLayer(concat, n_in=n_items, name=name)


def Split(n_items: int = 2, axis: int = -1) -> Layer:  # noqa: N802
    """Splits the top array into ``n_items`` equal parts along ``axis``; 1 -> n_items.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.tolist() for a in tl.Split()(np.array([1.0, 2.0, 3.0, 4.0]))]
    [[1.0, 2.0], [3.0, 4.0]]
    """
    _check_n_items("Split", n_items)

    def split(x: Any) -> Any:
        if x.shape[axis] % n_items:
            raise ValueError(
                f"Split: axis {axis} of size {x.shape[axis]} is not divisible into "
                f"{n_items} equal parts."
            )
        parts = tuple(jnp.split(x, n_items, axis))
        return parts[0] if n_items == 1 else parts

    return PureLayer(split, n_out=n_items, name="Split")


def FlattenList() -> Layer:  # noqa: N802
    """Deep-flattens a nested tuple/list into a flat tuple; 1 -> 1.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.item() for a in tl.FlattenList()((np.array(1.0), [np.array(2.0)]))]
    [1.0, 2.0]
    """

    def flatten(x: Any) -> Any:
        return tuple(jax.tree_util.tree_leaves(x))

    return PureLayer(flatten, name="FlattenList")


class Scan(Layer):
    """Scans ``layer`` over ``axis`` of its non-carry inputs, threading carries.

    ``layer`` maps ``(x_1..x_N, c_1..c_M) -> (y_1..y_K, c'_1..c'_M)`` with
    ``M = n_carry``; Scan returns the ys stacked along ``axis``, then the final
    carries. In ``'predict'`` mode the final carries are kept in the state and
    used instead of the input carries on the next call.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> cumsum = tl.Scan(tl.Serial(tl.Add(), tl.Dup()), axis=0)
    >>> ys, total = cumsum((np.array([1.0, 2.0, 3.0]), np.array(0.0)))
    >>> ys.tolist(), total.item()
    ([1.0, 3.0, 6.0], 6.0)
    """

    def __init__(self, layer: Layer, axis: int = 0, n_carry: int = 1, remat: bool = False,
                 mode: str = "train"):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out)
        if n_carry < 0 or n_carry > layer.n_in or n_carry > layer.n_out:
            raise ValueError(
                f"Scan: n_carry={n_carry} must be between 0 and the layer's n_in "
                f"({layer.n_in}) and n_out ({layer.n_out})."
            )
        self._sublayers = (layer,)
        self._axis = axis
        self._n_carry = n_carry
        self._remat = remat
        self._mode = mode
        self._state = ()  # The saved carries (predict mode); see state_tree.

    # State layout (Trax's): (sublayer_state, saved_carries).
    def state_tree(self, seen: set[int]) -> Any:
        return (child_state(self._sublayers[0], seen), self._state)

    def assign_state_tree(self, state: Any, seen: set[int]) -> None:
        _check_pair(self, state)
        assign_child_state(self._sublayers[0], state[0], seen)
        self._state = state[1]

    def _split_inputs(self, xs: Any) -> tuple[list[Any], list[Any]]:
        items = as_stack(xs) if self._n_in != 1 else [xs]
        n_xs = self._n_in - self._n_carry
        return items[:n_xs], items[n_xs:]

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass):
        xs, carries = self._split_inputs(input_signature)
        sliced = []
        for x in xs:
            if not -len(x.shape) <= self._axis < len(x.shape):
                raise ValueError(
                    f"Scan: axis {self._axis} is out of range for an input of shape "
                    f"{x.shape}; scanned inputs need that axis."
                )
            a = self._axis % len(x.shape)
            sliced.append(x.replace(shape=x.shape[:a] + x.shape[a + 1:]))
        w, s = init_child(self, 0, self._sublayers[0], pack(sliced + carries), rng, ctx)
        return (w,), (s, ())

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        layer = self._sublayers[0]
        _check_per_sublayer(self, weights, "weights")
        _check_pair(self, state)
        w = weights[0]
        layer_state, saved_carry = state
        items, carries = self._split_inputs(xs)
        if self._mode == "predict" and saved_carry != ():
            carries = list(saved_carry)
        moved = tuple(jnp.moveaxis(x, self._axis, 0) for x in items)
        n_ys = self._n_out - self._n_carry
        seed_weights = dict(ctx.weights)

        def body(carry, x_slice):
            c, s, i = carry
            r = None if rng is None else fastmath_random.hash_fold_in(rng, i)
            with new_pass(seed_weights) as inner:
                out, s2 = apply_child(self, 0, layer, pack(list(x_slice) + list(c)), w, s, r,
                                       inner)
            outs = [out] if layer.n_out == 1 else list(out)
            return (tuple(outs[n_ys:]), s2, i + 1), tuple(outs[:n_ys])

        if self._remat:
            body = jax.checkpoint(body)
        (carry, layer_state, _), ys = lax.scan(body, (tuple(carries), layer_state, 0), moved)
        ys = [jnp.moveaxis(y, 0, self._axis) for y in ys]
        new_saved = tuple(carry) if self._mode == "predict" else ()
        return pack(ys + list(carry)), (layer_state, new_saved)


class Cond(Layer):
    """Runs ``true`` or ``false`` on the stack depending on ``cond``'s output.

    ``cond`` takes the top ``cond.n_in`` items and returns one boolean scalar;
    the branch runs on the next items. ``false`` defaults to the identity.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> is_pos = tl.Fn('IsPositive', lambda x: x > 0)
    >>> c = tl.Cond(is_pos, tl.Fn('Neg', lambda x: -x))
    >>> c((np.array(1.0), np.array(5.0))).item(), c((np.array(-1.0), np.array(5.0))).item()
    (-5.0, 5.0)
    """

    def __init__(self, cond: Layer, true: Layer, false: Layer | None = None,
                 name: str | None = None):
        if false is None:
            false = Serial() if true.n_in == 1 else Select(list(range(true.n_in)))
        if cond.n_out != 1:
            raise ValueError(f"Cond: cond layer must have n_out=1; got {cond.n_out}.")
        if true.n_in != false.n_in:
            raise ValueError(
                f"Cond: true and false branches must take the same number of inputs; got "
                f"{true.n_in} and {false.n_in}."
            )
        if true.n_out != false.n_out:
            raise ValueError(
                f"Cond: true and false branches must return the same number of outputs; got "
                f"{true.n_out} and {false.n_out}."
            )
        super().__init__(n_in=cond.n_in + true.n_in, n_out=true.n_out, name=name)
        self._sublayers = (cond, true, false)

    def _parts(self, xs: Any) -> tuple[Any, Any]:
        items = as_stack(xs)
        k = self._sublayers[0].n_in
        return pack(items[:k]), pack(items[k:self._n_in])

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass):
        c_in, rest = self._parts(input_signature)
        rngs = init_rng_split(rng, 3)
        results = [init_child(self, i, layer, x, r, ctx) for i, (layer, x, r) in
                   enumerate(zip(self._sublayers, (c_in, rest, rest), rngs))]
        return tuple(r[0] for r in results), tuple(r[1] for r in results)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        cond, true, false = self._sublayers
        _check_per_sublayer(self, weights, "weights")
        _check_per_sublayer(self, state, "state")
        c_in, rest = self._parts(xs)
        r_c, r_t, r_f = split_rng(rng, 3)
        pred, s_c = apply_child(self, 0, cond, c_in, weights[0], state[0], r_c, ctx)
        if tuple(getattr(pred, "shape", ())) not in ((), (1,)):
            raise ValueError(
                f"Cond: the cond layer {cond.name_with_arity} must return one boolean "
                f"scalar; got shape {tuple(pred.shape)}. Reduce it, e.g. with jnp.all."
            )
        seed_weights = dict(ctx.weights)

        def run_true(operand):
            with new_pass(seed_weights) as inner:
                y, s = apply_child(self, 1, true, operand, weights[1], state[1], r_t, inner)
            return y, s, state[2]

        def run_false(operand):
            with new_pass(seed_weights) as inner:
                y, s = apply_child(self, 2, false, operand, weights[2], state[2], r_f, inner)
            return y, state[1], s

        try:
            y, s_t, s_f = lax.cond(jnp.reshape(pred, ()).astype(bool), run_true, run_false, rest)
        except TypeError as e:
            if "branches must have equal output types" not in str(e):
                raise
            raise ValueError(
                f"Cond: the true branch ({true.name_with_arity}) and the false branch "
                f"({false.name_with_arity}) must return outputs of the same shapes and dtypes. "
                + next((ln for ln in str(e).splitlines() if ln.startswith("The output of")), "")
            ) from e
        return y, (s_c, s_t, s_f)


class Cache(Layer):
    """Runs ``layer`` once and returns the stored result on later calls.

    Used in predict mode for values computed once per input, such as the
    encoder output of an encoder-decoder. The state is ``(result, layer_state)``
    with ``result == ()`` until the first call. Same ``n_in``/``n_out`` as ``layer``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> cache = tl.Cache(tl.Fn('Inc', lambda x: x + 1))
    >>> cache(np.array(1.0)).item(), cache(np.array(5.0)).item()
    (2.0, 2.0)
    """

    def __init__(self, layer: Layer):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out)
        self._sublayers = (layer,)
        self._state = ()  # The cached result; see state_tree.

    # State layout (Trax's): (cached_result, sublayer_state).
    def state_tree(self, seen: set[int]) -> Any:
        return (self._state, child_state(self._sublayers[0], seen))

    def assign_state_tree(self, state: Any, seen: set[int]) -> None:
        _check_pair(self, state)
        self._state = state[0]
        assign_child_state(self._sublayers[0], state[1], seen)

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass):
        w, s = init_child(self, 0, self._sublayers[0], input_signature, rng, ctx)
        return (w,), ((), s)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        _check_per_sublayer(self, weights, "weights")
        _check_pair(self, state)
        cached, layer_state = state
        if isinstance(cached, tuple) and cached == ():
            y, layer_state = apply_child(self, 0, self._sublayers[0], xs, weights[0],
                                          layer_state, rng, ctx)
            return y, (y, layer_state)
        # The layer is skipped, but its weights still belong to this pass: a
        # layer shared with one that runs later (e.g. an embedding tied between
        # an encoder and a decoder, whose later occurrence holds only the
        # shared-weights marker) finds them as if the layer had run.
        self._register_weights(self._sublayers[0], weights[0], ctx)
        return cached, state

    @staticmethod
    def _register_weights(layer: Layer, weights: Any, ctx: Pass) -> None:
        """Records ``weights`` for ``layer`` and its sublayers in ``ctx``, as applying would."""
        if isinstance(weights, dict) and weights == base.GET_WEIGHTS_FROM_CACHE:
            return  # Shared with an earlier occurrence, whose weights are recorded.
        ctx.weights.setdefault(id(layer), weights)
        # A combinator's weights hold one entry per sublayer (see Layer.init).
        for sub, sub_weights in zip(layer.sublayers, weights if layer.sublayers else ()):
            Cache._register_weights(sub, sub_weights, ctx)


class BatchLeadingAxes(Layer):
    """Applies a 1-output ``layer`` after folding all leading axes into one batch axis.

    The last ``n_last_axes_to_keep`` axes are kept; the output gets the leading
    axes back. Same ``n_in`` as ``layer``, ``n_out == 1``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> flat = tl.BatchLeadingAxes(tl.Fn('Rows', lambda x: x.sum(-1)))
    >>> flat(np.ones((2, 3, 4))).shape
    (2, 3)
    """

    def __init__(self, layer: Layer, n_last_axes_to_keep: int = 1):
        if layer.n_out != 1:
            raise ValueError(f"BatchLeadingAxes: the layer must have n_out=1; got {layer.n_out}.")
        super().__init__(n_in=layer.n_in, n_out=1)
        self._sublayers = (layer,)
        self._keep = n_last_axes_to_keep

    def _fold(self, x: Any) -> Any:
        if isinstance(x, shapes.ShapeDtype):
            lead = x.shape[: len(x.shape) - self._keep]
            n = 1
            for d in lead:
                n *= d
            return x.replace(shape=(n,) + x.shape[len(x.shape) - self._keep:])
        return jnp.reshape(x, (-1,) + tuple(x.shape[x.ndim - self._keep:]))

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass):
        folded = pack([self._fold(x) for x in as_stack(input_signature)])
        w, s = init_child(self, 0, self._sublayers[0], folded, rng, ctx)
        return (w,), (s,)

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        items = as_stack(xs) if self._n_in != 1 else [xs]
        lead = items[0].shape[: items[0].ndim - self._keep]
        folded = pack([self._fold(x) for x in items])
        y, s = apply_child(self, 0, self._sublayers[0], folded, weights[0], state[0], rng, ctx)
        return jnp.reshape(y, tuple(lead) + tuple(y.shape[1:])), (s,)

