"""Tests for retrax.layers.metrics against hand-computed values.

The numeric cases follow the spirit of Trax's metrics tests (same inputs and
expected values where Trax had them); every cross-entropy layer is also
checked to give the same value for logits and for ``log_softmax(logits)``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax import layers as tl
from retrax import shapes

LN2, LN4 = math.log(2.0), math.log(4.0)

# Rows of model outputs from Trax's tests: 4 categories, targets [0, 1].
NEAR_PERFECT = np.array([[9., 2., 0., -2.], [2., 9., 0., -2.]], np.float32)
MORE_RIGHT = np.array([[2.2, 2., 0., -2.], [2., 2.2, 0., -2.]], np.float32)
MIXED = np.array([[9., 2., 0., -2.], [2., 2.2, 0., -2.]], np.float32)
TARGETS_01 = np.array([0, 1])


def _ce(row, t, ls=0.0):
    """Reference cross-entropy of one row of logits, in float64."""
    row = np.asarray(row, np.float64)
    logp = row - np.log(np.sum(np.exp(row)))
    dist = np.eye(len(row))[t] * (1 - ls) + ls / len(row)
    return float(-np.sum(dist * logp))


def _log_softmax(x):
    return np.asarray(jax.nn.log_softmax(jnp.asarray(x, jnp.float32), axis=-1))


def _value(layer, *xs):
    return float(layer(tuple(xs)))


def _cause_message(excinfo):
    """The ValueError under the LayerError the layer contract wraps it in."""
    err = excinfo.value
    assert isinstance(err, (ValueError, tl.LayerError))
    cause = err if isinstance(err, ValueError) else err.__cause__
    assert isinstance(cause, ValueError), type(cause)
    return str(cause)


# --------------------------------------------------------------------------
# Accuracies
# --------------------------------------------------------------------------

ACC_TARGETS = np.array([0, 1, 2])
ACC_ALL_RIGHT = np.array([[.7, .2, .1, 0.], [.2, .7, .1, 0.], [.2, .1, .7, 0.]])
ACC_ALL_2 = np.array([[.2, .1, .7, 0.]] * 3)
ACC_ALL_1 = np.array([[.2, .7, .1, 0.]] * 3)
ACC_ALL_0 = np.array([[.7, .2, .1, 0.]] * 3)


def test_category_accuracy():
    layer = tl.CategoryAccuracy()
    assert _value(layer, ACC_ALL_RIGHT, ACC_TARGETS) == 1.0
    assert _value(layer, ACC_ALL_2, ACC_TARGETS) == pytest.approx(1 / 3)


@pytest.mark.parametrize("make", [tl.WeightedCategoryAccuracy, tl.Accuracy])
def test_weighted_accuracy_even_weights(make):
    layer = make()
    w = np.array([1., 1., 1.])
    assert _value(layer, ACC_ALL_RIGHT, ACC_TARGETS, w) == 1.0
    assert _value(layer, ACC_ALL_2, ACC_TARGETS, w) == pytest.approx(1 / 3)


@pytest.mark.parametrize("make", [tl.WeightedCategoryAccuracy, tl.Accuracy])
def test_weighted_accuracy_uneven_weights(make):
    layer = make()
    w = np.array([1., 5., 2.])
    assert _value(layer, ACC_ALL_RIGHT, ACC_TARGETS, w) == 1.0
    assert _value(layer, ACC_ALL_1, ACC_TARGETS, w) == 0.625   # 5 / 8
    assert _value(layer, ACC_ALL_0, ACC_TARGETS, w) == 0.125   # 1 / 8


def test_accuracy_binary_classifier():
    layer = tl.Accuracy(classifier=tl.ThresholdToBinary())
    targets = np.array([[0, 0, 1, 1], [1, 1, 1, 0]])
    w = np.ones_like(targets)
    out = np.array([[.499, .500, .501, .502], [.503, .502, .501, .500]], np.float32)
    assert _value(layer, out, targets, w) == 1.0
    out = np.array([[.498, .499, .500, .501], [.502, .501, .500, .499]], np.float32)
    assert _value(layer, out, targets, w) == 0.75


SEQ_TARGETS_ONES = np.array([[0, 1, 0, 1], [1, 0, 1, 1]])
SEQ_TARGETS = np.array([[0, 1, 0, 0], [1, 0, 1, 0]])
SEQ_WEIGHTS_LAST_ZERO = np.array([[1., 1., 1., 0.], [1., 1., 1., 0.]])


def test_sequence_accuracy_weights_all_ones():
    layer = tl.SequenceAccuracy()
    w = np.ones_like(SEQ_TARGETS_ONES)
    right = np.array([[[.9, .1], [.2, .8], [.7, .3], [.4, .6]],
                      [[.3, .7], [.8, .2], [.1, .9], [.4, .6]]])
    assert _value(layer, right, SEQ_TARGETS_ONES, w) == 1.0
    first_wrong = np.array([[[.45, .55], [.2, .8], [.7, .3], [.4, .6]],
                            [[.3, .7], [.8, .2], [.1, .9], [.4, .6]]])
    assert _value(layer, first_wrong, SEQ_TARGETS_ONES, w) == 0.5
    last_wrong = np.array([[[.9, .1], [.2, .8], [.7, .3], [.55, .45]],
                           [[.3, .7], [.8, .2], [.1, .9], [.52, .48]]])
    assert _value(layer, last_wrong, SEQ_TARGETS_ONES, w) == 0.0


@pytest.mark.parametrize("make", [tl.SequenceAccuracy, tl.MaskedSequenceAccuracy])
def test_sequence_accuracy_last_position_zero_weight(make):
    layer = make()
    w = SEQ_WEIGHTS_LAST_ZERO
    # Right everywhere; the last position would be wrong but has weight 0.
    right = np.array([[[.9, .1], [.2, .8], [.7, .3], [.35, .65]],
                      [[.3, .7], [.8, .2], [.1, .9], [.35, .65]]])
    assert _value(layer, right, SEQ_TARGETS, w) == 1.0
    first_wrong = np.array([[[.45, .55], [.2, .8], [.7, .3], [.6, .4]],
                            [[.3, .7], [.8, .2], [.1, .9], [.6, .4]]])
    assert _value(layer, first_wrong, SEQ_TARGETS, w) == 0.5
    third_wrong = np.array([[[.9, .1], [.2, .8], [.48, .52], [.6, .4]],
                            [[.3, .7], [.8, .2], [.51, .49], [.6, .4]]])
    assert _value(layer, third_wrong, SEQ_TARGETS, w) == 0.0


@pytest.mark.parametrize("make", [tl.SequenceAccuracy, tl.MaskedSequenceAccuracy])
def test_sequence_accuracy_ignores_fully_masked_rows(make):
    # Row 0 right, row 1 wrong, row 2 all padding: 1 of 2 counted rows is right.
    out = np.eye(2)[[[0, 1], [1, 1], [1, 1]]]
    targets = np.array([[0, 1], [0, 0], [0, 0]])
    w = np.array([[1., 1.], [1., 1.], [0., 0.]])
    assert _value(make(), out, targets, w) == 0.5
    # A nonzero weight other than 1 gives no partial credit.
    w = np.array([[1., 1.], [0.5, 0.], [0., 0.]])
    assert _value(make(), out, targets, w) == 0.5


def test_accuracies_ignore_out_of_range_targets_without_crashing():
    out = np.array([[.7, .2, .1], [.2, .7, .1]])
    targets = np.array([0, 7])
    assert _value(tl.Accuracy(), out, targets, np.ones(2)) == 0.5
    assert _value(tl.WeightedCategoryAccuracy(), out, np.array([-1, 1]), np.ones(2)) == 0.5


def test_default_classifier_is_not_shared():
    a, b = tl.Accuracy(), tl.Accuracy()
    assert a.sublayers[0] is not b.sublayers[0]
    both = tl.Branch(a, b)
    sig = (shapes.ShapeDtype((2, 3)), shapes.ShapeDtype((2,), np.int32),
           shapes.ShapeDtype((2,)))
    weights, _ = both.init(sig)
    assert not any(isinstance(x, dict) for x in jax.tree_util.tree_leaves(weights))


# --------------------------------------------------------------------------
# Categorical cross-entropy
# --------------------------------------------------------------------------


def test_category_cross_entropy():
    layer = tl.CategoryCrossEntropy()
    assert _value(layer, NEAR_PERFECT, TARGETS_01) == pytest.approx(.001, abs=5e-4)
    assert _value(layer, MORE_RIGHT, TARGETS_01) == pytest.approx(.665, abs=5e-4)
    assert _value(layer, MIXED, TARGETS_01) == pytest.approx(.333, abs=5e-4)
    # Exact: -log softmax of the target logit.
    expected = (_ce(MIXED[0], 0) + _ce(MIXED[1], 1)) / 2
    assert _value(layer, MIXED, TARGETS_01) == pytest.approx(expected, rel=1e-5)


def test_category_cross_entropy_with_label_smoothing():
    layer = tl.CategoryCrossEntropy(label_smoothing=0.01)
    assert _value(layer, NEAR_PERFECT, TARGETS_01) == pytest.approx(.069, abs=5e-4)
    assert _value(layer, MORE_RIGHT, TARGETS_01) == pytest.approx(.682, abs=5e-4)
    assert _value(layer, MIXED, TARGETS_01) == pytest.approx(.375, abs=5e-4)
    # Uniform logits over 4 classes: log 4 whatever the smoothing.
    assert _value(layer, np.zeros((1, 4)), np.array([3])) == pytest.approx(LN4, rel=1e-6)


def test_weighted_category_cross_entropy():
    layer = tl.WeightedCategoryCrossEntropy()
    w = np.array([30, 10])
    assert _value(layer, NEAR_PERFECT, TARGETS_01, w) == pytest.approx(.001, abs=5e-4)
    assert _value(layer, MORE_RIGHT, TARGETS_01, w) == pytest.approx(.665, abs=5e-4)
    assert _value(layer, MIXED, TARGETS_01, w) == pytest.approx(.167, abs=5e-4)
    expected = (30 * _ce(MIXED[0], 0) + 10 * _ce(MIXED[1], 1)) / 40
    assert _value(layer, MIXED, TARGETS_01, w) == pytest.approx(expected, rel=1e-5)


def test_weighted_category_cross_entropy_with_label_smoothing():
    layer = tl.WeightedCategoryCrossEntropy(label_smoothing=0.01)
    w = np.array([30, 10])
    assert _value(layer, NEAR_PERFECT, TARGETS_01, w) == pytest.approx(.069, abs=5e-4)
    assert _value(layer, MORE_RIGHT, TARGETS_01, w) == pytest.approx(.682, abs=5e-4)
    assert _value(layer, MIXED, TARGETS_01, w) == pytest.approx(.222, abs=5e-4)
    expected = (30 * _ce(MIXED[0], 0, .01) + 10 * _ce(MIXED[1], 1, .01)) / 40
    assert _value(layer, MIXED, TARGETS_01, w) == pytest.approx(expected, rel=1e-5)


# Log-probabilities [1/2, 1/4, 1/4]: the cross-entropy is log 2 for target 0
# and log 4 for targets 1 and 2.
HALF_QUARTER = np.log(np.array([[.5, .25, .25], [.5, .25, .25]], np.float32))


def test_weighted_category_cross_entropy_cutoff():
    layer = tl.WeightedCategoryCrossEntropy(cutoff=1.0)
    # Per position [log 2, log 4] -> [0, log 4 - 1].
    got = _value(layer, HALF_QUARTER, np.array([0, 1]), np.ones(2))
    assert got == pytest.approx((LN4 - 1.0) / 2, rel=1e-5)


def test_cross_entropy_loss_exact_values():
    layer = tl.CrossEntropyLoss()
    t = np.array([0, 1])
    assert _value(layer, HALF_QUARTER, t, np.ones(2)) == pytest.approx((LN2 + LN4) / 2, rel=1e-6)
    assert _value(layer, HALF_QUARTER, t, np.array([3., 1.])) == pytest.approx(
        (3 * LN2 + LN4) / 4, rel=1e-6)
    assert _value(layer, HALF_QUARTER, t, np.array([0., 2.])) == pytest.approx(LN4, rel=1e-6)
    # Trax's upstream case: (9, 4, 4, 20) ones gives a scalar.
    y = layer((np.ones((9, 4, 4, 20)), np.ones((9, 4, 4), np.int32), np.ones((9, 4, 4))))
    assert y.shape == ()
    assert float(y) == pytest.approx(math.log(20), rel=1e-6)


def test_cross_entropy_sum_exact_values():
    layer = tl.CrossEntropySum()
    got = _value(layer, HALF_QUARTER, np.array([0, 2]), np.array([3., 1.]))
    assert got == pytest.approx(3 * LN2 + LN4, rel=1e-6)


def test_cross_entropy_loss_on_logits_is_the_true_cross_entropy():
    # Trax's CrossEntropyLoss returned -sum(one_hot * logits) here: -50, a
    # "loss" that keeps falling as the logits grow. The true value is ~0.
    logits = np.array([[50., 0., -50.]], np.float32)
    got = _value(tl.CrossEntropyLoss(), logits, np.array([0]), np.ones(1))
    assert 0.0 <= got < 1e-6
    got = _value(tl.CrossEntropyLoss(), logits, np.array([2]), np.ones(1))
    assert got == pytest.approx(100.0, rel=1e-6)


CE_LAYERS = [
    ("CrossEntropyLoss", tl.CrossEntropyLoss, 3),
    ("CrossEntropyLossWithLogSoftmax", tl.CrossEntropyLossWithLogSoftmax, 3),
    ("WeightedCategoryCrossEntropy", tl.WeightedCategoryCrossEntropy, 3),
    ("WeightedCategoryCrossEntropy_ls", lambda: tl.WeightedCategoryCrossEntropy(0.1), 3),
    ("WeightedCategoryCrossEntropy_cutoff",
     lambda: tl.WeightedCategoryCrossEntropy(cutoff=0.5), 3),
    ("CategoryCrossEntropy", tl.CategoryCrossEntropy, 2),
    ("CategoryCrossEntropy_ls", lambda: tl.CategoryCrossEntropy(0.2), 2),
    ("CrossEntropySum", tl.CrossEntropySum, 3),
]

RNG = np.random.default_rng(0)
LOGITS_BTV = (3.0 * RNG.normal(size=(2, 3, 5)) + 1.0).astype(np.float32)
TARGETS_BT = np.array([[0, 4, 2], [1, 1, 3]])
WEIGHTS_BT = np.array([[1., 2., 0.], [0.5, 1., 1.]], np.float32)


@pytest.mark.parametrize("name,make,n_in", CE_LAYERS, ids=[c[0] for c in CE_LAYERS])
def test_cross_entropy_same_for_logits_and_log_probs(name, make, n_in):
    layer = make()
    extra = (WEIGHTS_BT,) if n_in == 3 else ()
    from_logits = _value(layer, LOGITS_BTV, TARGETS_BT, *extra)
    from_log_probs = _value(layer, _log_softmax(LOGITS_BTV), TARGETS_BT, *extra)
    assert from_logits == pytest.approx(from_log_probs, rel=1e-5)
    assert from_logits > 0


def test_log_prob_inputs_match_trax_formula():
    # For log-probabilities Trax's CrossEntropyLoss is -sum(one_hot(t) * x) / sum(w)
    # (weighted): the retrax value must be the same.
    logp = _log_softmax(LOGITS_BTV)
    trax_value = -np.sum(np.sum(np.eye(5)[TARGETS_BT] * logp, -1) * WEIGHTS_BT) / WEIGHTS_BT.sum()
    got = _value(tl.CrossEntropyLoss(), logp, TARGETS_BT, WEIGHTS_BT)
    assert got == pytest.approx(float(trax_value), rel=1e-5)


def test_accuracies_same_for_logits_and_log_probs():
    logp = _log_softmax(LOGITS_BTV)
    for layer in (tl.Accuracy(), tl.WeightedCategoryAccuracy(), tl.SequenceAccuracy(),
                  tl.MaskedSequenceAccuracy()):
        assert _value(layer, LOGITS_BTV, TARGETS_BT, WEIGHTS_BT) == _value(
            layer, logp, TARGETS_BT, WEIGHTS_BT)


def test_out_of_range_targets_contribute_zero_one_hot():
    # Target 9 (>= V) and -1 contribute 0 to the numerator, their weight to the denominator.
    t = np.array([0, 9])
    assert _value(tl.CrossEntropyLoss(), HALF_QUARTER, t, np.ones(2)) == pytest.approx(LN2 / 2)
    t = np.array([-1, 1])
    assert _value(tl.CrossEntropyLoss(), HALF_QUARTER, t, np.ones(2)) == pytest.approx(LN4 / 2)


def test_broadcast_weights_give_a_true_weighted_mean():
    # Weights (B, 1) against targets (B, T): each row's weight applies to all T positions.
    w_rows = np.array([[2.], [1.]], np.float32)
    full = np.broadcast_to(w_rows, TARGETS_BT.shape)
    for layer in (tl.CrossEntropyLoss(), tl.WeightedCategoryCrossEntropy(), tl.Accuracy()):
        assert _value(layer, LOGITS_BTV, TARGETS_BT, w_rows) == pytest.approx(
            _value(layer, LOGITS_BTV, TARGETS_BT, full), rel=1e-6)
    # A scalar weight is a plain mean.
    assert _value(tl.CrossEntropyLoss(), LOGITS_BTV, TARGETS_BT, np.float32(3.0)) == pytest.approx(
        _value(tl.CategoryCrossEntropy(), LOGITS_BTV, TARGETS_BT), rel=1e-6)


def test_low_precision_logits_are_computed_in_float32():
    x = jnp.asarray(LOGITS_BTV, jnp.bfloat16)
    got = tl.CrossEntropyLoss()((x, TARGETS_BT, WEIGHTS_BT))
    assert got.dtype == jnp.float32
    ref = _value(tl.CrossEntropyLoss(), np.asarray(x.astype(jnp.float32)), TARGETS_BT, WEIGHTS_BT)
    assert float(got) == pytest.approx(ref, rel=1e-6)


# --------------------------------------------------------------------------
# Binary cross-entropy
# --------------------------------------------------------------------------


def test_binary_cross_entropy():
    layer = tl.BinaryCrossEntropy()
    t = np.array([1, 1, 0, 0, 0])
    assert _value(layer, np.array([9., 9., -9., -9., -9.]), t) == pytest.approx(
        math.log1p(math.exp(-9)), abs=1e-6)                          # 0.000123
    assert _value(layer, np.array([1., 1., -1., -1., -1.]), t) == pytest.approx(.313, abs=5e-4)
    assert _value(layer, np.array([9., 1., -1., -1., -9.]), t) == pytest.approx(.188, abs=5e-4)
    assert _value(layer, np.array([-1., -1., 1., 1., 1.]), t) == pytest.approx(1.313, abs=5e-4)
    # Large logits do not overflow.
    assert _value(layer, np.array([200., -200.]), np.array([0, 1])) == pytest.approx(200.0)


def test_binary_cross_entropy_loss():
    layer = tl.BinaryCrossEntropyLoss()
    # Trax's upstream case: all ones -> a scalar (0: log 1 and 0 log 0 = 0).
    y = layer((np.ones((9, 1)), np.ones((9, 1)), np.ones((9, 1))))
    assert y.shape == () and float(y) == 0.0
    # [-log .5, -log .75, -log .8] weighted [1, 2, 1].
    p, t, w = np.array([.5, .25, .8]), np.array([1, 0, 1]), np.array([1., 2., 1.])
    expected = (LN2 - 2 * math.log(.75) - math.log(.8)) / 4
    assert _value(layer, p, t, w) == pytest.approx(expected, rel=1e-6)
    assert _value(tl.BinaryCrossEntropySum(), p, t, w) == pytest.approx(4 * expected, rel=1e-6)
    # Logits passed by mistake give NaN, not a silently wrong number.
    assert math.isnan(_value(layer, np.array([2.0, -1.0]), np.array([1, 0]), np.ones(2)))


def test_binary_cross_entropy_loss_matches_trax_for_equal_weights():
    # Trax: -(t^T log p + (1 - t)^T log(1 - p)) / B for (B, 1) inputs.
    p = np.array([[.9], [.2], [.6], [.3]])
    t = np.array([[1.], [0.], [0.], [1.]])
    trax_value = -(t.T @ np.log(p) + (1 - t).T @ np.log(1 - p)).item() / 4
    assert _value(tl.BinaryCrossEntropyLoss(), p, t, np.ones((4, 1))) == pytest.approx(
        trax_value, rel=1e-6)


# --------------------------------------------------------------------------
# Regression losses, sums, F scores
# --------------------------------------------------------------------------


def test_l2_loss():
    layer = tl.L2Loss()
    y = np.array([[1., 1.], [1., 1.]])
    t = np.array([[1., 1.], [1., 0.]])
    assert _value(layer, y, t, np.array([[1., 1.], [1., 0.]])) == 0.0
    assert _value(layer, y, t, np.array([[1., 0.], [0., 1.]])) == 0.5
    assert _value(layer, y, t, np.array([[1., 1.], [1., 3.]])) == 0.5   # 3 * 1 / 6


def test_smooth_l1_loss():
    layer = tl.SmoothL1Loss()
    y = np.array([[1., 1.], [1., 2.]])
    t = np.array([[1., 1.], [1., 0.]])
    assert _value(layer, y, t, np.array([[1., 1.], [1., 0.]])) == 0.0
    w = np.array([[1., 0.], [0., 1.]])
    assert _value(layer, y, t, w) == pytest.approx((2 - 0.5) / 2)        # |d| = 2 >= 1
    y = np.array([[1., 1.], [1., 1.5]])
    t = np.array([[1., 1.], [1., 1.]])
    assert _value(layer, y, t, w) == pytest.approx(0.5 * 0.5 ** 2 / 2)   # |d| = 0.5 < 1


def test_weighted_sum():
    layer = tl.WeightedSum()
    assert _value(layer, np.array([1., 2., 3.]), np.array([2., 0., 1.])) == 5.0
    # Weight 0 ignores a non-finite value.
    assert _value(layer, np.array([1., np.inf]), np.array([1., 0.])) == 1.0


# Predictions [1, 1, 2, 1, 1] against targets [1, 2, 2, 3, 1]:
#   category 0: never predicted, never true -> F = 0
#   category 1: 2 correct / 4 predicted / 2 true -> p = .5, r = 1, F1 = 2/3
#   category 2: 1 correct / 1 predicted / 2 true -> p = 1, r = .5, F1 = 2/3
#   category 3: 0 correct / 0 predicted / 1 true -> F = 0
F_OUTPUTS = np.eye(4, dtype=np.float32)[[1, 1, 2, 1, 1]]
F_TARGETS = np.array([1, 2, 2, 3, 1])


def test_macro_averaged_f_score():
    assert _value(tl.MacroAveragedFScore(), F_OUTPUTS, F_TARGETS) == pytest.approx(4 / 3 / 4)
    assert _value(tl.MacroAveragedFScore(initial_category_index=1), F_OUTPUTS,
                  F_TARGETS) == pytest.approx(4 / 3 / 3)
    # beta = 2: category 1 gives 5 * .5 / (4 * .5 + 1) = 5/6, category 2 gives 2.5 / 4.5.
    assert _value(tl.MacroAveragedFScore(beta=2.0), F_OUTPUTS, F_TARGETS) == pytest.approx(
        (5 / 6 + 2.5 / 4.5) / 4)


def test_weighted_f_score():
    # Supports: category 1: 2, category 2: 2, category 3: 1 -> (2 * 2/3 + 2 * 2/3) / 5.
    assert _value(tl.WeightedFScore(), F_OUTPUTS, F_TARGETS) == pytest.approx(8 / 15)
    assert _value(tl.WeightedFScore(initial_category_index=1), F_OUTPUTS,
                  F_TARGETS) == pytest.approx(8 / 15)
    # No targets among the scored categories: 0, not NaN.
    assert _value(tl.WeightedFScore(initial_category_index=3), F_OUTPUTS,
                  np.array([0, 1, 2, 1, 0])) == 0.0


def test_f_scores_on_sequences_pool_all_positions():
    out = F_OUTPUTS[np.array([[0, 1, 2, 3, 4]] * 2)]        # (2, 5, 4): the same twice
    targets = np.array([F_TARGETS, F_TARGETS])
    assert _value(tl.MacroAveragedFScore(), out, targets) == pytest.approx(1 / 3)


# --------------------------------------------------------------------------
# Names, arities, jit, grad, zero weights
# --------------------------------------------------------------------------

ALL_LAYERS = [
    (tl.CrossEntropyLoss, "CrossEntropyLoss_in3", 3),
    (tl.CrossEntropyLossWithLogSoftmax, "CrossEntropyLossWithLogSoftmax_in3", 3),
    (tl.WeightedCategoryCrossEntropy, "WeightedCategoryCrossEntropy_in3", 3),
    (tl.WeightedCategoryAccuracy, "WeightedCategoryAccuracy_in3", 3),
    (tl.CategoryCrossEntropy, "CategoryCrossEntropy_in2", 2),
    (tl.CategoryAccuracy, "CategoryAccuracy_in2", 2),
    (tl.Accuracy, "Accuracy_in3", 3),
    (tl.SequenceAccuracy, "SequenceAccuracy_in3", 3),
    (tl.MaskedSequenceAccuracy, "MaskedSequenceAccuracy_in3", 3),
    (tl.BinaryCrossEntropy, "BinaryCrossEntropy_in2", 2),
    (tl.BinaryCrossEntropyLoss, "BinaryCrossEntropyLoss_in3", 3),
    (tl.L2Loss, "L2Loss_in3", 3),
    (tl.SmoothL1Loss, "SmoothL1Loss_in3", 3),
    (tl.MacroAveragedFScore, "MacroAveragedFScore_in2", 2),
    (tl.WeightedFScore, "WeightedFScore_in2", 2),
    (tl.WeightedSum, "WeightedSum_in2", 2),
    (tl.CrossEntropySum, "CrossEntropySum_in3", 3),
    (tl.BinaryCrossEntropySum, "BinaryCrossEntropySum_in3", 3),
]


@pytest.mark.parametrize("make,printed,n_in", ALL_LAYERS, ids=[c[1] for c in ALL_LAYERS])
def test_names_and_arity(make, printed, n_in):
    layer = make()
    assert str(layer) == printed
    assert layer.n_in == n_in and layer.n_out == 1
    assert layer.name == printed.rsplit("_in", 1)[0]


def _inputs_for(make):
    """Inputs of the right kind for each layer: categorical, binary or regression."""
    if make in (tl.BinaryCrossEntropy,):
        return np.array([1.5, -0.5, 0.2], np.float32), np.array([1., 0., 1.], np.float32)
    if make in (tl.BinaryCrossEntropyLoss, tl.BinaryCrossEntropySum):
        return (np.array([.7, .2, .6], np.float32), np.array([1., 0., 1.], np.float32),
                np.array([1., 2., 1.], np.float32))
    if make in (tl.L2Loss, tl.SmoothL1Loss):
        return (np.array([[1., 3.], [0.2, 1.]], np.float32), np.zeros((2, 2), np.float32),
                np.array([[1., 2.], [1., 0.]], np.float32))
    if make is tl.WeightedSum:
        return np.array([1., 3.], np.float32), np.array([2., 1.], np.float32)
    three = (LOGITS_BTV, TARGETS_BT, WEIGHTS_BT)
    return three if make().n_in == 3 else three[:2]


@pytest.mark.parametrize("make,printed,n_in", ALL_LAYERS, ids=[c[1] for c in ALL_LAYERS])
def test_jit_and_grad_and_zero_weights(make, printed, n_in):
    layer = make()
    xs = _inputs_for(make)
    weights, state = layer.init(shapes.signature(xs))

    @jax.jit
    @jax.value_and_grad
    def f(x0, rest):
        out, _ = layer.pure_fn((x0,) + tuple(rest), weights, state, None)
        return out

    value, g = f(jnp.asarray(xs[0]), xs[1:])
    assert np.isfinite(float(value))
    assert g.shape == np.shape(xs[0]) and bool(jnp.all(jnp.isfinite(g)))
    if n_in == 3 or make is tl.WeightedSum:
        # All weights 0 (an all-padding batch): 0, not NaN, and a zero gradient.
        zero_w = np.zeros_like(xs[-1])
        value, g = f(jnp.asarray(xs[0]), xs[1:-1] + (zero_w,))
        assert float(value) == 0.0
        assert bool(jnp.all(g == 0))


def test_cross_entropy_gradient_is_weighted_softmax_minus_one_hot():
    layer = tl.CrossEntropyLoss()
    weights, state = layer.init(shapes.signature((LOGITS_BTV, TARGETS_BT, WEIGHTS_BT)))

    def f(x):
        return layer.pure_fn((x, TARGETS_BT, WEIGHTS_BT), weights, state, None)[0]

    g = np.asarray(jax.jit(jax.grad(f))(jnp.asarray(LOGITS_BTV)))
    p = np.exp(_log_softmax(LOGITS_BTV))
    expected = (WEIGHTS_BT / WEIGHTS_BT.sum())[..., None] * (p - np.eye(5)[TARGETS_BT])
    np.testing.assert_allclose(g, expected, atol=1e-6)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_targets_shape_mismatch_names_layer_and_shapes():
    with pytest.raises((ValueError, tl.LayerError)) as ei:
        tl.CrossEntropyLoss()((np.zeros((4, 5)), np.zeros((4, 1), np.int32), np.ones((4, 1))))
    msg = _cause_message(ei)
    assert "CrossEntropyLoss" in msg and "(4, 5)" in msg and "(4, 1)" in msg
    assert "expected targets of shape (4,)" in msg


@pytest.mark.parametrize("make", [tl.WeightedCategoryCrossEntropy, tl.WeightedCategoryAccuracy,
                                  tl.MaskedSequenceAccuracy, tl.CrossEntropyLoss])
def test_weights_that_do_not_broadcast_are_rejected(make):
    with pytest.raises((ValueError, tl.LayerError)) as ei:
        make()((LOGITS_BTV, TARGETS_BT, np.ones((2, 3, 1))))
    msg = _cause_message(ei)
    assert make().name in msg and "(2, 3, 1)" in msg and "(2, 3)" in msg


def test_classifier_output_shape_mismatch_is_rejected():
    layer = tl.Accuracy(classifier=tl.ThresholdToBinary())
    with pytest.raises((ValueError, tl.LayerError)) as ei:
        layer((np.zeros((4, 1)), np.zeros((4,), np.int32), np.ones((4,))))
    msg = _cause_message(ei)
    assert "Accuracy" in msg and "(4, 1)" in msg and "(4,)" in msg


@pytest.mark.parametrize("make", [tl.L2Loss, tl.SmoothL1Loss, tl.BinaryCrossEntropyLoss])
def test_elementwise_losses_reject_mismatched_targets(make):
    with pytest.raises((ValueError, tl.LayerError)) as ei:
        make()((np.zeros((4, 1)), np.zeros((4,)), np.ones((4,))))
    msg = _cause_message(ei)
    assert make().name in msg and "(4, 1)" in msg and "(4,)" in msg


def test_shape_errors_are_raised_under_jit_too():
    layer = tl.WeightedCategoryCrossEntropy()
    f = jax.jit(lambda x, t, w: layer.pure_fn((x, t, w), (), (), None)[0])
    with pytest.raises((ValueError, tl.LayerError)):
        f(np.zeros((4, 5)), np.zeros((3,), np.int32), np.ones((3,)))


def test_bad_constructor_arguments():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="label_smoothing"):
            tl.WeightedCategoryCrossEntropy(label_smoothing=bad)
        with pytest.raises(ValueError, match="label_smoothing"):
            tl.CategoryCrossEntropy(label_smoothing=bad)
    with pytest.raises(ValueError, match="cutoff"):
        tl.WeightedCategoryCrossEntropy(cutoff=-1.0)
    with pytest.raises(ValueError, match="initial_category_index"):
        tl.MacroAveragedFScore(initial_category_index=-1)
    with pytest.raises(ValueError, match="beta"):
        tl.WeightedFScore(beta=-1.0)
    with pytest.raises((ValueError, tl.LayerError)) as ei:
        tl.MacroAveragedFScore(initial_category_index=4)((F_OUTPUTS, F_TARGETS))
    assert "initial_category_index=4" in _cause_message(ei)
