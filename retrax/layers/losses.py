"""Losses as layers: cross-entropies, binary cross-entropies, regression losses.

Trax's names, arities and printed forms; the shape conventions, weighted means
and checks are those described in ``retrax.layers.metrics``, which re-exports
every loss (and so does ``tl``).

**Deliberate fix: every cross-entropy loss accepts logits.** In Trax,
``CrossEntropyLoss`` (and ``CrossEntropySum``) compute ``-sum(one_hot(t) *
model_output)``, which is a cross-entropy only when ``model_output`` already
holds log-probabilities. Models such as ``TransformerLM`` emit logits, and on
logits that formula is unbounded below; that is why Trax 1.4.1's quick start
"learns" to a loss of -7,787. Here every cross-entropy layer applies
``log_softmax`` to the model output itself. ``log_softmax`` is idempotent
(``log_softmax(log_softmax(x)) == log_softmax(x)``), so for models that end in
``LogSoftmax`` the values equal Trax's (to float rounding), and for models that
emit logits they are now correct.

>>> import numpy as np
>>> from retrax import layers as tl
>>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], np.float32)
>>> targets, weights = np.array([0, 2]), np.ones(2, np.float32)
>>> loss = tl.CrossEntropyLoss()
>>> print(loss)
CrossEntropyLoss_in3
>>> from_logits = loss((logits, targets, weights))
>>> from_log_probs = loss((tl.log_softmax(logits), targets, weights))
>>> bool(np.allclose(from_logits, from_log_probs))
True
>>> round(float(from_logits), 4)   # mean of 0.2413 and 0.1096 (hand computed)
0.1755
"""

from __future__ import annotations

import weakref
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from retrax.layers.base import Fn, Layer
from retrax.layers.core import LogSoftmax
from retrax.layers.metric_helpers import (
    WeightedMeanOf,
    WeightedSumOf,
    as_float,
    check_categorical,
    check_same_shape,
    check_weights,
    shape_of,
    weighted_mean,
)
from retrax.layers.stack_combinators import Serial

__all__ = [
    "CrossEntropyLoss",
    "CrossEntropyLossWithLogSoftmax",
    "WeightedCategoryCrossEntropy",
    "CategoryCrossEntropy",
    "CrossEntropySum",
    "BinaryCrossEntropy",
    "BinaryCrossEntropyLoss",
    "BinaryCrossEntropySum",
    "L2Loss",
    "SmoothL1Loss",
]


# The weighted-mean cross-entropy layers made here, with (label_smoothing, cutoff).
_CROSS_ENTROPY_SETTINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _registered(layer: Layer, label_smoothing: float | None, cutoff: float) -> Layer:
    _CROSS_ENTROPY_SETTINGS[layer] = (label_smoothing, cutoff)
    return layer


def cross_entropy_settings(layer: Any) -> tuple[float | None, float] | None:
    """``(label_smoothing, cutoff)`` if ``layer`` is a weighted-mean cross-entropy loss.

    That is, one made by ``CrossEntropyLoss``, ``CrossEntropyLossWithLogSoftmax`` or
    ``WeightedCategoryCrossEntropy``: ``sum(ce * w) / sum(w)`` with ``ce`` the
    cross-entropy of ``log_softmax(model_output)``. None for any other layer.
    ``Loop(..., loss_chunk_size=n)`` uses it to compute the same loss in chunks.

    >>> cross_entropy_settings(WeightedCategoryCrossEntropy(label_smoothing=0.1))
    (0.1, 0.0)
    >>> cross_entropy_settings(L2Loss()) is None
    True
    """
    try:
        return _CROSS_ENTROPY_SETTINGS.get(layer)
    except TypeError:  # not hashable: not one of ours
        return None


def _check_label_smoothing(owner: str, label_smoothing: Any) -> float | None:
    if label_smoothing is None:
        return None
    ls = float(label_smoothing)
    if not 0.0 <= ls <= 1.0:
        raise ValueError(
            f"{owner}: label_smoothing must be between 0 and 1; got {label_smoothing!r}."
        )
    return ls


def _category_cross_entropy(model_output: Any, targets: Any, label_smoothing: float | None,
                            cutoff: float = 0.0) -> jax.Array:
    """Per-position ``-sum(target_dist * log_softmax(model_output), -1)``."""
    x = as_float(model_output)
    n = x.shape[-1]
    dist = jax.nn.one_hot(targets, n, dtype=x.dtype)
    if label_smoothing:
        dist = dist * (1.0 - label_smoothing) + label_smoothing / n
    ce = -jnp.sum(dist * jax.nn.log_softmax(x, axis=-1), axis=-1)
    if cutoff > 0.0:
        ce = jnp.maximum(ce, cutoff) - cutoff
    return ce


def _binary_cross_entropy_from_probs(p: Any, t: Any) -> jax.Array:
    """Per-element binary cross-entropy of probabilities ``p``; NaN where ``p`` is not in [0, 1]."""
    p = as_float(p)
    t = jnp.asarray(t).astype(p.dtype)
    bce = -(xlogy(t, p) + xlogy(1.0 - t, 1.0 - p))
    return jnp.where((p < 0) | (p > 1), jnp.nan, bce)


