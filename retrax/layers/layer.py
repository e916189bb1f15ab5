"""The ``Layer`` class: Trax's data-stack layer on pure JAX functions.

The contract is described in :mod:`retrax.layers.base`, the namespace users and
combinators import it from (``tl.Layer``, ``retrax.layers.base.Layer``). This
module holds the class itself, ``with_mode`` (a shared-weight copy in another
mode) and ``walk_layers``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from retrax.fastmath import random as fastmath_random
from retrax.fastmath.backend import check_jax_backend
from retrax.layers import file_io
from retrax.layers.errors import LayerError, find_caller
from retrax.layers.pass_context import (
    DerivedKey,
    Pass,
    current_or_new_pass,
    current_pass,
    new_pass,
    surface_causes,
)
from retrax.layers.stack import outputs_as_list
from retrax.layers.trees import (
    EMPTY_STATE,
    EMPTY_WEIGHTS,
    GET_STATE_FROM_CACHE,
    GET_WEIGHTS_FROM_CACHE,
    abstract,
    assign_child_state,
    check_per_sublayer,
    child_state,
    flatten_weights_and_state,
    is_state_marker,
    is_weights_marker,
    signature_or_none,
    to_shape_dtype,
    tree_mismatch,
)

__all__ = ["Layer", "with_mode", "walk_layers"]

_DEFAULT_SEED = 0

# Protocol hooks that had private names before; a subclass still defining one
# would silently not be called, so defining one is refused.
_RENAMED_HOOKS = {
    "_init_tree": "init_in_pass",
    "_forward_pure": "forward_in_pass",
    "_state_tree": "state_tree",
    "_assign_state": "assign_state_tree",
}


class Layer:
    """Base class for layers: ``n_in`` inputs from the stack, ``n_out`` outputs.

    Args:
      n_in: number of inputs taken from the top of the stack (default 1).
      n_out: number of outputs pushed onto the stack (default 1).
      name: the name shown when printing; defaults to the class name.
      sublayers_to_print: children to show when printing, if not ``sublayers``.
      sublayers: a combinator's children, in order (keyword-only).

    Subclass it Trax's way: override ``forward(self, x)`` (reading
    ``self.weights``, ``self.state``, ``self.rng``) and, for layers with
    weights, ``init_weights_and_state(self, input_signature)``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> class Scale(tl.Layer):
    ...     def init_weights_and_state(self, input_signature):
    ...         self.weights = np.full(input_signature.shape[-1:], 2.0, np.float32)
    ...     def forward(self, x):
    ...         return x * self.weights
    >>> layer = Scale()
    >>> weights, state = layer.init(shapes.ShapeDtype((1, 3)))
    >>> layer(np.ones((1, 3))).tolist()
    [[2.0, 2.0, 2.0]]
    >>> y, state = layer.pure_fn(np.ones((1, 3)), np.zeros(3), state, None)
    >>> y.tolist()
    [[0.0, 0.0, 0.0]]
    """

    _SETTABLE = ("weights", "state", "rng")

    def __init__(self, n_in: int = 1, n_out: int = 1, name: str | None = None,
                 sublayers_to_print: Any = None, *, sublayers: Sequence[Layer] = ()):
        for arg, value in (("n_in", n_in), ("n_out", n_out)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(
                    f"{name or type(self).__name__}: {arg} must be a non-negative int; "
                    f"got {value!r}."
                )
        self._n_in = int(n_in)
        self._n_out = int(n_out)
        self._name = type(self).__name__ if name is None else name
        self._sublayers_to_print = sublayers_to_print
        self._sublayers: tuple[Layer, ...] = tuple(sublayers)
        self._weights: Any = EMPTY_WEIGHTS
        self._state: Any = EMPTY_STATE
        self._rng: Any = None
        self._initialized = False
        # True for a combinator built inside another one and not shown by
        # print (Branch's Parallel); error paths then skip it.
        self._hidden_in_path = False
        # True while this layer's own init_weights_and_state/forward runs: then
        # self.weights/self.state read and write the installed values only
        # (also for a Trax-style layer that has sublayers), never the sublayers.
        self._in_hook = False
        self._caller = find_caller()
        # 'train', 'eval' or 'predict' for a layer that behaves by mode (its
        # __init__ sets it); None for one that does not. Read it as ``mode``.
        self._mode: str | None = getattr(self, "_mode", None)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        renamed = [f"{old} to {new}" for old, new in _RENAMED_HOOKS.items() if old in vars(cls)]
        if renamed:
            raise TypeError(f"{cls.__name__} overrides layer hooks that are public now: rename "
                            f"{', '.join(renamed)} (see docs/writing_a_combinator.md).")

    def __setattr__(self, attr: str, value: Any) -> None:
        if attr.startswith("_") or attr in self._SETTABLE:
            object.__setattr__(self, attr, value)
        elif attr == "mode":
            raise AttributeError(
                f"{getattr(self, '_name', type(self).__name__)}.mode is read-only. For a model "
                f"in another mode sharing these weights use tl.with_mode(model, {value!r}).")
        else:
            raise ValueError(
                f"Layer {getattr(self, '_name', type(self).__name__)} allows setting only "
                f"{self._SETTABLE} as public attributes, not {attr!r}. Store other values "
                f"under a name starting with '_'."
            )

    @property
    def name(self) -> str:
        return self._name

    @property
    def n_in(self) -> int:
        return self._n_in

    @property
    def n_out(self) -> int:
        return self._n_out

    @property
    def sublayers(self) -> tuple[Layer, ...]:
        return self._sublayers

    @property
    def mode(self) -> str | None:
        """``'train'``, ``'eval'``, ``'predict'``, or None for a layer without modes.

        A combinator has the mode of the layers inside it; where they differ,
        ``'predict'`` wins (a predict model keeps parts that never run
        stepwise in ``'eval'``), then ``'train'``. Read-only: see ``with_mode``.
        """
        if self._mode is not None:
            return self._mode
        inner = {m for m in (sub.mode for sub in self._sublayers) if m is not None}
        return next((m for m in ("predict", "train", "eval") if m in inner), None)

    @property
    def name_with_arity(self) -> str:
        """The printed name: ``name`` plus ``_in{n}``/``_out{n}`` where not 1."""
        s = self._name
        if self._n_in != 1:
            s += f"_in{self._n_in}"
        if self._n_out != 1:
            s += f"_out{self._n_out}"
        return s

    @property
    def has_backward(self) -> bool:
        """Override to return True when the layer defines ``backward`` (a custom gradient)."""
        return False

    def backward(self, inputs: Any, output: Any, grad: Any, weights: Any, state: Any,
                 new_state: Any, rng: Any) -> tuple[Any, Any]:
        """Override, with ``has_backward``, to give this layer's gradient yourself (Trax's hook).

        ``grad`` is the gradient of the loss with respect to ``output`` (the
        result of ``forward(inputs)``); return ``(inputs_grad, weights_grad)``,
        shaped like ``inputs`` and ``weights``. ``state``/``new_state`` are the
        state before and after the forward pass, ``rng`` its key (or None).
        Differentiating through the layer then uses exactly this gradient
        (``jax.custom_vjp``); the state and key get none.
        """
        raise NotImplementedError(
            f"{type(self).__name__}.has_backward is True but it does not define "
            f"backward(self, inputs, output, grad, weights, state, new_state, rng).")

    @property
    def sublayers_to_print(self) -> Any:
        """The children ``print`` shows, or None when they are ``sublayers``."""
        return self._sublayers_to_print

    @property
    def initialized(self) -> bool:
        """True once weights were assigned (by ``init``, ``init_from_file`` or ``weights =``)."""
        return self._initialized

    @property
    def caller(self) -> tuple[str, int]:
        """``(filename, lineno)`` where the layer was created (named by ``LayerError``)."""
        return self._caller

    @property
    def hidden_in_path(self) -> bool:
        """True for a combinator that error paths skip (see ``hide_in_path``)."""
        return self._hidden_in_path

    def hide_in_path(self) -> Layer:
        """Makes error paths and weight names skip this inner part of a combinator.

        ``Branch`` hides its ``Parallel``: paths read ``Branch_out2[1] > Dense_4``.
        """
        self._hidden_in_path = True
        return self

    def __repr__(self) -> str:
        children = self._sublayers if self._sublayers_to_print is None else self._sublayers_to_print
        parts = [s for s in (str(c) for c in children) if s]
        if not parts:
            return self.name_with_arity
        body = "\n".join(parts).replace("\n", "\n  ")
        return f"{self.name_with_arity}[\n  {body}\n]"

    # -- weights, state, rng --------------------------------------------------

    @property
    def weights(self) -> Any:
        if self._in_hook:
            return self._weights
        return self._weights_tree(set())

    @weights.setter
    def weights(self, weights: Any) -> None:
        if self._in_hook:
            self._weights = weights
            return
        if is_weights_marker(weights):
            return
        if self._sublayers:
            check_per_sublayer(self, weights, "weights")
        problem = self._initialized and tree_mismatch(self.weights, weights)
        if problem:
            raise ValueError(
                f"{self.name_with_arity}: the weights given do not match the layer's "
                f"weights: {problem}. Use weights from init() or from a checkpoint of the "
                f"same model configuration."
            )
        self._assign_weights(weights, set())

    @property
    def state(self) -> Any:
        if self._in_hook:
            return self._state
        return self.state_tree(set())

    @state.setter
    def state(self, state: Any) -> None:
        if self._in_hook:
            self._state = state
            return
        if is_state_marker(state):
            return
        self.assign_state_tree(state, set())

    @property
    def rng(self) -> Any:
        rng = self._rng
        if rng is None:
            return fastmath_random.get_prng(_DEFAULT_SEED)
        if isinstance(rng, DerivedKey):
            return rng.get()
        return rng

    @rng.setter
    def rng(self, rng: Any) -> None:
        self._rng = rng

    @property
    def has_rng(self) -> bool:
        """True when a key is installed (given to ``init``/``pure_fn`` or assigned);
        without one ``rng`` is the seed-0 key, and train-mode dropout refuses to run."""
        return self._rng is not None

    def _weights_tree(self, seen: set[int]) -> Any:
        if not self._sublayers:
            return self._weights
        out = []
        for layer in self._sublayers:
            if id(layer) in seen:
                out.append(GET_WEIGHTS_FROM_CACHE)
            else:
                seen.add(id(layer))
                out.append(layer._weights_tree(seen))
        return tuple(out)

    def state_tree(self, seen: set[int]) -> Any:
        """Override for a state layout of your own: the stored state as one tree.

        This is what ``layer.state`` returns. The default is the layer's own
        state for a leaf and a tuple of ``child_state(child, seen)`` for a
        combinator; ``seen`` holds the ids of layers already visited, so a
        shared layer's state appears once (later occurrences get the marker).
        ``Scan`` and ``Cache`` override it (and ``assign_state_tree``) to keep a
        pair: their own value and their child's state.
        """
        if not self._sublayers:
            return self._state
        return tuple(child_state(layer, seen) for layer in self._sublayers)

    def _assign_weights(self, weights: Any, seen: set[int]) -> None:
        self._initialized = True
        if not self._sublayers:
            self._weights = weights
            return
        check_per_sublayer(self, weights, "weights")
        for layer, w in zip(self._sublayers, weights):
            if is_weights_marker(w) or id(layer) in seen:
                continue
            seen.add(id(layer))
            layer._assign_weights(w, seen)

    def assign_state_tree(self, state: Any, seen: set[int]) -> None:
        """Stores ``state`` on this layer and its sublayers: the inverse of ``state_tree``.

        Override it together with ``state_tree``; store each child's part with
        ``assign_child_state(child, part, seen)``.
        """
        if not self._sublayers:
            self._state = state
            return
        check_per_sublayer(self, state, "state")
        for layer, s in zip(self._sublayers, state):
            assign_child_state(layer, s, seen)

    # -- init ---------------------------------------------------------------

    def init_weights_and_state(self, input_signature: Any) -> None:
        """Override to assign ``self.weights`` / ``self.state`` (use ``self.rng``)."""

    @surface_causes
    def init(self, input_signature: Any, rng: Any = None, use_cache: bool = False):
        """Initializes weights and state for inputs of ``input_signature``.

        Args:
          input_signature: a ``ShapeDtype`` (or tuple of them, one per input).
          rng: a PRNG key; defaults to the layer's key (seed 0), so calling
            ``init`` twice gives the same weights.
          use_cache: inside a combinator's init pass, return cache markers for a
            layer already initialized in this pass (weight sharing).

        Returns:
          ``(weights, state)``; they are also stored on the layer.
        """
        check_jax_backend(f"{self.name_with_arity}.init")
        if rng is None:
            rng = self.rng
        else:
            self._rng = rng
        ctx = current_pass()
        if ctx is not None:  # Inside another layer's init: part of that pass.
            if use_cache and id(self) in ctx.initialized:
                return GET_WEIGHTS_FROM_CACHE, GET_STATE_FROM_CACHE
            weights, state = ctx.init_layer(self, input_signature, rng)
        else:
            weights, state = _init_alone(self, input_signature, rng)
            # Initializers may return NumPy arrays; hand out device arrays.
            weights, state = numpy_leaves_to_device((weights, state))
        self._assign_weights(weights, set())
        self.assign_state_tree(state, set())
        return weights, state

    def init_in_pass(self, input_signature: Any, rng: Any, ctx: Pass) -> tuple[Any, Any]:
        """Override in a combinator: returns ``(weights, state)`` for ``input_signature``.

        Pure: compute and return, store nothing. Initialize child ``i`` with
        ``init_child(self, i, child, signature_i, rng_i, ctx)`` (keys from
        ``init_rng_split(rng, n)``) and return one entry per sublayer, unless
        ``state_tree`` says otherwise. ``ctx.init_layer`` calls it (and checks
        the inputs, resolves sharing, names this layer in errors). The default
        runs the Trax-style ``init_weights_and_state`` with ``self.weights``,
        ``self.state`` and ``self.rng`` installed for the call.
        """
        with self._fields_installed(EMPTY_WEIGHTS, EMPTY_STATE, rng):
            self.init_weights_and_state(input_signature)
            return self._weights, self._state

    @contextlib.contextmanager
    def _fields_installed(self, weights: Any, state: Any, rng: Any) -> Iterator[None]:
        """Installs the pass's values for a Trax-style hook; puts the layer's back after."""
        saved = (self._weights, self._state, self._rng, self._in_hook)
        self._weights, self._state, self._rng, self._in_hook = weights, state, rng, True
        try:
            yield
        finally:
            self._weights, self._state, self._rng, self._in_hook = saved

    @surface_causes
    def weights_and_state_signature(self, input_signature: Any,
                                    unsafe: bool = False) -> tuple[Any, Any]:
        """Shapes of ``init``'s result, computed abstractly (no arrays made).

        The layer is never modified (``unsafe`` is accepted for Trax
        compatibility and ignored).
        """
        del unsafe
        rng = self.rng
        return to_shape_dtype(jax.eval_shape(lambda: _init_alone(self, input_signature, rng)))

    @surface_causes
    def output_signature(self, input_signature: Any) -> Any:
        """Shapes of the outputs for inputs of ``input_signature``."""
        rng = self.rng
        use_stored = self._initialized

        def f(x):
            with new_pass() as ctx:
                w, s = ((self.weights, self.state) if use_stored
                        else ctx.init_layer(self, input_signature, rng))
                return ctx.apply_layer(self, x, w, s, rng)[0]

        return to_shape_dtype(jax.eval_shape(f, abstract(input_signature)))

    # -- apply ----------------------------------------------------------------

    def forward(self, inputs: Any) -> Any:
        """Override: computes outputs from ``inputs`` using ``self.weights``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement forward(self, inputs)."
        )

    @surface_causes
    def pure_fn(self, x: Any, weights: Any, state: Any, rng: Any, use_cache: bool = False):
        """Pure apply: returns ``(outputs, new_state)``; nothing on the layer changes."""
        del use_cache  # Shared weights are resolved through the pass context.
        check_jax_backend(f"{self.name_with_arity}.pure_fn")
        with current_or_new_pass() as ctx:
            return ctx.apply_layer(self, x, weights, state, rng)

    def forward_in_pass(self, x: Any, weights: Any, state: Any, rng: Any,
                        ctx: Pass) -> tuple[Any, Any]:
        """Override in a combinator: returns ``(outputs, new_state)`` for inputs ``x``.

        Pure: ``weights`` and ``state`` are this layer's trees as ``init``
        made them. Run child ``i`` with ``apply_child(self, i, child, x_i,
        weights[i], state[i], rng_i, ctx)``, keys from ``split_rng(rng, n)``
        (``rng`` may be None: a deterministic call). ``ctx.apply_layer``
        calls it (and checks the inputs, resolves sharing, names this layer in
        errors). The default runs the Trax-style ``forward`` with
        ``self.weights``, ``self.state`` and ``self.rng`` installed for the call.
        """
        # Each leaf of a pass gets its own key, derived only if it reads it.
        key = None if rng is None else DerivedKey(rng, ctx.next_key_index())
        if self.has_backward:
            outputs, new_state = self._forward_with_backward(
                x, weights, state, None if key is None else key.get())
        else:
            with self._fields_installed(weights, state, key):
                outputs = self.forward(x)
                new_state = self._state
        outputs_as_list(self, outputs)
        return outputs, new_state

    def _forward_with_backward(self, x: Any, weights: Any, state: Any,
                               rng: Any) -> tuple[Any, Any]:
        """``forward`` whose gradient is the layer's own ``backward`` (``jax.custom_vjp``)."""

        def run(x, weights, state, rng):
            with self._fields_installed(weights, state, rng):
                return self.forward(x), self._state

        def run_fwd(x, weights, state, rng):
            outputs, new_state = run(x, weights, state, rng)
            return (outputs, new_state), (x, weights, state, rng, outputs, new_state)

        def run_bwd(saved, grads):
            x, weights, state, rng, outputs, new_state = saved
            given = self.backward(x, outputs, grads[0], weights, state, new_state, rng)
            if not isinstance(given, (tuple, list)) or len(given) != 2:
                raise ValueError(
                    f"{self.name_with_arity}.backward must return (inputs_grad, weights_grad); "
                    f"got {type(given).__name__}"
                    f"{f' of length {len(given)}' if isinstance(given, (tuple, list)) else ''}.")
            for what, value, like in (("inputs_grad", given[0], x),
                                      ("weights_grad", given[1], weights)):
                if jax.tree_util.tree_structure(value) != jax.tree_util.tree_structure(like):
                    raise ValueError(
                        f"{self.name_with_arity}.backward returned a {what} whose structure "
                        f"{jax.tree_util.tree_structure(value)} differs from that of the "
                        f"{what.split('_')[0]}, {jax.tree_util.tree_structure(like)}; return "
                        f"one gradient per array, shaped like it.")
            return given[0], given[1], None, None

        custom = jax.custom_vjp(run)
        custom.defvjp(run_fwd, run_bwd)
        return custom(x, weights, state, rng)

    def __call__(self, x: Any, weights: Any = None, state: Any = None, rng: Any = None) -> Any:
        """Runs the layer on ``x`` with its stored weights (for tests and notebooks)."""
        if weights is None:
            if not self._initialized:
                self._init_if_weightless(x)
            weights = self.weights
        if state is not None:
            self.state = state
        state = self.state
        if rng is None:
            rng = self.rng
        outputs, new_state = self.pure_fn(x, weights, state, rng)
        self.assign_state_tree(new_state, set())
        return outputs

    def _init_if_weightless(self, x: Any) -> None:
        sig = signature_or_none(x)
        w_sig, s_sig = self.weights_and_state_signature(sig)
        if self._sublayers and tree_mismatch(w_sig, self.weights) is None:
            # A combinator built around layers that all have their weights (Trax allows
            # this): keep them; a state they lack starts fresh.
            self._initialized = True
            if tree_mismatch(s_sig, self.state) is not None:
                state = _init_alone(self, sig, self.rng)[1]
                self.assign_state_tree(numpy_leaves_to_device(state), set())
            return
        if flatten_weights_and_state(w_sig, ())[0]:
            raise LayerError(
                self, "__call__", x,
                f"{self.name_with_arity} has weights that are not initialized yet. "
                f"Call layer.init(trax.shapes.signature(x)) (or init_from_file) first, "
                f"or pass weights=... explicitly.",
            )
        self.init(sig)

    # -- checkpoints (retrax.checkpoints registers the implementation) --------

    def save_to_file(self, file_name: str, weights_only: bool = False, input_signature: Any = None):
        """Saves weights (and state unless ``weights_only``) to ``file_name``.

        Done by ``retrax.checkpoints.save_layer``, registered in ``file_io``.
        """
        return file_io.save(self, file_name, weights_only, input_signature)

    def init_from_file(self, file_name: str, weights_only: bool = False, input_signature: Any = None):
        """Loads weights (and state unless ``weights_only``) from a checkpoint file.

        Reads retrax's own format and Trax's ``.pkl.gz`` layouts; done by
        ``retrax.checkpoints.load_layer``, registered in ``file_io``.
        """
        return file_io.load(self, file_name, weights_only, input_signature)


