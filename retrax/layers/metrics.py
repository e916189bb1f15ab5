"""Metrics as layers, and the conventions they share with the losses.

Most layers take ``(model_output, targets, weights)`` from the stack and push
one scalar. Shapes (B batch, T length, V categories):

- ``model_output``: scores of shape ``(B, T, V)`` or ``(B, V)`` for the
  categorical layers; the same shape as ``targets`` for ``L2Loss``,
  ``SmoothL1Loss`` and the binary layers.
- ``targets``: integer category ids of shape ``model_output.shape[:-1]``
  (``(B, T)`` or ``(B,)``) for the categorical layers.
- ``weights``: the shape of ``targets``, or any shape that broadcasts to it
  (e.g. ``(B, 1)`` or a scalar). Weights are broadcast to the targets' shape
  *before* they are summed, so the result is always a true weighted mean.

Weighted means are ``sum(v * w) / sum(w)`` as in Trax, with two guards:
positions of weight 0 are ignored even where ``v`` is not finite, and when the
weights sum to 0 (an all-padding batch) the result is ``0.0``, not NaN.

Out-of-range targets: category ids outside ``[0, V)`` cannot be detected
inside ``jit`` (values are not known at trace time), so they do not raise.
Their one-hot row is all zeros: they contribute 0 to a cross-entropy (only the
smoothing term when ``label_smoothing`` is set) and count as wrong in the
accuracies. Check ids on the host before batching if that matters.

Shape mismatches that would silently broadcast (e.g. targets ``(B, 1)``
against predictions ``(B,)``) raise a ``ValueError`` naming the layer, the
shapes received and the shapes expected. Called through ``layer(x)`` or
``pure_fn``, it reaches you wrapped in a ``tl.LayerError`` whose message
includes it (``__cause__`` is the ``ValueError``).

Where they live: the losses (cross-entropies, binary cross-entropies,
``L2Loss``, ``SmoothL1Loss``) in ``retrax.layers.losses``, whose docstring says why
every cross-entropy loss accepts logits; the metrics (accuracies, F scores,
``WeightedSum``) in this module; the shape checks and weighted reductions they
share in ``retrax.layers.metric_helpers``. This module re-exports the losses,
so ``retrax.layers.metrics.X`` names every layer above, as in Trax.

>>> import numpy as np
>>> from retrax import layers as tl
>>> print(tl.Accuracy())
Accuracy_in3
>>> x = np.array([[2.0, 0.5], [0.1, 0.2]], np.float32)
>>> float(tl.WeightedCategoryAccuracy()((x, np.array([0, 0]), np.array([1.0, 3.0]))))
0.25
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from retrax.layers import losses
from retrax.layers.base import Fn, Layer
from retrax.layers.core import ArgMax
from retrax.layers.losses import *  # noqa: F403
from retrax.layers.metric_helpers import (
    WeightedMeanOf,
    WeightedSumOf,
    check_categorical,
    check_same_shape,
    check_weights,
    safe_div,
    shape_of,
    weighted_mean,
)
from retrax.layers.stack_combinators import Serial

__all__ = [
    *losses.__all__,
    "WeightedCategoryAccuracy",
    "CategoryAccuracy",
    "Accuracy",
    "SequenceAccuracy",
    "MaskedSequenceAccuracy",
    "MacroAveragedFScore",
    "WeightedFScore",
    "WeightedSum",
]

# Stands in for ``classifier=tl.ArgMax()`` in signatures. Each metric built with
# the default gets its own ArgMax, so two metrics in one model never share a
# layer instance (which would put cache markers into the weight tree).
_DEFAULT_CLASSIFIER = ArgMax()


# --------------------------------------------------------------------------
# Helpers of the accuracies and F scores
# --------------------------------------------------------------------------


def _sequence_accuracy(correct: Any, weights: Any) -> jax.Array:
    """Fraction of sequences (rows along axis 0) right at every weighted position.

    Positions of weight 0 are ignored; rows whose weights are all 0 are left
    out of the mean; 0.0 if no row has a nonzero weight.
    """
    correct = jnp.asarray(correct).astype(bool)
    counted = jnp.broadcast_to(jnp.asarray(weights), correct.shape) != 0
    axes = tuple(range(1, correct.ndim))
    sequence_ok = jnp.all(correct | ~counted, axis=axes)
    sequence_counted = jnp.any(counted, axis=axes)
    return weighted_mean(sequence_ok, sequence_counted)


def _f_scores(owner: str, model_output: Any, targets: Any, beta: float,
              initial_category_index: int) -> tuple[jax.Array, jax.Array]:
    """Per-category F-beta scores and supports for categories ``initial..V-1``."""
    check_categorical(owner, model_output, targets)
    n = shape_of(model_output)[-1]
    if initial_category_index >= n:
        raise ValueError(
            f"{owner}: initial_category_index={initial_category_index} leaves no category "
            f"to score; model_output has {n} categories (last axis of shape "
            f"{shape_of(model_output)})."
        )
    predictions = jnp.argmax(model_output, axis=-1)
    predicted = jax.nn.one_hot(predictions, n)[..., initial_category_index:].reshape(
        -1, n - initial_category_index)
    true = jax.nn.one_hot(targets, n)[..., initial_category_index:].reshape(
        -1, n - initial_category_index)
    n_correct = jnp.sum(predicted * true, axis=0)
    n_predicted = jnp.sum(predicted, axis=0)
    n_true = jnp.sum(true, axis=0)
    precision = safe_div(n_correct, n_predicted)
    recall = safe_div(n_correct, n_true)
    beta2 = beta * beta
    f = safe_div((1.0 + beta2) * precision * recall, beta2 * precision + recall)
    return f, n_true


def _check_f_args(owner: str, beta: Any, initial_category_index: Any) -> tuple[float, int]:
    beta = float(beta)
    if not beta >= 0.0:
        raise ValueError(f"{owner}: beta must be >= 0; got {beta!r}.")
    if (isinstance(initial_category_index, bool)
            or not isinstance(initial_category_index, (int, np.integer))
            or initial_category_index < 0):
        raise ValueError(
            f"{owner}: initial_category_index must be a non-negative int; "
            f"got {initial_category_index!r}."
        )
    return beta, int(initial_category_index)


def _Accuracy(owner: str) -> Layer:
    """1.0 where ``predictions == targets``, else 0.0."""

    def f(predictions, targets):
        check_same_shape(
            owner, "the classifier's predictions", predictions, "targets", targets,
            "With the default ArgMax classifier, model_output is (batch, [length,] "
            "n_categories) and targets are (batch, [length]).")
        return jnp.equal(predictions, targets).astype(jnp.float32)

    return Fn("_Accuracy", f)


def _WeightedSequenceMean(owner: str) -> Layer:
    def f(values, weights):
        if not shape_of(values):
            raise ValueError(
                f"{owner}: got scalar per-position scores (shape ()); expected a batch "
                f"axis, i.e. targets of shape (batch, [length])."
            )
        check_weights(owner, weights, shape_of(values))
        return _sequence_accuracy(values, weights)

    return Fn("_WeightedSequenceMean", f)


# --------------------------------------------------------------------------
# Accuracies (argmax is the same for logits and log-probabilities)
# --------------------------------------------------------------------------


def WeightedCategoryAccuracy() -> Layer:
    """Weighted fraction of positions whose argmax equals the target (3 -> 1).

    ``sum((argmax(model_output) == targets) * w) / sum(w)``; 0.0 when all
    weights are 0. Out-of-range targets count as wrong.
    """
    owner = "WeightedCategoryAccuracy"

    def f(model_output, targets, weights):
        check_categorical(owner, model_output, targets)
        check_weights(owner, weights, shape_of(targets))
        return weighted_mean(jnp.argmax(model_output, axis=-1) == targets, weights)

    return Fn(owner, f)


def CategoryAccuracy() -> Layer:
    """Fraction of positions whose argmax equals the target, unweighted (2 -> 1)."""
    owner = "CategoryAccuracy"

    def f(model_output, targets):
        check_categorical(owner, model_output, targets)
        correct = jnp.argmax(model_output, axis=-1) == targets
        return jnp.mean(correct.astype(jnp.float32))

    return Fn(owner, f)


def Accuracy(classifier: Layer = _DEFAULT_CLASSIFIER) -> Layer:
    """Weighted accuracy of ``classifier(model_output)`` against targets (3 -> 1).

    ``Serial(classifier, _Accuracy, _WeightedMean)`` as in Trax: the
    classifier's predictions must have the targets' shape. 0.0 when all
    weights are 0.

    Args:
      classifier: a 1 -> 1 layer mapping model outputs to predicted categories
        (default ``tl.ArgMax()``; ``tl.ThresholdToBinary()`` for binary scores).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> x = np.array([[.7, .2, .1], [.2, .7, .1], [.7, .2, .1]], np.float32)
    >>> float(tl.Accuracy()((x, np.array([0, 1, 2]), np.array([1., 5., 2.]))))
    0.75
    """
    if classifier is _DEFAULT_CLASSIFIER:
        classifier = ArgMax()
    return Serial(classifier, _Accuracy("Accuracy"), WeightedMeanOf("Accuracy"),
                  name="Accuracy", sublayers_to_print=[])


def SequenceAccuracy(classifier: Layer = _DEFAULT_CLASSIFIER) -> Layer:
    """Fraction of sequences right at every weighted position (3 -> 1).

    A sequence (a row along the batch axis) counts as correct iff the
    classifier's prediction equals the target at every position whose weight
    is nonzero; the result is the mean over sequences. For Trax's 0/1 weights
    this is Trax's value. Differences, on purpose: a nonzero weight other than
    1 does not give partial credit, a sequence whose weights are all 0 is left
    out of the mean (Trax counted it as correct), and an all-zero-weight batch
    gives 0.0.

    Args:
      classifier: a 1 -> 1 layer mapping model outputs to predicted categories.
    """
    if classifier is _DEFAULT_CLASSIFIER:
        classifier = ArgMax()
    owner = "SequenceAccuracy"
    return Serial(classifier, _Accuracy(owner), _WeightedSequenceMean(owner),
                  name=owner, sublayers_to_print=[])


def MaskedSequenceAccuracy() -> Layer:
    """Sequence accuracy with argmax predictions, weights used as a mask (3 -> 1).

    Positions of weight 0 are ignored; a sequence counts as correct iff every
    other position's argmax equals its target; the result is the mean over
    sequences that have at least one nonzero weight (0.0 if none). The same
    value as ``SequenceAccuracy()``. For targets of rank > 2 all non-batch
    axes form the sequence.
    """
    owner = "MaskedSequenceAccuracy"

    def f(model_output, targets, weights):
        check_categorical(owner, model_output, targets)
        if not shape_of(targets):
            raise ValueError(
                f"{owner}: targets are a scalar; expected targets of shape (batch, length) "
                f"and model_output of shape (batch, length, n_categories)."
            )
        check_weights(owner, weights, shape_of(targets))
        return _sequence_accuracy(jnp.argmax(model_output, axis=-1) == targets, weights)

    return Fn(owner, f)


# --------------------------------------------------------------------------
# F scores (2 -> 1: (model_output, targets), as in Trax)
# --------------------------------------------------------------------------


def MacroAveragedFScore(beta: float = 1.0, initial_category_index: int = 0) -> Layer:
    """Unweighted mean over categories of the F-beta score (2 -> 1).

    Predictions are ``argmax(model_output)``. For each category ``k`` from
    ``initial_category_index`` to ``V - 1``: precision ``= correct_k /
    predicted_k``, recall ``= correct_k / true_k``, ``F = (1 + b^2) p r /
    (b^2 p + r)``; any 0/0 counts as 0, so a category never predicted and never
    present scores 0. All positions of all sequences are pooled.

    Args:
      beta: weight of recall relative to precision (>= 0).
      initial_category_index: categories below it are not scored (e.g. 1 to
        skip a padding id 0).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> x = np.eye(4, dtype=np.float32)[[1, 1, 2, 1, 1]]     # predictions 1, 1, 2, 1, 1
    >>> round(float(tl.MacroAveragedFScore()((x, np.array([1, 2, 2, 3, 1])))), 4)
    0.3333
    """
    owner = "MacroAveragedFScore"
    beta, initial = _check_f_args(owner, beta, initial_category_index)

    def f(model_output, targets):
        scores, _ = _f_scores(owner, model_output, targets, beta, initial)
        return jnp.mean(scores)

    return Fn(owner, f)


def WeightedFScore(beta: float = 1.0, initial_category_index: int = 0) -> Layer:
    """Mean over categories of the F-beta score, weighted by support (2 -> 1).

    Per-category scores as in ``MacroAveragedFScore``, averaged with weights
    equal to each category's number of target occurrences; 0.0 when no target
    falls in the scored categories.
    """
    owner = "WeightedFScore"
    beta, initial = _check_f_args(owner, beta, initial_category_index)

    def f(model_output, targets):
        scores, support = _f_scores(owner, model_output, targets, beta, initial)
        return safe_div(jnp.sum(scores * support), jnp.sum(support))

    return Fn(owner, f)


def WeightedSum() -> Layer:
    """``sum(values * weights)`` of ``(values, weights)`` (2 -> 1).

    ``weights`` must have the shape of ``values`` or broadcast to it; positions
    of weight 0 are ignored even where ``values`` is not finite.
    """
    return WeightedSumOf("WeightedSum")
