"""The pass context: what one ``init`` or ``pure_fn`` call of a whole model shares.

The outermost ``layer.init(...)`` or ``layer.pure_fn(...)`` opens a ``Pass``;
every sublayer initialized or applied inside it joins that pass. The pass

* resolves shared layers (the same instance used twice): the first
  occurrence records its weights and state by ``id(layer)``; a later
  occurrence gets the ``GET_WEIGHTS_FROM_CACHE`` marker in its place and reads
  them back from the pass;
* numbers the leaves it applies, so each derives its own random key from the
  one key its combinators hand down (``DerivedKey``);
* remembers the output signatures found while initializing combinators, so a
  parent need not trace a subtree again to learn its output shapes.

Passes nest per thread: ``jax.eval_shape`` or ``lax.scan`` bodies open a new
one (``new_pass(ctx.weights)``), seeded with the weights known outside.

>>> from retrax.layers import pass_context
>>> pass_context.current_pass() is None
True
>>> with pass_context.new_pass() as ctx:
...     pass_context.current_pass() is ctx
True
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from retrax.fastmath import random as fastmath_random
from retrax.layers.errors import LayerError, call_outermost
from retrax.layers.trees import (
    EMPTY_STATE,
    GET_STATE_FROM_CACHE,
    GET_WEIGHTS_FROM_CACHE,
    is_state_marker,
    is_weights_marker,
    tree_mismatch,
)

__all__ = [
    "Pass",
    "DerivedKey",
    "signature_key",
    "new_pass",
    "current_pass",
    "current_or_new_pass",
    "surface_causes",
    "init_child",
    "apply_child",
]


class Pass:
    """The shared record of one ``init`` or ``pure_fn`` call of a model.

    Attributes:
      weights: ``id(layer) -> weights`` of every layer seen in the pass (the
        first occurrence of a shared layer; markers are resolved from here).
      state: ``id(layer) -> state``, the latest state of each layer applied.
      initialized: ids of the layers initialized in this pass.
      key_index: the number of leaves that drew a key so far.
      outputs: ``(id(layer), signature_key(inputs)) -> output signatures``
        recorded by combinators during init.
    """

    def __init__(self, weights: dict[int, Any] | None = None):
        self.weights: dict[int, Any] = dict(weights or {})
        self.state: dict[int, Any] = {}
        self.initialized: set[int] = set()
        self.key_index = 0
        self.outputs: dict[tuple, list[Any]] = {}

    def next_key_index(self) -> int:
        """A new index for the next leaf that derives a key (``DerivedKey``)."""
        self.key_index += 1
        return self.key_index

    def init_layer(self, layer: Any, input_signature: Any, rng: Any) -> tuple[Any, Any]:
        """Initializes ``layer`` in this pass; stores nothing on the layer.

        Checks the number of inputs, runs ``layer.init_in_pass`` and records
        the result. Returns ``(weights, state)``, or the shared-layer markers
        when ``layer`` was initialized earlier in this pass (the same instance
        used twice). Errors come out as a ``LayerError`` naming ``layer``.
        ``Layer.init`` is this call in a new pass, plus storing the result; a
        combinator calls it through ``init_child``.
        """
        key = id(layer)
        if key in self.initialized:
            return GET_WEIGHTS_FROM_CACHE, GET_STATE_FROM_CACHE
        self.initialized.add(key)
        try:
            _check_n_inputs(layer, input_signature)
            weights, state = layer.init_in_pass(input_signature, rng, self)
        except LayerError:
            raise
        except Exception as e:
            raise LayerError(layer, "init", input_signature, e) from e
        self.weights[key] = weights
        self.state[key] = state
        return weights, state

    def apply_layer(self, layer: Any, x: Any, weights: Any, state: Any,
                    rng: Any) -> tuple[Any, Any]:
        """Applies ``layer`` to ``x`` in this pass: returns ``(outputs, new_state)``.

        Resolves shared-layer markers (or records ``weights`` for later
        occurrences), checks the inputs and a leaf's weights against its own,
        runs ``layer.forward_in_pass`` and records the new state. Errors come
        out as a ``LayerError`` naming ``layer``. ``Layer.pure_fn`` is this
        call; a combinator calls it through ``apply_child``.
        """
        key = id(layer)
        if is_weights_marker(weights):
            if key not in self.weights:
                raise LayerError(
                    layer, "pure_fn", x,
                    "got the shared-weights marker but this layer's weights were not passed "
                    "earlier in the same call; pass the weight tree returned by init().",
                )
            weights = self.weights[key]
        else:
            self.weights[key] = weights
        if is_state_marker(state):
            state = self.state.get(key, EMPTY_STATE)
        try:
            _check_n_inputs(layer, x)
            if not layer.sublayers and layer.initialized:
                _check_leaf_weights(layer, weights)
            outputs, new_state = layer.forward_in_pass(x, weights, state, rng, self)
        except LayerError:
            raise
        except Exception as e:
            raise LayerError(layer, "pure_fn", x, e) from e
        self.state[key] = new_state
        return outputs, new_state


def _check_n_inputs(layer: Any, x: Any) -> None:
    n_in = layer.n_in
    if n_in <= 1:
        return
    if not isinstance(x, (tuple, list)) or len(x) < n_in:
        got = f"{len(x)} items" if isinstance(x, (tuple, list)) else "a single array"
        raise ValueError(
            f"{layer.name_with_arity} takes {n_in} inputs from the stack but got "
            f"{got}. Pass a tuple of {n_in} arrays (or put enough layers before "
            f"it to produce them)."
        )


def _check_leaf_weights(layer: Any, weights: Any) -> None:
    stored = layer.weights
    if weights is stored:
        return
    problem = tree_mismatch(stored, weights)
    if problem:
        raise ValueError(
            f"the weights passed do not match the layer's weights: {problem}. "
            f"Pass the weights returned by init() for this layer."
        )


class DerivedKey:
    """The key of one leaf layer in a pass: ``hash_fold_in(rng, index)``, made lazily.

    Combinators hand the same key to all their sublayers; every leaf applied in
    a pass has its own index, so leaves still get distinct keys, and only the
    few that read ``self.rng`` (dropout) pay for deriving one. (Splitting at
    every combinator, as Trax does, put dozens of key derivations into every
    compiled step.)
    """

    __slots__ = ("base", "index", "key")

    def __init__(self, base: Any, index: int):
        self.base, self.index, self.key = base, index, None

    def get(self) -> Any:
        """The derived key (computed on the first call)."""
        if self.key is None:
            self.key = fastmath_random.hash_fold_in(self.base, self.index)
        return self.key


def signature_key(sig: Any) -> Any:
    """A hashable key for a (tree of) signature(s)."""
    if isinstance(sig, (tuple, list)):
        return tuple(signature_key(s) for s in sig)
    if hasattr(sig, "shape") and hasattr(sig, "dtype"):
        return (tuple(sig.shape), np.dtype(sig.dtype).name)
    return repr(sig)


_local = threading.local()


def _stack() -> list[Pass]:
    if not hasattr(_local, "passes"):
        _local.passes = []
    return _local.passes


@contextlib.contextmanager
def new_pass(seed_weights: dict[int, Any] | None = None) -> Iterator[Pass]:
    """Opens a new pass for the duration of the ``with`` block.

    ``seed_weights`` (``id(layer) -> weights``) are known to the pass from the
    start; pass the enclosing ``ctx.weights`` when a traced function (a
    ``lax.scan`` or ``lax.cond`` body, ``jax.eval_shape``) applies a child, so
    that the child's shared-weight markers resolve inside it.
    """
    ctx = Pass(seed_weights)
    _stack().append(ctx)
    try:
        yield ctx
    finally:
        _stack().pop()


def current_pass() -> Pass | None:
    """The innermost open pass of this thread, or None outside any layer call."""
    stack = _stack()
    return stack[-1] if stack else None


@contextlib.contextmanager
def current_or_new_pass() -> Iterator[Pass]:
    """The current pass if one is open, else a new one for the ``with`` block."""
    ctx = current_pass()
    if ctx is not None:
        yield ctx
    else:
        with new_pass() as ctx:
            yield ctx


def surface_causes(method: Callable) -> Callable:
    """Wraps a public entry point (``init``, ``pure_fn``, ...) of a layer.

    Called inside a pass, the method runs as it is; at the outermost call (no
    pass open) it runs through ``errors.call_outermost``, which hands the user
    the cause of a ``LayerError`` that could not be made an instance of the
    cause's type (with the layer path as a note).
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _stack():
            return method(*args, **kwargs)
        return call_outermost(method, *args, **kwargs)

    return wrapper


