"""Reversible layers: inputs recomputed from outputs, so training keeps no activations.

A ``ReversibleLayer`` can run backwards: ``reverse(outputs)`` gives back its
inputs, and ``reverse_and_grad(outputs, grad)`` gives the inputs together
with the gradients of the inputs and of the weights. A ``ReversibleSerial`` of
such layers differentiates through a ``jax.custom_vjp`` whose backward pass
walks the layers from last to first, reconstructing each layer's inputs from
its outputs instead of reading them from memory: the memory a training step
needs for activations does not grow with depth (RevNet, Reformer).

The building block is ``ReversibleHalfResidual`` followed by
``ReversibleSwap``: on a stack ``(x1, x2)`` it computes ``(x2, x1 + f(x2))``,
which is undone by ``x1 = y2 - f(y1)``.

Random layers inside (dropout) give the same masks when recomputed: every
child of a reversible combinator runs with a key derived from the
combinator's key and its index, in a pass of its own, both forward and in
reverse. A layer shared between two children of one ``ReversibleSerial`` is
not supported (each child runs in a pass of its own).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.fastmath import random as fastmath_random
from retrax.fastmath.cotangents import cotangent_like, is_float
from retrax.fastmath.scheduling import tied, zero_from
from retrax.layers.base import Layer, LayerError, as_stack, init_child, new_pass, pack
from retrax.layers.pass_context import DerivedKey
from retrax.layers.stack_combinators import Serial, check_sublayer_entries

__all__ = [
    "ReversibleLayer",
    "ReversibleConcatenatePair",
    "ReversibleSelect",
    "ReversibleSwap",
    "ReversibleReshape",
    "ReversiblePrintShape",
    "ReversibleSerial",
    "ReversibleHalfResidual",
]


# --------------------------------------------------------------------------
# Cotangent helpers: integer arrays (masks, token ids) get float0 cotangents.
# --------------------------------------------------------------------------


def _zero_cotangent(x: Any) -> Any:
    if x is None:
        return None
    if is_float(x):
        return jnp.zeros(jnp.shape(x), jnp.result_type(x))
    return np.zeros(jnp.shape(x), jax.dtypes.float0)


def _add_cotangents(a: Any, b: Any) -> Any:
    def one(x, y):
        if x is None or jnp.result_type(x) == jax.dtypes.float0:
            return y
        if y is None or jnp.result_type(y) == jax.dtypes.float0:
            return x
        return x + y

    return jax.tree_util.tree_map(one, a, b, is_leaf=lambda v: v is None)


def _child_keys(rng: Any, n: int) -> list[Any]:
    """The key of each child of a reversible combinator: the same forward and in reverse."""
    if rng is None:
        return [None] * n
    return [fastmath_random.hash_fold_in(rng, i) for i in range(n)]


def _apply_alone(owner: Layer, index: int, layer: Layer, x: Any, weights: Any, state: Any,
                 rng: Any) -> tuple[Any, Any]:
    """Applies child ``index`` of ``owner`` in a pass of its own (reproducible keys)."""
    with new_pass() as ctx:
        try:
            return ctx.apply_layer(layer, x, weights, state, rng)
        except LayerError as e:
            e.push_parent(owner, index)
            raise


def _outputs_list(layer: Layer, outputs: Any) -> list[Any]:
    return [outputs] if layer.n_out == 1 else list(outputs)


def _inputs_list(layer: Layer, inputs: Any) -> list[Any]:
    return [inputs] if layer.n_in == 1 else list(inputs)


# --------------------------------------------------------------------------
# The base class and the weightless reversible layers
# --------------------------------------------------------------------------


class ReversibleLayer(Layer):
    """A layer whose inputs can be computed from its outputs.

    Subclasses define ``reverse``; ``reverse_and_grad`` (the backward pass:
    reconstructed inputs plus gradients) then comes from ``reverse`` and the
    gradient of ``forward`` at the reconstructed inputs; override it where the
    two share work. ``has_backward`` is True: differentiating through the
    layer uses ``reverse_and_grad`` (Trax's ``backward``).
    """

    def reverse(self, output: Any, weights: Any = (), state: Any = (), new_state: Any = (),
                rng: Any = None) -> Any:
        """The inputs that gave ``output`` (the forward pass run backwards)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not define reverse(output, weights, state, "
            f"new_state, rng).")

    def reverse_and_grad(self, output: Any, grad: Any, weights: Any = (), state: Any = (),
                         new_state: Any = (), rng: Any = None) -> tuple[Any, tuple[Any, Any]]:
        """The backward pass: ``(inputs, (inputs_grad, weights_grad))``.

        ``grad`` is the gradient of the loss with respect to ``output``;
        ``state``/``new_state`` the state before and after the forward pass,
        ``rng`` its key.
        """
        del new_state
        x = self.reverse(output, weights, state, rng=rng)
        # A leaf run alone in a pass derives its key as ``DerivedKey(rng, 1)``.
        key = None if rng is None else DerivedKey(rng, 1)

        def forward(x, weights):
            with self._fields_installed(weights, state, key):
                return self.forward(x)

        y, vjp = jax.vjp(forward, x, weights)
        x_ct, w_ct = vjp(cotangent_like(y, grad))
        return x, (x_ct, w_ct)

    @property
    def has_backward(self) -> bool:
        return True

    def backward(self, inputs, output, grad, weights, state, new_state, rng):
        del inputs
        return self.reverse_and_grad(output, grad, weights, state, new_state, rng)[1]


class ReversibleConcatenatePair(ReversibleLayer):
    """Concatenates two arrays on the last axis and outputs the result twice (2 -> 2).

      - inputs: x, y
      - outputs: [x, y], [x, y]      ([x, y]: concatenated on the last axis)

    ``reverse`` splits the first output into two halves of equal width.

    >>> import numpy as np
    >>> a, b = ReversibleConcatenatePair()((np.ones((1, 2)), np.zeros((1, 2))))
    >>> a.tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """

    def __init__(self):
        super().__init__(n_in=2, n_out=2)

    def forward(self, inputs):
        x, y = inputs
        pair = jnp.concatenate((x, y), axis=-1)
        return pair, pair

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del weights, state, new_state, rng
        pair = output[0]
        if pair.shape[-1] % 2:
            raise ValueError(
                f"{self.name_with_arity}.reverse: cannot split an array of width "
                f"{pair.shape[-1]} into two equal halves; concatenate two arrays of the same "
                f"width (an even d_model).")
        return tuple(jnp.split(pair, 2, axis=-1))


class ReversibleSelect(ReversibleLayer):
    """``Select`` that permutes its inputs, so it can be undone.

    ``indices`` must name every input exactly once.

    >>> import numpy as np
    >>> layer = ReversibleSelect([2, 0, 1])
    >>> layer
    ReversibleSelect[2,0,1]_in3_out3
    >>> [int(v) for v in layer((np.array(0), np.array(1), np.array(2)))]
    [2, 0, 1]
    """

    def __init__(self, indices: Any, n_in: int | None = None, name: str | None = None):
        indices = [int(i) for i in indices]
        if n_in is None:
            n_in = max(indices) + 1
        if name is None:
            name = f"ReversibleSelect{indices}".replace(" ", "")
        missing = [i for i in range(n_in) if i not in indices]
        if missing or len(indices) != n_in:
            raise ValueError(
                f"{name}: to be reversible, indices must name each of the {n_in} inputs "
                f"exactly once; got {indices} (missing: {missing}). Use tl.Select to drop or "
                f"copy inputs.")
        super().__init__(n_in=n_in, n_out=len(indices), name=name)
        self._indices = indices
        self._reverse_indices = [indices.index(i) for i in range(n_in)]

    def forward(self, inputs):
        items = as_stack(inputs) if self.n_in != 1 else [inputs]
        return pack([items[i] for i in self._indices])

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del weights, state, new_state, rng
        items = as_stack(output) if self.n_out != 1 else [output]
        return pack([items[i] for i in self._reverse_indices])


def ReversibleSwap() -> ReversibleSelect:  # noqa: N802
    """Swaps the two top items of the stack, reversibly (2 -> 2).

    >>> import numpy as np
    >>> [v.tolist() for v in ReversibleSwap()((np.array([1, 2]), np.array([10, 20])))]
    [[10, 20], [1, 2]]
    """
    return ReversibleSelect([1, 0], name="ReversibleSwap")


class ReversibleReshape(ReversibleLayer):
    """Reshapes the leading axes ``shape1`` of each input to ``shape2`` (n_in -> n_in).

    >>> import numpy as np
    >>> ReversibleReshape((2, 3), (6,))(np.zeros((2, 3, 4))).shape
    (6, 4)
    """

    def __init__(self, shape1: Any, shape2: Any, n_in: int = 1):
        self._shape1 = [int(d) for d in shape1]
        self._shape2 = [int(d) for d in shape2]
        super().__init__(n_in=n_in, n_out=n_in,
                         name=f"ReversibleReshape_{tuple(shape1)}_{tuple(shape2)}")

    def _reshape(self, xs, src, dst):
        items = as_stack(xs) if self.n_in != 1 else [xs]
        out = []
        for x in items:
            if list(x.shape[:len(src)]) != [d if d != -1 else x.shape[i]
                                           for i, d in enumerate(src)]:
                raise ValueError(
                    f"{self.name}: expected arrays whose leading axes are {tuple(src)}; got "
                    f"shape {tuple(x.shape)}.")
            out.append(jnp.reshape(x, tuple(dst) + tuple(x.shape[len(src):])))
        return pack(out)

    def forward(self, inputs):
        return self._reshape(inputs, self._shape1, self._shape2)

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del weights, state, new_state, rng
        return self._reshape(output, self._shape2, self._shape1)


class ReversiblePrintShape(ReversibleLayer):
    """Prints the shapes and dtypes of its inputs and passes them on (for debugging)."""

    def __init__(self, n_in: int = 1, msg: str = ""):
        super().__init__(n_in=n_in, n_out=n_in)
        self._msg = msg

    def forward(self, xs):
        items = as_stack(xs) if self.n_in != 1 else [xs]
        described = ", ".join(f"{tuple(x.shape)}[{x.dtype}]" for x in items)
        print(f"PrintShape: {self._msg}: [{described}]")
        return xs

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del weights, state, new_state, rng
        return output


# --------------------------------------------------------------------------
# ReversibleSerial: the custom_vjp that recomputes activations
# --------------------------------------------------------------------------


class ReversibleSerial(ReversibleLayer, Serial):
    """``Serial`` of reversible layers whose gradient recomputes the activations.

    Forward it is ``Serial`` (same weights and state layout: one entry per
    sublayer). Differentiated, it keeps only its outputs: the backward pass
    runs ``reverse_and_grad`` of each sublayer from last to first, which
    reconstructs that sublayer's inputs from its outputs and gives the
    gradients. Gradients equal those of plain autodiff up to rounding.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> block = ReversibleSerial(ReversibleHalfResidual(tl.Dense(2)), ReversibleSwap())
    >>> block.n_in, block.n_out
    (2, 2)
    """

    def __init__(self, *layers: Any, name: str | None = None):
        Serial.__init__(self, *layers, name=name)
        for i, layer in enumerate(self.sublayers):
            if not isinstance(layer, ReversibleLayer):
                raise ValueError(
                    f"ReversibleSerial: sublayer {i} ({layer.name_with_arity}) is not "
                    f"reversible. Use tl.Reversible* layers (ReversibleHalfResidual, "
                    f"ReversibleSwap, ...), or a plain tl.Serial.")

    def _run(self, xs, weights, state, rng):
        stack = as_stack(xs) if self.n_in != 1 else [xs]
        new_states = []
        # Ties only matter for training (see fastmath.scheduling); decoding skips their copies.
        tie = self.mode in (None, "train")
        for i, (layer, key) in enumerate(zip(self.sublayers, _child_keys(rng, len(self.sublayers)))):
            k = layer.n_in
            w, key = tied((weights[i], key), zero_from(stack) if tie else None)
            outputs, s = _apply_alone(self, i, layer, pack(stack[:k]), w, state[i], key)
            stack = _outputs_list(layer, outputs) + stack[k:]
            new_states.append(s)
        return pack(stack), tuple(new_states)

    def forward_in_pass(self, xs, weights, state, rng, ctx):
        del ctx  # Each child runs in a pass of its own (see _apply_alone).
        check_sublayer_entries(self, weights, "weights")
        check_sublayer_entries(self, state, "state")

        @jax.custom_vjp
        def run(xs, weights, state, rng):
            return self._run(xs, weights, state, rng)

        def run_fwd(xs, weights, state, rng):
            ys, new_state = self._run(xs, weights, state, rng)
            # Only the outputs are kept: the inputs are recomputed from them.
            return (ys, new_state), (ys, weights, state, new_state, rng)

        def run_bwd(saved, cts):
            ys, weights, state, new_state, rng = saved
            xs, (xs_ct, w_ct) = self.reverse_and_grad(ys, cts[0], weights, state, new_state, rng)
            return (cotangent_like(xs, xs_ct), w_ct,
                    jax.tree_util.tree_map(_zero_cotangent, state),
                    _zero_cotangent(rng))

        run.defvjp(run_fwd, run_bwd)
        return run(xs, weights, state, rng)

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        stack = as_stack(output) if self.n_out != 1 else [output]
        keys = _child_keys(rng, len(self.sublayers))
        for i in reversed(range(len(self.sublayers))):
            layer = self.sublayers[i]
            k = layer.n_out
            x = layer.reverse(pack(stack[:k]), weights[i], state[i], new_state[i], rng=keys[i])
            stack = _inputs_list(layer, x) + stack[k:]
        return pack(stack)

    def reverse_and_grad(self, output, grad, weights=(), state=(), new_state=(), rng=None):
        stack = as_stack(output) if self.n_out != 1 else [output]
        stack_ct = as_stack(grad) if self.n_out != 1 else [grad]
        keys = _child_keys(rng, len(self.sublayers))
        weights_ct: list[Any] = [None] * len(self.sublayers)
        for i in reversed(range(len(self.sublayers))):
            layer = self.sublayers[i]
            k = layer.n_out
            # Tied to this layer's outputs, what the layer computes from its key and
            # weights alone (dropout masks) is computed here, not at the start of the
            # backward pass nor shared with the forward pass (see fastmath.scheduling).
            w, key = tied((weights[i], keys[i]), zero_from(stack))
            x, (x_ct, weights_ct[i]) = layer.reverse_and_grad(
                pack(stack[:k]), pack(stack_ct[:k]), w, state[i], new_state[i], rng=key)
            stack = _inputs_list(layer, x) + stack[k:]
            stack_ct = _inputs_list(layer, x_ct) + stack_ct[k:]
            # Without the barrier XLA may run every reconstruction first (they do not
            # depend on the gradients) and keep all activations alive at once.
            stack, stack_ct = jax.lax.optimization_barrier((stack, stack_ct))
        return pack(stack), (pack(stack_ct), tuple(weights_ct))


# --------------------------------------------------------------------------
# ReversibleHalfResidual
# --------------------------------------------------------------------------


class ReversibleHalfResidual(ReversibleLayer):
    """Half of a RevNet residual: adds ``f(context)`` to the top item.

      - inputs: accumulator, *context
      - outputs: accumulator + f(context), *context

    ``f`` is ``Serial(*residual_layers)`` followed by ``attention_layer`` (if
    given), applied to the context on the stack; its first output is the
    residual, any others are dropped. Weights and state are
    ``(weights_of_Serial(residual_layers), weights_of_attention_layer)`` (the
    second only with an attention layer), as in Trax. ``reverse`` subtracts the
    recomputed residual.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> layer = ReversibleHalfResidual(tl.Fn('Double', lambda x: 2 * x))
    >>> [v.tolist() for v in layer((np.array([1.0]), np.array([3.0])))]
    [[7.0], [3.0]]
    """

    def __init__(self, *residual_layers: Any, attention_layer: Layer | None = None,
                 name: str | None = None):
        compute = Serial(*residual_layers)
        sublayers = (compute,) if attention_layer is None else (compute, attention_layer)
        running_total = running_max = 0
        for layer in sublayers:
            running_total += layer.n_in
            running_max = max(running_max, running_total)
            running_total -= layer.n_out
        super().__init__(n_in=running_max + 1, n_out=running_max + 1, name=name,
                         sublayers=sublayers)

    def init_in_pass(self, input_signature, rng, ctx):
        stack = as_stack(input_signature)[1:]
        weights, states = [], []
        for i, (layer, key) in enumerate(zip(self.sublayers,
                                             fastmath_random.init_rng_split(rng, 2))):
            k = layer.n_in
            inputs = pack(stack[:k])
            w, s = init_child(self, i, layer, inputs, key, ctx)
            weights.append(w)
            states.append(s)
            if i + 1 < len(self.sublayers):
                outputs = layer.output_signature(inputs)
                stack = _outputs_list(layer, outputs) + stack[k:]
        return tuple(weights), tuple(states)

    def _residual(self, context, weights, state, rng):
        """``f(context)`` and the new state of the sublayers."""
        stack = list(context)
        new_states = []
        for i, (layer, key) in enumerate(zip(self.sublayers, _child_keys(rng, 2))):
            k = layer.n_in
            outputs, s = _apply_alone(self, i, layer, pack(stack[:k]), weights[i], state[i], key)
            stack = _outputs_list(layer, outputs) + stack[k:]
            new_states.append(s)
        return stack[0], tuple(new_states)

    def forward_in_pass(self, xs, weights, state, rng, ctx):
        del ctx
        check_sublayer_entries(self, weights, "weights")
        check_sublayer_entries(self, state, "state")
        accumulator, *context = as_stack(xs)
        residual, new_state = self._residual(context, weights, state, rng)
        _check_residual(self, accumulator, residual)
        return pack([accumulator + residual, *context]), new_state

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del new_state
        accumulator, *context = as_stack(output)
        residual, _ = self._residual(context, weights, state, rng)
        return pack([accumulator - residual, *context])

    def reverse_and_grad(self, output, grad, weights=(), state=(), new_state=(), rng=None):
        del new_state
        accumulator, *context = as_stack(output)
        accumulator_ct, *context_ct = as_stack(grad)

        def residual_of(context, weights):
            return self._residual(context, weights, state, rng)[0]

        residual, vjp = jax.vjp(residual_of, tuple(context), weights)
        f_context_ct, weights_ct = vjp(cotangent_like(residual, accumulator_ct))
        context_ct = [_add_cotangents(a, b) for a, b in zip(context_ct, f_context_ct)]
        return (pack([accumulator - residual, *context]),
                (pack([accumulator_ct, *context_ct]), weights_ct))


def _check_residual(layer: Layer, accumulator: Any, residual: Any) -> None:
    if jnp.shape(accumulator) != jnp.shape(residual):
        raise ValueError(
            f"{layer.name_with_arity}: the residual has shape {tuple(jnp.shape(residual))} but "
            f"the accumulator it is added to has shape {tuple(jnp.shape(accumulator))}; the "
            f"residual layers must keep the width of the stack's top item.")
