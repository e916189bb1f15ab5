"""Control-flow combinators: scanning, branching on a value, caching, folding axes.

``Scan`` (``lax.scan`` of a layer, threading carries), ``Cond`` (``lax.cond``
between two layers), ``Cache`` (run once, reuse the result: predict-mode
encoder outputs) and ``BatchLeadingAxes`` (fold leading axes into one batch
axis around a layer). Each keeps Trax's weight and state layout. Re-exported by
``retrax.layers.combinators`` and as ``tl.X``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from retrax import shapes
from retrax.fastmath import random as fastmath_random
from retrax.fastmath.random import init_rng_split, split_rng
from retrax.layers import base
from retrax.layers.base import Layer
from retrax.layers.core import check_mode
from retrax.layers.pass_context import Pass, apply_child, init_child, new_pass
from retrax.layers.stack import as_stack, pack
from retrax.layers.stack_combinators import Select, Serial, check_sublayer_entries
from retrax.layers.trees import (
    assign_child_state,
    check_per_sublayer,
    child_state,
    is_weights_marker,
    tree_mismatch,
)

__all__ = ["Scan", "Cond", "Cache", "BatchLeadingAxes"]


def _check_pair(layer: Layer, state: Any) -> None:
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        got = f"{len(state)} entries" if isinstance(state, (tuple, list)) else type(state).__name__
        raise ValueError(
            f"{layer.name_with_arity}: its state must be a pair (Trax's layout); got {got}. "
            f"Pass the state returned by init()."
        )


class Scan(Layer):
    """Scans ``layer`` over ``axis`` of its non-carry inputs, threading carries.

    ``layer`` maps ``(x_1..x_N, c_1..c_M) -> (y_1..y_K, c'_1..c'_M)`` with
    ``M = n_carry``; Scan returns the ys stacked along ``axis``, then the final
    carries. In ``'predict'`` mode the final carries are kept in the state and
    used instead of the input carries on the next call.

    A layer may also compute the whole scan itself, faster than step by step:
    if it has a method ``scan_sequence(xs, carries, weights, state)`` (``xs``
    its scanned inputs with the scanned axis first, ``carries`` the initial
    carries, both lists), Scan calls it and uses what it returns,
    ``(ys, final_carries, new_state)`` (``ys`` with the scanned axis first),
    unless it returns None (inputs it does not handle: Scan then runs the
    layer step by step, which also reports bad inputs). It must compute what
    the steps would, for a layer that draws no random numbers. ``LSTMCell``,
    ``GRUCell`` and ``RNNLM``'s multi-layer cell have one. ``remat=True``
    always runs step by step.

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
        self._mode = check_mode("Scan", mode)
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
            # x may be a retrax ShapeDtype (the model's input signature) or a
            # jax.ShapeDtypeStruct (what an earlier layer of a combinator gives).
            sliced.append(shapes.ShapeDtype(x.shape[:a] + x.shape[a + 1:], x.dtype))
        w, s = init_child(self, 0, self._sublayers[0], pack(sliced + carries), rng, ctx)
        return (w,), (s, ())

    def _check_saved_carry(self, saved: Any, given: list[Any]) -> None:
        """In predict mode the saved carries replace the given ones: same shapes needed."""
        for s, g in zip(saved, given):
            if tuple(s.shape) != tuple(g.shape):
                raise ValueError(
                    f"{self.name_with_arity} in 'predict' mode continues from the carry of "
                    f"its previous call, of shape {tuple(s.shape)}, but this call's carry has "
                    f"shape {tuple(g.shape)} (a new batch size?). Start from a fresh state "
                    f"(re-run init, or pass the state init returned) for new sequences."
                )

    def forward_in_pass(self, xs: Any, weights: Any, state: Any, rng: Any, ctx: Pass):
        layer = self._sublayers[0]
        check_sublayer_entries(self, weights, "weights")
        _check_pair(self, state)
        w = weights[0]
        layer_state, saved_carry = state
        # A layer scanned here and applied earlier in the pass (shared) holds the
        # shared-state marker: the scan carries its state itself, the marker stays.
        shared_state = base.is_state_marker(layer_state)
        if shared_state:
            layer_state = ctx.state.get(id(layer), base.EMPTY_STATE)
        items, carries = self._split_inputs(xs)
        if self._mode == "predict" and saved_carry != ():
            self._check_saved_carry(saved_carry, carries)
            carries = list(saved_carry)
        moved = tuple(jnp.moveaxis(x, self._axis, 0) for x in items)
        whole = self._scan_whole(moved, carries, w, layer_state, ctx)
        if whole is not None:
            ys, carry, layer_state = whole
            return self._finish(ys, carry, layer_state, shared_state, ctx)
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
        return self._finish(ys, carry, layer_state, shared_state, ctx)

    def _scan_whole(self, moved: tuple, carries: list, weights: Any, state: Any,
                    ctx: Pass) -> tuple | None:
        """The layer's own ``scan_sequence`` result, or None to run it step by step."""
        layer = self._sublayers[0]
        scan_sequence = getattr(layer, "scan_sequence", None)
        if (scan_sequence is None or self._remat or not moved
                or base.is_weights_marker(weights)):
            return None
        result = scan_sequence(list(moved), list(carries), weights, state)
        if result is None:
            return None
        ys, carry, new_state = result
        if len(ys) != self._n_out - self._n_carry or len(carry) != self._n_carry:
            raise ValueError(
                f"Scan: {layer.name_with_arity}.scan_sequence returned {len(ys)} outputs and "
                f"{len(carry)} carries; expected {self._n_out - self._n_carry} and "
                f"{self._n_carry}.")
        _register_weights(layer, weights, ctx)  # as applying it would: for shared layers
        return list(ys), tuple(carry), new_state

    def _finish(self, ys: Any, carry: tuple, layer_state: Any, shared_state: bool,
                ctx: Pass) -> tuple[Any, Any]:
        if shared_state:
            ctx.state[id(self._sublayers[0])] = layer_state
            layer_state = base.GET_STATE_FROM_CACHE
        ys = [jnp.moveaxis(y, 0, self._axis) for y in ys]
        new_saved = tuple(carry) if self._mode == "predict" else ()
        return pack(ys + list(carry)), (layer_state, new_saved)


