"""Stack combinators: layers that run sublayers on the data stack, and move its items.

``Serial`` (one after another), ``Parallel`` (each on its own slice of the
inputs), ``Branch`` (each on copies of the top inputs), ``Residual``, ``SerialWithSideOutputs`` (a ``Serial`` that sets side outputs
aside under the stack), and the weightless stack moves ``Select``, ``Dup``,
``Drop``, ``Swap``. Re-exported by
``retrax.layers.combinators`` and as ``tl.X``.

``check_sublayer_entries`` is the check every combinator with one weight
(or state) entry per sublayer runs on the trees it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from retrax.fastmath.random import init_rng_split, split_rng
from retrax.layers.base import Fn, Layer, LayerError, PureLayer
from retrax.layers.merge import Add
from retrax.layers.pass_context import Pass, new_pass, signature_key
from retrax.layers.stack import as_stack, pack
from retrax.layers.trees import abstract

__all__ = [
    "Serial",
    "Parallel",
    "Branch",
    "Residual",
    "SerialWithSideOutputs",
    "Select",
    "Dup",
    "Drop",
    "Swap",
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
        check_sublayer_entries(self, weights, "weights")
        check_sublayer_entries(self, state, "state")
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


def check_sublayer_entries(layer: Layer, tree: Any, what: str) -> None:
    """Raises unless ``tree`` (the ``what``: weights or state) has one entry per sublayer."""
    n = len(layer.sublayers)
    if not isinstance(tree, (tuple, list)) or len(tree) != n:
        got = f"{len(tree)} entries" if isinstance(tree, (tuple, list)) else type(tree).__name__
        raise ValueError(
            f"{layer.name_with_arity} has {n} sublayers, so its {what} must be a tuple of "
            f"{n} entries (one per sublayer); got {got}. Pass the {what} returned by init()."
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
        check_sublayer_entries(self, weights, "weights")
        check_sublayer_entries(self, state, "state")
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


def SerialWithSideOutputs(layers: Sequence[Layer], n_side_outputs: Any = 1) -> Layer:  # noqa: N802
    """Runs ``layers`` in series, setting the last outputs of each aside.

    Each layer's last ``n_side_outputs`` outputs (an int for all layers, or a
    list with one int per layer) move under the rest of the stack, and the
    later layers run on what stays on top. For example, with two layers

      - F: 1 input, 2 outputs (f, f_side)
      - G: 1 input, 2 outputs (g, g_side)

    SerialWithSideOutputs([F, G]) takes 1 input and gives 3 outputs:

      - inputs: x
      - outputs: g, f_side, g_side    where f, f_side = F(x) and g, g_side = G(f)

    In general the outputs are the stack left by the layers, then the side
    outputs in the order the layers made them. It is a ``Serial`` of each
    layer followed by a ``Select`` that moves its side outputs down (Trax's
    construction, so weights read ``(w_F, (), w_G, ())``).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> halve_and_keep = tl.Fn('HalveAndKeep', lambda x: (x / 2, x), n_out=2)
    >>> model = tl.SerialWithSideOutputs([halve_and_keep, halve_and_keep])
    >>> model.n_in, model.n_out
    (1, 3)
    >>> [y.item() for y in model(np.array(8.0))]
    [2.0, 8.0, 4.0]
    """
    if isinstance(layers, Layer) or not isinstance(layers, (list, tuple)):
        raise ValueError(
            f"SerialWithSideOutputs: layers must be a list of layers; got "
            f"{type(layers).__name__}. Write SerialWithSideOutputs([layer_1, layer_2])."
        )
    layers = _ensure_flat(layers, "SerialWithSideOutputs")
    counts = ([n_side_outputs] * len(layers) if not isinstance(n_side_outputs, (list, tuple))
              else list(n_side_outputs))
    if len(counts) != len(layers):
        raise ValueError(
            f"SerialWithSideOutputs: n_side_outputs has {len(counts)} entries for "
            f"{len(layers)} layers; give one int per layer, or a single int for all."
        )
    for layer, n_side in zip(layers, counts):
        if isinstance(n_side, bool) or not isinstance(n_side, (int, np.integer)) or not (
                0 <= n_side <= layer.n_out):
            raise ValueError(
                f"SerialWithSideOutputs: {layer.name_with_arity} gives {layer.n_out} outputs, "
                f"so its n_side_outputs must be an int from 0 to {layer.n_out}; got {n_side!r}."
            )
    # The inputs needed: as Serial counts them, with side outputs out of reach.
    needed = consumed = 0
    for layer, n_side in zip(layers, counts):
        needed = max(needed, consumed + layer.n_in)
        consumed += layer.n_in - (layer.n_out - n_side)
    # Run with `needed` inputs; after each layer, rotate its side outputs to the bottom.
    size, serial = needed, []
    for layer, n_side in zip(layers, counts):
        size += layer.n_out - layer.n_in
        kept = layer.n_out - n_side
        order = (list(range(kept)) + list(range(layer.n_out, size))
                 + list(range(kept, layer.n_out)))
        serial += [layer, Select(order)]
    return Serial(serial)


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