_MODES = ("train", "eval", "predict", "viz")  # as tl.MODES


def with_mode(model: Layer, mode: str) -> Layer:
    """A copy of ``model`` whose layers run in ``mode``, sharing its weight arrays.

    Switches between ``'train'`` and ``'eval'`` (dropout, random position
    offsets, ...: every layer decides these when it runs). A ``'predict'``
    model has caches in its state and may be built differently, so switching
    to or from it is refused: build the model with ``mode='predict'`` and
    load the weights instead. Shared layers stay shared in the copy.

    >>> from retrax import layers as tl
    >>> model = tl.Serial(tl.Dense(2), tl.Dropout(0.5))
    >>> tl.with_mode(model, 'eval').mode, model.mode
    ('eval', 'train')
    """
    if mode not in _MODES:
        raise ValueError(f"with_mode: mode must be one of {_MODES}; got {mode!r}.")
    moded = [lyr for lyr in walk_layers(model) if lyr._mode is not None]
    if any((lyr._mode == "predict") != (mode == "predict") for lyr in moded):
        raise ValueError(
            f"with_mode: cannot switch {model.name_with_arity} between {model.mode!r} and "
            f"{mode!r}: 'predict' models keep caches in their state and may be built "
            f"differently. Build the model with mode='predict' and load the weights "
            f"(e.g. init_from_file(..., weights_only=True)).")
    # Arrays are immutable: the copy shares them instead of copying every weight.
    memo = {id(leaf): leaf for lyr in walk_layers(model)
            for leaf in jax.tree_util.tree_leaves((lyr._weights, lyr._state))}
    clone = copy.deepcopy(model, memo)
    for lyr in walk_layers(clone):
        if lyr._mode is not None:
            lyr._mode = mode
    return clone