def init_child(parent: Any, index: int, child: Any, input_signature: Any, rng: Any,
               ctx: Pass) -> tuple[Any, Any]:
    """Initializes ``child``, the ``index``-th sublayer of ``parent``, in the pass ``ctx``.

    What a combinator's ``init_in_pass`` calls for each child:
    ``ctx.init_layer(child, input_signature, rng)``, with
    ``parent[index]`` added to the path of a ``LayerError`` on the way out.
    Returns the child's ``(weights, state)``, or the shared-layer markers for
    a child already initialized in ``ctx``.
    """
    try:
        return ctx.init_layer(child, input_signature, rng)
    except LayerError as e:
        e.push_parent(parent, index)
        raise


def apply_child(parent: Any, index: int, child: Any, x: Any, weights: Any, state: Any,
                rng: Any, ctx: Pass) -> tuple[Any, Any]:
    """Applies ``child``, the ``index``-th sublayer of ``parent``, in the pass ``ctx``.

    What a combinator's ``forward_in_pass`` calls for each child:
    ``ctx.apply_layer(child, x, weights, state, rng)``, with
    ``parent[index]`` added to the path of a ``LayerError`` on the way out.
    Returns the child's ``(outputs, new_state)``.
    """
    try:
        return ctx.apply_layer(child, x, weights, state, rng)
    except LayerError as e:
        e.push_parent(parent, index)
        raise