# --------------------------------------------------------------------------
# Building blocks (the sublayers of the Serial-based losses, named as in Trax)
# --------------------------------------------------------------------------


def _CrossEntropy(owner: str) -> Layer:
    """Per-position cross-entropy of ``(model_output, targets)``; logits or log-probs."""

    def f(model_output, targets):
        check_categorical(owner, model_output, targets)
        return _category_cross_entropy(model_output, targets, None)

    return Fn("_CrossEntropy", f)


def _BinaryCrossEntropy(owner: str) -> Layer:
    """Per-element binary cross-entropy of ``(probabilities, targets)``."""

    def f(model_output, targets):
        check_same_shape(owner, "model_output", model_output, "targets", targets,
                         "Pass one probability in [0, 1] per target in {0, 1}.")
        return _binary_cross_entropy_from_probs(model_output, targets)

    return Fn("_BinaryCrossEntropy", f)


# --------------------------------------------------------------------------
# Categorical losses
# --------------------------------------------------------------------------


def CrossEntropyLoss() -> Layer:
    """Weighted mean cross-entropy of ``(model_output, targets, weights)`` (3 -> 1).

    Fixed relative to Trax: ``model_output`` may be logits *or*
    log-probabilities. Trax's version assumed log-probabilities and silently
    returned an unbounded, meaningless "loss" on logits; here ``log_softmax``
    is applied inside, which leaves log-probabilities unchanged. The value is
    ``sum(ce * w) / sum(w)``, and 0.0 when all weights are 0.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> x = np.log(np.array([[0.5, 0.25, 0.25]], np.float32))   # log-probabilities
    >>> round(float(tl.CrossEntropyLoss()((x, np.array([0]), np.ones(1)))), 4)  # -log 0.5
    0.6931
    """
    return _registered(Serial(_CrossEntropy("CrossEntropyLoss"),
                              WeightedMeanOf("CrossEntropyLoss"),
                              name="CrossEntropyLoss", sublayers_to_print=[]), None, 0.0)


def CrossEntropyLossWithLogSoftmax() -> Layer:
    """``LogSoftmax`` then weighted mean cross-entropy (3 -> 1).

    Kept for Trax compatibility; it now gives the same values as
    ``CrossEntropyLoss``, which also accepts logits (``log_softmax`` is
    idempotent). Zero total weight gives 0.0.
    """
    owner = "CrossEntropyLossWithLogSoftmax"
    return _registered(Serial(LogSoftmax(), _CrossEntropy(owner), WeightedMeanOf(owner),
                              name=owner, sublayers_to_print=[]), None, 0.0)


def WeightedCategoryCrossEntropy(label_smoothing: float | None = None,
                                 cutoff: float = 0.0) -> Layer:
    """Weighted mean cross-entropy with optional label smoothing (3 -> 1).

    Per position: ``ce = -sum(dist * log_softmax(model_output), -1)``, where
    ``dist`` is ``one_hot(targets)``, smoothed to ``dist * (1 - ls) + ls / V``
    when ``label_smoothing`` is set. With ``cutoff > 0``, ``ce`` becomes
    ``max(ce, cutoff) - cutoff``. The result is ``sum(ce * w) / sum(w)``, or
    0.0 when all weights are 0. Works on logits and on log-probabilities alike.

    Args:
      label_smoothing: ``None`` or a float in [0, 1] (otherwise ``ValueError``).
      cutoff: a float >= 0; per-position losses below it count as 0.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> layer = tl.WeightedCategoryCrossEntropy()
    >>> print(layer)
    WeightedCategoryCrossEntropy_in3
    >>> x = np.zeros((1, 4), np.float32)                 # uniform over 4 classes
    >>> round(float(layer((x, np.array([2]), np.ones(1)))), 4)   # log 4
    1.3863
    """
    owner = "WeightedCategoryCrossEntropy"
    ls = _check_label_smoothing(owner, label_smoothing)
    cutoff = float(cutoff)
    if not cutoff >= 0.0:
        raise ValueError(f"{owner}: cutoff must be >= 0; got {cutoff!r}.")

    def f(model_output, targets, weights):
        check_categorical(owner, model_output, targets)
        check_weights(owner, weights, shape_of(targets))
        return weighted_mean(_category_cross_entropy(model_output, targets, ls, cutoff),
                             weights)

    return _registered(Fn(owner, f), ls, cutoff)


def CategoryCrossEntropy(label_smoothing: float | None = None) -> Layer:
    """Mean cross-entropy of ``(model_output, targets)`` over all positions (2 -> 1).

    Same per-position value as ``WeightedCategoryCrossEntropy`` (logits or
    log-probabilities; optional label smoothing), averaged without weights.
    """
    owner = "CategoryCrossEntropy"
    ls = _check_label_smoothing(owner, label_smoothing)

    def f(model_output, targets):
        check_categorical(owner, model_output, targets)
        return jnp.mean(_category_cross_entropy(model_output, targets, ls))

    return Fn(owner, f)


