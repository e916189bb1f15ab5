"""Losses and metrics as layers, with Trax's names, arities and printed forms.

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

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy

from retrax.layers.base import Fn, Layer
from retrax.layers.combinators import Serial
from retrax.layers.core import ArgMax, LogSoftmax

__all__ = [
    "CrossEntropyLoss",
    "CrossEntropyLossWithLogSoftmax",
    "WeightedCategoryCrossEntropy",
    "WeightedCategoryAccuracy",
    "CategoryCrossEntropy",
    "CategoryAccuracy",
    "Accuracy",
    "SequenceAccuracy",
    "MaskedSequenceAccuracy",
    "BinaryCrossEntropy",
    "BinaryCrossEntropyLoss",
    "L2Loss",
    "SmoothL1Loss",
    "MacroAveragedFScore",
    "WeightedFScore",
    "WeightedSum",
    "CrossEntropySum",
    "BinaryCrossEntropySum",
]

# Stands in for ``classifier=tl.ArgMax()`` in signatures. Each metric built with
# the default gets its own ArgMax, so two metrics in one model never share a
# layer instance (which would put cache markers into the weight tree).
_DEFAULT_CLASSIFIER = ArgMax()

_CATEGORICAL_HINT = (
    "Pass model_output as (batch, [length,] n_categories) scores and targets as "
    "integer category ids of shape (batch, [length])."
)


# --------------------------------------------------------------------------
# Checks (static shapes: they run at trace time and work under jit)
# --------------------------------------------------------------------------


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in jnp.shape(x))


def _check_categorical(owner: str, model_output: Any, targets: Any) -> None:
    mo, t = _shape(model_output), _shape(targets)
    if not mo:
        raise ValueError(
            f"{owner}: model_output is a scalar (shape ()), targets have shape {t}; "
            f"expected model_output with a last axis of n_categories. {_CATEGORICAL_HINT}"
        )
    if mo[:-1] != t:
        raise ValueError(
            f"{owner}: model_output has shape {mo} and targets have shape {t}; expected "
            f"targets of shape {mo[:-1]} (model_output's shape without its last, "
            f"n_categories axis). {_CATEGORICAL_HINT}"
        )


def _check_same_shape(owner: str, a_name: str, a: Any, b_name: str, b: Any, hint: str) -> None:
    sa, sb = _shape(a), _shape(b)
    if sa != sb:
        raise ValueError(
            f"{owner}: {a_name} have shape {sa} and {b_name} have shape {sb}; expected "
            f"equal shapes. {hint}"
        )


def _check_weights(owner: str, weights: Any, shape: tuple[int, ...]) -> None:
    w = _shape(weights)
    try:
        ok = tuple(np.broadcast_shapes(w, shape)) == shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{owner}: weights have shape {w}, which does not broadcast to the targets' "
            f"shape {shape}; expected weights of shape {shape} (one weight per target) or "
            f"a shape that broadcasts to it, such as (batch, 1) or ()."
        )


def _check_label_smoothing(owner: str, label_smoothing: Any) -> float | None:
    if label_smoothing is None:
        return None
    ls = float(label_smoothing)
    if not 0.0 <= ls <= 1.0:
        raise ValueError(
            f"{owner}: label_smoothing must be between 0 and 1; got {label_smoothing!r}."
        )
    return ls


# --------------------------------------------------------------------------
# Math
# --------------------------------------------------------------------------


def _as_float(x: Any) -> jax.Array:
    """``x`` as a float array of at least 32 bits (bf16/f16/ints become f32)."""
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.floating) and jnp.finfo(x.dtype).bits >= 32:
        return x
    return x.astype(jnp.float32)


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den``, and 0 where ``den == 0`` (no NaN in values or gradients)."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros_like(num), num / jnp.where(zero, jnp.ones_like(den), den))


def _weighted_mean(values: Any, weights: Any) -> jax.Array:
    """``sum(v * w) / sum(w)`` with ``w`` broadcast to ``v``; 0 if ``sum(w) == 0``."""
    values = _as_float(values)
    w = jnp.broadcast_to(jnp.asarray(weights).astype(values.dtype), values.shape)
    num = jnp.sum(jnp.where(w == 0, jnp.zeros_like(values), values * w))
    return _safe_div(num, jnp.sum(w))


def _weighted_sum(values: Any, weights: Any) -> jax.Array:
    values = _as_float(values)
    w = jnp.broadcast_to(jnp.asarray(weights).astype(values.dtype), values.shape)
    return jnp.sum(jnp.where(w == 0, jnp.zeros_like(values), values * w))


def _category_cross_entropy(model_output: Any, targets: Any, label_smoothing: float | None,
                            cutoff: float = 0.0) -> jax.Array:
    """Per-position ``-sum(target_dist * log_softmax(model_output), -1)``."""
    x = _as_float(model_output)
    n = x.shape[-1]
    dist = jax.nn.one_hot(targets, n, dtype=x.dtype)
    if label_smoothing:
        dist = dist * (1.0 - label_smoothing) + label_smoothing / n
    ce = -jnp.sum(dist * jax.nn.log_softmax(x, axis=-1), axis=-1)
    if cutoff > 0.0:
        ce = jnp.maximum(ce, cutoff) - cutoff
    return ce


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
    return _weighted_mean(sequence_ok, sequence_counted)


def _binary_cross_entropy_from_probs(p: Any, t: Any) -> jax.Array:
    """Per-element binary cross-entropy of probabilities ``p``; NaN where ``p`` is not in [0, 1]."""
    p = _as_float(p)
    t = jnp.asarray(t).astype(p.dtype)
    bce = -(xlogy(t, p) + xlogy(1.0 - t, 1.0 - p))
    return jnp.where((p < 0) | (p > 1), jnp.nan, bce)


def _f_scores(owner: str, model_output: Any, targets: Any, beta: float,
              initial_category_index: int) -> tuple[jax.Array, jax.Array]:
    """Per-category F-beta scores and supports for categories ``initial..V-1``."""
    _check_categorical(owner, model_output, targets)
    n = _shape(model_output)[-1]
    if initial_category_index >= n:
        raise ValueError(
            f"{owner}: initial_category_index={initial_category_index} leaves no category "
            f"to score; model_output has {n} categories (last axis of shape "
            f"{_shape(model_output)})."
        )
    predictions = jnp.argmax(model_output, axis=-1)
    predicted = jax.nn.one_hot(predictions, n)[..., initial_category_index:].reshape(
        -1, n - initial_category_index)
    true = jax.nn.one_hot(targets, n)[..., initial_category_index:].reshape(
        -1, n - initial_category_index)
    n_correct = jnp.sum(predicted * true, axis=0)
    n_predicted = jnp.sum(predicted, axis=0)
    n_true = jnp.sum(true, axis=0)
    precision = _safe_div(n_correct, n_predicted)
    recall = _safe_div(n_correct, n_true)
    beta2 = beta * beta
    f = _safe_div((1.0 + beta2) * precision * recall, beta2 * precision + recall)
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


# --------------------------------------------------------------------------
# Building blocks (the sublayers of the Serial-based losses, named as in Trax)
# --------------------------------------------------------------------------


def _CrossEntropy(owner: str) -> Layer:
    """Per-position cross-entropy of ``(model_output, targets)``; logits or log-probs."""

    def f(model_output, targets):
        _check_categorical(owner, model_output, targets)
        return _category_cross_entropy(model_output, targets, None)

    return Fn("_CrossEntropy", f)


def _BinaryCrossEntropy(owner: str) -> Layer:
    """Per-element binary cross-entropy of ``(probabilities, targets)``."""

    def f(model_output, targets):
        _check_same_shape(owner, "model_output", model_output, "targets", targets,
                          "Pass one probability in [0, 1] per target in {0, 1}.")
        return _binary_cross_entropy_from_probs(model_output, targets)

    return Fn("_BinaryCrossEntropy", f)


def _Accuracy(owner: str) -> Layer:
    """1.0 where ``predictions == targets``, else 0.0."""

    def f(predictions, targets):
        _check_same_shape(
            owner, "the classifier's predictions", predictions, "targets", targets,
            "With the default ArgMax classifier, model_output is (batch, [length,] "
            "n_categories) and targets are (batch, [length]).")
        return jnp.equal(predictions, targets).astype(jnp.float32)

    return Fn("_Accuracy", f)


def _WeightedMean(owner: str) -> Layer:
    def f(values, weights):
        _check_weights(owner, weights, _shape(values))
        return _weighted_mean(values, weights)

    return Fn("_WeightedMean", f)


def _WeightedSequenceMean(owner: str) -> Layer:
    def f(values, weights):
        if not _shape(values):
            raise ValueError(
                f"{owner}: got scalar per-position scores (shape ()); expected a batch "
                f"axis, i.e. targets of shape (batch, [length])."
            )
        _check_weights(owner, weights, _shape(values))
        return _sequence_accuracy(values, weights)

    return Fn("_WeightedSequenceMean", f)


def _WeightedSumOf(owner: str) -> Layer:
    def f(values, weights):
        _check_weights(owner, weights, _shape(values))
        return _weighted_sum(values, weights)

    return Fn("WeightedSum", f)


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
    return Serial(_CrossEntropy("CrossEntropyLoss"), _WeightedMean("CrossEntropyLoss"),
                  name="CrossEntropyLoss", sublayers_to_print=[])


def CrossEntropyLossWithLogSoftmax() -> Layer:
    """``LogSoftmax`` then weighted mean cross-entropy (3 -> 1).

    Kept for Trax compatibility; it now gives the same values as
    ``CrossEntropyLoss``, which also accepts logits (``log_softmax`` is
    idempotent). Zero total weight gives 0.0.
    """
    owner = "CrossEntropyLossWithLogSoftmax"
    return Serial(LogSoftmax(), _CrossEntropy(owner), _WeightedMean(owner),
                  name=owner, sublayers_to_print=[])


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
        _check_categorical(owner, model_output, targets)
        _check_weights(owner, weights, _shape(targets))
        return _weighted_mean(_category_cross_entropy(model_output, targets, ls, cutoff),
                              weights)

    return Fn(owner, f)


def CategoryCrossEntropy(label_smoothing: float | None = None) -> Layer:
    """Mean cross-entropy of ``(model_output, targets)`` over all positions (2 -> 1).

    Same per-position value as ``WeightedCategoryCrossEntropy`` (logits or
    log-probabilities; optional label smoothing), averaged without weights.
    """
    owner = "CategoryCrossEntropy"
    ls = _check_label_smoothing(owner, label_smoothing)

    def f(model_output, targets):
        _check_categorical(owner, model_output, targets)
        return jnp.mean(_category_cross_entropy(model_output, targets, ls))

    return Fn(owner, f)


def CrossEntropySum() -> Layer:
    """Weighted *sum* of per-position cross-entropies (3 -> 1).

    Like Trax's, but correct on logits as well as log-probabilities (see
    ``CrossEntropyLoss``): ``sum(ce * w)``.
    """
    owner = "CrossEntropySum"
    return Serial(_CrossEntropy(owner), _WeightedSumOf(owner), name=owner,
                  sublayers_to_print=[])


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
        _check_categorical(owner, model_output, targets)
        _check_weights(owner, weights, _shape(targets))
        return _weighted_mean(jnp.argmax(model_output, axis=-1) == targets, weights)

    return Fn(owner, f)


def CategoryAccuracy() -> Layer:
    """Fraction of positions whose argmax equals the target, unweighted (2 -> 1)."""
    owner = "CategoryAccuracy"

    def f(model_output, targets):
        _check_categorical(owner, model_output, targets)
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
    return Serial(classifier, _Accuracy("Accuracy"), _WeightedMean("Accuracy"),
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
        _check_categorical(owner, model_output, targets)
        if not _shape(targets):
            raise ValueError(
                f"{owner}: targets are a scalar; expected targets of shape (batch, length) "
                f"and model_output of shape (batch, length, n_categories)."
            )
        _check_weights(owner, weights, _shape(targets))
        return _sequence_accuracy(jnp.argmax(model_output, axis=-1) == targets, weights)

    return Fn(owner, f)


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
        _check_same_shape(owner, "model_output", model_output, "targets", targets,
                          "Pass one logit per target in {0, 1}.")
        x = _as_float(model_output)
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
    return Serial(_BinaryCrossEntropy(owner), _WeightedMean(owner), name=owner,
                  sublayers_to_print=[])


def BinaryCrossEntropySum() -> Layer:
    """Weighted *sum* of per-element binary cross-entropies of probabilities (3 -> 1).

    ``sum(bce * w)`` with ``bce`` as in ``BinaryCrossEntropyLoss``.
    """
    owner = "BinaryCrossEntropySum"
    return Serial(_BinaryCrossEntropy(owner), _WeightedSumOf(owner), name=owner,
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
        _check_same_shape(owner, "model_output", model_output, "targets", targets,
                          "Pass one target value per model output.")
        _check_weights(owner, weights, _shape(targets))
        diff = _as_float(model_output) - _as_float(targets)
        return _weighted_mean(diff * diff, weights)

    return Fn(owner, f)


def SmoothL1Loss() -> Layer:
    """Weighted mean Huber loss (delta 1) (3 -> 1).

    Per element ``0.5 d^2`` if ``d = |y - t| < 1``, else ``d - 0.5``; then
    ``sum(w * h) / sum(w)``, 0.0 when all weights are 0. Shapes as ``L2Loss``.
    """
    owner = "SmoothL1Loss"

    def f(model_output, targets, weights):
        _check_same_shape(owner, "model_output", model_output, "targets", targets,
                          "Pass one target value per model output.")
        _check_weights(owner, weights, _shape(targets))
        d = jnp.abs(_as_float(model_output) - _as_float(targets))
        return _weighted_mean(jnp.where(d < 1.0, 0.5 * d * d, d - 0.5), weights)

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
        return _safe_div(jnp.sum(scores * support), jnp.sum(support))

    return Fn(owner, f)


def WeightedSum() -> Layer:
    """``sum(values * weights)`` of ``(values, weights)`` (2 -> 1).

    ``weights`` must have the shape of ``values`` or broadcast to it; positions
    of weight 0 are ignored even where ``values`` is not finite.
    """
    return _WeightedSumOf("WeightedSum")