def _register_weights(layer: Layer, weights: Any, ctx: Pass) -> None:
    """Records ``weights`` for ``layer`` and its sublayers in ``ctx``, as applying would.

    A layer shared with one that runs later (whose later occurrence holds only
    the shared-weights marker) then finds them as if it had been applied.
    """
    if base.is_weights_marker(weights):
        return  # Shared with an earlier occurrence, whose weights are recorded.
    ctx.weights.setdefault(id(layer), weights)
    # A combinator's weights hold one entry per sublayer (see Layer.init).
    for sub, sub_weights in zip(layer.sublayers, weights if layer.sublayers else ()):
        _register_weights(sub, sub_weights, ctx)


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

    @property
    def weights(self) -> Any:
        """``(cond's weights, true's weights, false's weights)``."""
        return Layer.weights.fget(self)

    @weights.setter
    def weights(self, weights: Any) -> None:
        # Trax's convention: ``()`` for a one-layer branch (no sublayers) is what a layer
        # never initialized holds; assigning it empties that branch (a later init
        # initializes it again; running before that raises, naming the branch).
        if is_weights_marker(weights) or not self._emptied(weights):
            Layer.weights.fset(self, weights)
            return
        emptied = self._emptied(weights)
        if self.initialized:
            for i, (had, given) in enumerate(zip(self.weights, weights)):
                problem = None if i in emptied else tree_mismatch(had, given, f"[{i}]")
                if problem:
                    raise ValueError(
                        f"{self.name_with_arity}: the weights given do not match the layer's "
                        f"weights: {problem}. Use weights from init() or from a checkpoint of "
                        f"the same model configuration.")
        self._assign_weights(tuple(weights), set())

    def _emptied(self, weights: Any) -> list[int]:
        """The branches that ``weights`` empties (``()`` for a leaf that has weights)."""
        check_per_sublayer(self, weights, "weights")
        return [i for i, (layer, w) in enumerate(zip(self._sublayers, weights))
                if isinstance(w, tuple) and not w and not layer.sublayers
                and not (isinstance(layer.weights, tuple) and not layer.weights)]

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
        check_sublayer_entries(self, weights, "weights")
        check_sublayer_entries(self, state, "state")
        given = len(xs) if isinstance(xs, (tuple, list)) else 1
        if given != self._n_in:  # As Trax: a Cond takes exactly its inputs.
            raise ValueError(
                f"{self.name_with_arity} takes exactly {self._n_in} inputs (cond "
                f"{cond.n_in}, branches {true.n_in}); got {given}.")
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
        if self._n_out == 1 and isinstance(y, (tuple, list)) and len(y) == 1:
            y = y[0]  # As Trax: a branch's one output given as [y] is y on the stack.
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
        check_sublayer_entries(self, weights, "weights")
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
        _register_weights(self._sublayers[0], weights[0], ctx)
        return cached, state


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
        if not isinstance(x, (jax.Array, np.ndarray)):  # a signature (either kind)
            lead = x.shape[: len(x.shape) - self._keep]
            n = 1
            for d in lead:
                n *= d
            return shapes.ShapeDtype((n,) + tuple(x.shape[len(x.shape) - self._keep:]), x.dtype)
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
