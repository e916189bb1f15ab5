"""The model a Loop trains and the model its evals run, kept in step with the Loop's weights.

The Loop keeps its weights and state on the devices and runs compiled steps
on them; the layer objects only see them when :meth:`LoopModels.sync` stores
them (at the end of each ``Loop.run``, after a checkpoint is loaded, after
``update_weights_and_state``). Storing a tree in a layer tree is a walk of
thousands of Python calls on a Transformer, so at a run's end the weights go
in unchecked (they are the model's own tree, updated by the compiled steps),
and the Loop's own eval copy (``with_mode(model, 'eval')``, used when no
``eval_model`` is given) is only reachable through ``Loop.eval_model``: it is
synced when read. A given ``eval_model`` is synced at once.
"""

from __future__ import annotations

from typing import Any

import jax

from retrax.layers import base

__all__ = ["LoopModels"]


class LoopModels:
    """The trained model and the eval model of one Loop.

    Args:
      model: the model the Loop trains (initialized).
      eval_model: the model its evals run, or None for an ``'eval'``-mode copy
        of ``model`` sharing its layers' configuration.
      input_signature: initializes a given ``eval_model`` that is not yet.
    """

    def __init__(self, model: base.Layer, eval_model: base.Layer | None, input_signature: Any):
        self.model = model
        self._own_eval = eval_model is None
        self._eval = eval_model if eval_model is not None else base.with_mode(model, "eval")
        if eval_model is not None and not eval_model.initialized:
            eval_model.init(input_signature)
        self._eval_stale = False
        # False after weights from outside (update_weights_and_state, a checkpoint) failed
        # the setter's check: then even an unchecked sync checks again (and raises again).
        self._weights_fit = True

    @property
    def eval_layer(self) -> base.Layer:
        """The eval model as it is (not synced): what the compiled eval steps are built from."""
        return self._eval

    def eval_model(self, weights: Any, state: Any) -> base.Layer:
        """The eval model, holding ``weights`` and ``state`` (the Loop's current ones) if stale."""
        if self._eval_stale:
            self._sync_eval(weights, state)
        return self._eval

    def sync(self, weights: Any, state: Any, checked: bool = True) -> None:
        """Stores the Loop's ``weights`` and ``state`` in the model (and a given eval model).

        ``checked=False``: ``weights`` are the model's own tree, updated by the
        compiled steps, and go in without being compared with the stored tree
        (unless the last checked ones did not fit).
        """
        if checked or not self._weights_fit:
            self._weights_fit = False
            self.model.weights = weights  # raises if they do not fit the model
            self._weights_fit = True
        else:
            self.model.assign_weights_tree(weights)
        self.model.state = state
        self._eval_stale = self._own_eval
        if not self._own_eval:
            self._sync_eval(weights, state)

    def _sync_eval(self, weights: Any, state: Any) -> None:
        self._eval_stale = False
        if self._eval is not self.model:
            self._eval.weights = weights
            # Its old state arrays were donated to the train step (BatchNorm statistics).
            if (jax.tree_util.tree_structure(self._eval.state)
                    == jax.tree_util.tree_structure(state)):
                self._eval.state = state
