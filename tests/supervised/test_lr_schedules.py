"""Tests for retrax.supervised.lr_schedules (``trax.lr``)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from retrax.supervised import lr_schedules as lr


def _jit_values(schedule, steps):
    fn = jax.jit(schedule)
    return [float(fn(jnp.asarray(s))) for s in steps]


def test_constant_is_constant():
    schedule = lr.constant(0.01)
    values = [schedule(s) for s in (0, 1, 2, 100, 10**7)]
    assert values == [0.01] * 5
    assert all(type(v) is float for v in values)
    assert _jit_values(schedule, [0, 5]) == pytest.approx([0.01, 0.01], rel=1e-7)


def test_warmup_linear_from_zero():
    schedule = lr.warmup(4, 1.0)
    assert [schedule(s) for s in range(8)] == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], abs=1e-15)
    assert _jit_values(schedule, range(8)) == pytest.approx(
        [0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0], rel=1e-6)
    assert lr.warmup(0, 0.5)(1) == 0.5


def test_warmup_and_rsqrt_decay_reference_values():
    schedule = lr.warmup_and_rsqrt_decay(2, 0.01)
    expected = [0.01 / 3, 0.02 / 3, 0.01, 0.01 * math.sqrt(3) / 2]
    got = [schedule(s) for s in (1, 2, 3, 4)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert [round(v, 5) for v in got] == [0.00333, 0.00667, 0.01, 0.00866]
    np.testing.assert_allclose(_jit_values(schedule, (1, 2, 4)),
                               [0.00333, 0.00667, 0.00866], atol=1e-5)
    assert schedule(3 * 100) == pytest.approx(0.01 / 10)


def test_cosine_sawtooth():
    schedule = lr.cosine_sawtooth(1, 1.0, 4, min_value=0.0)
    expected = [0.0, 0.5, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                (1 - math.cos(math.pi / 4)) / 2, 1.0]
    assert [schedule(s) for s in range(7)] == pytest.approx(expected, abs=1e-12)
    np.testing.assert_allclose(_jit_values(schedule, range(7)), expected,
                               atol=1e-6)
    assert lr.cosine_sawtooth(0, 1.0, 10)(6) == pytest.approx(
        1e-5 + (1 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_cosine():
    schedule = lr.cosine(10, 2.0, n_warmup_steps=2, min_value=0.5)
    got = [schedule(s) for s in (0, 1, 2, 6, 10, 50)]
    assert got == pytest.approx([0.0, 1.0, 2.0, 1.25, 0.5, 0.5], rel=1e-6)
    no_warmup = lr.cosine(4, 1.0)
    assert [no_warmup(s) for s in range(5)] == pytest.approx(
        [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
         (1 - math.cos(math.pi / 4)) / 2, 0.0], abs=1e-6)
    np.testing.assert_allclose(_jit_values(schedule, (0, 6, 10)),
                               [0.0, 1.25, 0.5], rtol=1e-6)


def test_multifactor_default():
    schedule = lr.multifactor()
    steps = (0, 1, 200, 400, 1600, 10000)
    expected = [0.1 * min(1, s / 400) / math.sqrt(max(s, 400)) for s in steps]
    assert [schedule(s) for s in steps] == pytest.approx(expected, rel=1e-12)
    assert schedule(400) == pytest.approx(0.005)
    np.testing.assert_allclose(_jit_values(schedule, steps), expected, rtol=1e-6)


def test_multifactor_each_factor():
    def mf(factors, step, **kw):
        return lr.multifactor(factors, **kw)(step)

    assert mf('constant', 7, constant=0.3) == 0.3
    assert mf('two_constants', 9, constant=0.3, second_constant_step=10) == 0.3
    assert mf('two_constants', 10, constant=0.3, second_constant_step=10) == 0.01
    assert mf('linear_warmup', 50, warmup_steps=200) == 0.25
    assert mf('linear_warmup', 0, warmup_steps=0) == 1.0
    assert mf('rsqrt_decay', 10000, warmup_steps=400) == pytest.approx(0.01)
    assert mf('rsqrt_normalized_decay', 1600, warmup_steps=400) == (
        pytest.approx(0.5))
    assert mf('rsqrt_normalized_decay', 100, warmup_steps=400) == 1.0
    assert mf('decay_every', 45, decay_factor=0.5, steps_per_decay=10) == 0.0625
    assert mf('cosine_decay', 150, warmup_steps=100, steps_per_cycle=200) == (
        pytest.approx(0.5 * (1 + math.cos(math.pi / 4))))
    assert mf('cosine_decay', 300, warmup_steps=100, steps_per_cycle=200) == (
        pytest.approx(1.0))
    assert mf('constant*decay_every', 25, constant=2.0, steps_per_decay=10) == 0.5
    assert mf('constant * decay_every', 100, constant=1.0, steps_per_decay=1,
              minimum=0.001) == 0.001


def test_multifactor_factors_inside_jit():
    schedule = lr.multifactor(
        'constant * two_constants * linear_warmup * rsqrt_normalized_decay '
        '* decay_every * cosine_decay', constant=2.0, warmup_steps=10,
        steps_per_decay=50, steps_per_cycle=100, second_constant_step=60,
        second_constant=0.5, minimum=1e-4)
    steps = [0, 5, 10, 55, 60, 200]
    np.testing.assert_allclose(_jit_values(schedule, steps),
                               [schedule(s) for s in steps], rtol=1e-5,
                               atol=1e-7)


def test_multifactor_unknown_factor():
    with pytest.raises(ValueError, match=r"multifactor: unknown factor "
                       r"'rsqrt_dcay' in factors='constant \* rsqrt_dcay'; "
                       r"expected names from constant, two_constants"):
        lr.multifactor('constant * rsqrt_dcay')


@pytest.mark.parametrize('make, pattern', [
    (lambda: lr.warmup(-1, 0.1),
     r"warmup: n_warmup_steps must be an integer >= 0, got -1\."),
    (lambda: lr.warmup(2.5, 0.1), r"warmup: n_warmup_steps .* got 2.5"),
    (lambda: lr.constant(-0.1),
     r"constant: value must be a finite number >= 0, got -0.1\."),
    (lambda: lr.warmup_and_rsqrt_decay(10, float('nan')),
     r"warmup_and_rsqrt_decay: max_value .* got nan"),
    (lambda: lr.cosine(5, 1.0, n_warmup_steps=5),
     r"cosine: n_steps must be an integer >= 6, got 5\."),
    (lambda: lr.cosine_sawtooth(0, 1.0, 0),
     r"cosine_sawtooth: steps_per_cycle must be an integer >= 1, got 0\."),
    (lambda: lr.multifactor(steps_per_decay=0),
     r"multifactor: steps_per_decay must be an integer >= 1, got 0\."),
])
def test_invalid_arguments(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_numpy_and_jax_array_steps():
    schedule = lr.warmup(4, 1.0)
    assert schedule(np.int64(2)) == pytest.approx(0.4)
    assert type(schedule(np.int64(2))) is float
    out = schedule(jnp.array(2))
    assert isinstance(out, jax.Array) and out.dtype == jnp.float32
    assert float(out) == pytest.approx(0.4)


def test_repr():
    assert repr(lr.warmup(4, 1.0)) == 'warmup(n_warmup_steps=4, max_value=1.0)'
