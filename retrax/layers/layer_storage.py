"""What a layer keeps between calls: its weights, state and key, read as trees.

``Layer`` inherits this part of its contract from ``LayerStorage``. A leaf
layer stores its own weights and state; a combinator stores none of its own
and reads and writes its sublayers', one entry per sublayer in order, so
``model.weights`` is one nested tuple (the tree ``init`` returns). A layer used
twice keeps its values at its first occurrence; later ones read as cache
markers (see :mod:`retrax.layers.trees`). A layer with a state layout of its
own (``Scan``, ``Cache``) overrides ``state_tree`` and ``assign_state_tree``.

While a Trax-style hook runs (``forward``, ``init_weights_and_state``), the
pass installs that call's values with ``_fields_installed``: then
``self.weights``, ``self.state`` and ``self.rng`` read and write those values
only, never the sublayers'.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> dense = tl.Dense(2)
>>> model = tl.Serial(dense, tl.Fn('Double', lambda x: 2 * x), dense)
>>> _ = model.init(shapes.ShapeDtype((1, 2)))
>>> w = model.weights  # one entry per sublayer; the shared Dense's second is a marker
>>> [a.shape for a in w[0]], w[1], w[2] is tl.GET_WEIGHTS_FROM_CACHE
([(2, 2), (2,)], (), True)
>>> model.weights = (w[0], (), (np.ones((2, 2)), np.ones(2)))  # the marker's place is skipped
>>> dense.weights[0].tolist() == w[0][0].tolist()
True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from retrax.fastmath import random as fastmath_random
from retrax.layers.pass_context import DerivedKey
from retrax.layers.trees import (
    EMPTY_STATE,
    EMPTY_WEIGHTS,
    GET_WEIGHTS_FROM_CACHE,
    assign_child_state,
    check_per_sublayer,
    child_state,
    is_state_marker,
    is_weights_marker,
    tree_mismatch,
)

if TYPE_CHECKING:
    from retrax.layers.layer import Layer

__all__ = ["LayerStorage"]

_DEFAULT_SEED = 0


class LayerStorage:
    """``Layer``'s stored values: ``weights``, ``state`` and ``rng``, and their trees.

    ``Layer.__init__`` calls ``LayerStorage.__init__`` with the layer's
    sublayers (a combinator's children, in order; they own the values of a
    combinator); the class using it provides ``name_with_arity`` (for errors).
    """

    def __init__(self, sublayers: Sequence[Layer]):
        self._sublayers: tuple[Layer, ...] = tuple(sublayers)
        self._weights: Any = EMPTY_WEIGHTS
        self._state: Any = EMPTY_STATE
        self._rng: Any = None
        self._initialized = False
        # True while this layer's own init_weights_and_state/forward runs: then
        # self.weights/self.state read and write the installed values only
        # (also for a Trax-style layer that has sublayers), never the sublayers.
        self._in_hook = False

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

    @property
    def own_weights_and_state(self) -> tuple[Any, Any]:
        """``(weights, state)`` stored on this layer itself, not on its sublayers.

        A leaf layer's are its ``weights`` and ``state``; a combinator's are
        empty unless it keeps a value of its own (``Scan``'s state).
        """
        return self._weights, self._state

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

    def assign_weights_tree(self, weights: Any) -> None:
        """Stores ``weights`` without first comparing them with the stored ones.

        For a caller whose tree is this layer's own, updated (the training
        Loop's weights after its compiled steps): the ``weights`` setter reads
        the stored tree and compares both, a walk of thousands of Python calls
        on a Transformer. Anything else should assign ``layer.weights``.
        """
        self._assign_weights(weights, set())

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

    @contextlib.contextmanager
    def _fields_installed(self, weights: Any, state: Any, rng: Any) -> Iterator[None]:
        """Installs the pass's values for a Trax-style hook; puts the layer's back after."""
        saved = (self._weights, self._state, self._rng, self._in_hook)
        self._weights, self._state, self._rng, self._in_hook = weights, state, rng, True
        try:
            yield
        finally:
            self._weights, self._state, self._rng, self._in_hook = saved
