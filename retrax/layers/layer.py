"""The ``Layer`` class: Trax's data-stack layer on pure JAX functions.

The contract is described in :mod:`retrax.layers.base`, the namespace users and
combinators import it from (``tl.Layer``, ``retrax.layers.base.Layer``). This
module holds the class itself: construction, printing, ``init``, the pure
apply (``pure_fn``) and the Trax-style hooks around them. Its parts live
below it: ``layer_storage`` (stored weights, state and key, as trees),
``custom_gradient`` (``has_backward``/``backward``) and ``layer_walks``
(``walk_layers``; ``with_mode``, a shared-weight copy in another mode), whose
names stay importable from here.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> layer = tl.Fn('AddOne', lambda x: x + 1)
>>> layer.n_in, layer.n_out, layer.initialized
(1, 1, False)
>>> layer(np.zeros(2)).tolist(), layer.initialized
([1.0, 1.0], True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from retrax.fastmath.backend import check_jax_backend
from retrax.layers import file_io
from retrax.layers.custom_gradient import run_with_own_backward
from retrax.layers.errors import LayerError, find_caller
from retrax.layers.layer_storage import LayerStorage
from retrax.layers.layer_walks import walk_layers, with_mode
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
    flatten_weights_and_state,
    signature_or_none,
    to_device,
    to_shape_dtype,
    tree_mismatch,
)

# with_mode and walk_layers are defined in layer_walks and importable from here as before.
__all__ = ["Layer", "with_mode", "walk_layers"]

# Protocol hooks that had private names before; a subclass still defining one
# would silently not be called, so defining one is refused.
_RENAMED_HOOKS = {
    "_init_tree": "init_in_pass",
    "_forward_pure": "forward_in_pass",
    "_state_tree": "state_tree",
    "_assign_state": "assign_state_tree",
}


class Layer(LayerStorage):
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
        # The stored weights, state and key, and the sublayers that hold a combinator's.
        LayerStorage.__init__(self, sublayers)
        # True for a combinator built inside another one and not shown by
        # print (Branch's Parallel); error paths then skip it.
        self._hidden_in_path = False
        self._caller = find_caller()
        # 'train', 'eval' or 'predict' for a layer that behaves by mode (its
        # __init__ sets it); None for one that does not. Read it as ``own_mode``.
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
    def own_mode(self) -> str | None:
        """The mode this layer itself was built with; None for a layer without modes.

        Unlike ``mode`` it never looks at the sublayers: ``Serial``'s is None.
        """
        return self._mode

    def set_own_mode(self, mode: str) -> None:
        """Switches this layer's own mode in place: ``with_mode``'s hook.

        ``with_mode`` calls it on each layer of its fresh copy of a model. For a
        model in another mode use ``tl.with_mode(model, mode)``, which leaves
        ``model`` (and every other holder of its layers) as it is.
        """
        if self._mode is None:
            raise ValueError(
                f"{self.name_with_arity} has no mode of its own; for a model in another "
                f"mode use tl.with_mode(model, {mode!r}).")
        self._mode = mode

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
            weights, state = to_device((weights, state))
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

        return run_with_own_backward(self, run, x, weights, state, rng)

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
                self.assign_state_tree(to_device(state), set())
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



def _init_alone(layer: Layer, input_signature: Any, rng: Any) -> tuple[Any, Any]:
    """``layer``'s ``(weights, state)`` from an init pass of its own; nothing is stored."""
    with new_pass() as ctx:
        return ctx.init_layer(layer, input_signature, rng)