def CrossEntropySum() -> Layer:
    """Weighted *sum* of per-position cross-entropies (3 -> 1).

    Like Trax's, but correct on logits as well as log-probabilities (see
    ``CrossEntropyLoss``): ``sum(ce * w)``.
    """
    owner = "CrossEntropySum"
    return Serial(_CrossEntropy(owner), WeightedSumOf(owner), name=owner,
                  sublayers_to_print=[])


# --------------------------------------------------------------------------
# Binary cross-entropy
# --------------------------------------------------------------------------


def BinaryCrossEntropy() -> Layer:
    """Mean binary cross-entropy of ``(logits, targets)`` (2 -> 1).

    ``model_output`` holds one real-valued logit per target in {0, 1}:
    ``-(t * log sigmoid(x) + (1 - t) * log sigmoid(-x))``, averaged over all
    elements. Computed with ``log_sigmoid``, so large logits do not overflow.
    Shapes must be equal (``(B,)`` against ``(B, 1)`` is an error, not a
    silent ``(B, B)`` broadcast).
    """
    owner = "BinaryCrossEntropy"

    def f(model_output, targets):
        check_same_shape(owner, "model_output", model_output, "targets", targets,
                         "Pass one logit per target in {0, 1}.")
        x = as_float(model_output)
        t = jnp.asarray(targets).astype(x.dtype)
        bce = -(t * jax.nn.log_sigmoid(x) + (1.0 - t) * jax.nn.log_sigmoid(-x))
        return jnp.mean(bce)

    return Fn(owner, f)


def BinaryCrossEntropyLoss() -> Layer:
    """Weighted mean binary cross-entropy of ``(probabilities, targets, weights)`` (3 -> 1).

    As in Trax, ``model_output`` holds *probabilities* in [0, 1] (e.g. after a
    ``Sigmoid``); for logits use ``BinaryCrossEntropy``. Per element
    ``-(t log p + (1 - t) log(1 - p))`` (with ``0 log 0 = 0``), then
    ``sum(bce * w) / sum(w)``, 0.0 when all weights are 0. Values of ``p``
    outside [0, 1] (such as logits passed by mistake) give NaN rather than a
    silently wrong number.

    Trax computed ``-(tᵀ log p + (1 - t)ᵀ log(1 - p)) / B`` and then a weighted
    mean of that scalar, which ignores the weights and mixes positions for
    inputs of rank 2 with more than one column; for ``(B,)`` or ``(B, 1)``
    inputs with equal weights the two agree.
    """
    owner = "BinaryCrossEntropyLoss"
    return Serial(_BinaryCrossEntropy(owner), WeightedMeanOf(owner), name=owner,
                  sublayers_to_print=[])


def BinaryCrossEntropySum() -> Layer:
    """Weighted *sum* of per-element binary cross-entropies of probabilities (3 -> 1).

    ``sum(bce * w)`` with ``bce`` as in ``BinaryCrossEntropyLoss``.
    """
    owner = "BinaryCrossEntropySum"
    return Serial(_BinaryCrossEntropy(owner), WeightedSumOf(owner), name=owner,
                  sublayers_to_print=[])


# --------------------------------------------------------------------------
# Regression losses
# --------------------------------------------------------------------------


def L2Loss() -> Layer:
    """Weighted mean squared error ``sum(w * (y - t)^2) / sum(w)`` (3 -> 1).

    ``model_output`` and ``targets`` must have the same shape; ``weights`` that
    shape or one that broadcasts to it. 0.0 when all weights are 0.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> y, t = np.array([[1., 1.], [1., 1.]]), np.array([[1., 1.], [1., 0.]])
    >>> float(tl.L2Loss()((y, t, np.array([[1., 0.], [0., 1.]]))))
    0.5
    """
    owner = "L2Loss"

    def f(model_output, targets, weights):
        check_same_shape(owner, "model_output", model_output, "targets", targets,
                         "Pass one target value per model output.")
        check_weights(owner, weights, shape_of(targets))
        diff = as_float(model_output) - as_float(targets)
        return weighted_mean(diff * diff, weights)

    return Fn(owner, f)


def SmoothL1Loss() -> Layer:
    """Weighted mean Huber loss (delta 1) (3 -> 1).

    Per element ``0.5 d^2`` if ``d = |y - t| < 1``, else ``d - 0.5``; then
    ``sum(w * h) / sum(w)``, 0.0 when all weights are 0. Shapes as ``L2Loss``.
    """
    owner = "SmoothL1Loss"

    def f(model_output, targets, weights):
        check_same_shape(owner, "model_output", model_output, "targets", targets,
                         "Pass one target value per model output.")
        check_weights(owner, weights, shape_of(targets))
        d = jnp.abs(as_float(model_output) - as_float(targets))
        return weighted_mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5), weights)

    return Fn(owner, f)