def walk_layers(layer: Layer) -> Iterator[Layer]:
    """``layer`` and every layer inside it, each once, in the order ``print`` lists them."""
    seen: set[int] = set()
    todo = [layer]
    while todo:
        lyr = todo.pop()
        if id(lyr) not in seen:
            seen.add(id(lyr))
            yield lyr
            todo.extend(reversed(lyr.sublayers))


def _init_alone(layer: Layer, input_signature: Any, rng: Any) -> tuple[Any, Any]:
    """``layer``'s ``(weights, state)`` from an init pass of its own; nothing is stored."""
    with new_pass() as ctx:
        return ctx.init_layer(layer, input_signature, rng)


def numpy_leaves_to_device(tree: Any) -> Any:
    """``tree`` with its NumPy leaves moved to the device in one ``jax.device_put``.

    Tuples, lists, dicts and every other leaf (device arrays, cache markers)
    stay as they are. Unlike ``jnp.asarray`` per leaf, which compiles a small
    program for each new shape, a transfer compiles nothing.

    >>> w, (s,) = numpy_leaves_to_device((np.ones(2, np.float32), (3,)))
    >>> type(w).__name__, w.tolist(), s
    ('ArrayImpl', [1.0, 1.0], 3)
    """
    found: list[np.ndarray] = []

    def collect(t: Any) -> None:
        if is_weights_marker(t) or is_state_marker(t):
            return
        if isinstance(t, (tuple, list)):
            for x in t:
                collect(x)
        elif isinstance(t, dict):
            for x in t.values():
                collect(x)
        elif isinstance(t, np.ndarray):
            found.append(t)

    collect(tree)
    if not found:
        return tree
    moved = iter(jax.device_put(found))

    def rebuild(t: Any) -> Any:
        if is_weights_marker(t) or is_state_marker(t):
            return t
        if isinstance(t, tuple):
            return tuple(rebuild(x) for x in t)
        if isinstance(t, list):
            return [rebuild(x) for x in t]
        if isinstance(t, dict):
            return {k: rebuild(v) for k, v in t.items()}
        return next(moved) if isinstance(t, np.ndarray) else t

    return rebuild(tree)
