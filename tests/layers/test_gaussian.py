"""Gaussian log-densities and the mixture loss against SciPy-free float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import layers as tl


def _logpdf(x, mu, cov):
    d = len(mu)
    diff = x - mu
    return -0.5 * (d * np.log(2 * np.pi) + np.log(np.linalg.det(cov))
                   + diff @ np.linalg.inv(cov) @ diff)


def test_full_and_diagonal_densities():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    cov = a @ a.T + 3 * np.eye(3)
    x, mu = rng.normal(size=3), rng.normal(size=3)
    got = float(tl.log_gaussian_pdf(x.astype(np.float32), mu.astype(np.float32),
                                    cov.astype(np.float32)))
    assert got == pytest.approx(_logpdf(x, mu, cov), rel=1e-5)
    var = rng.uniform(0.5, 2.0, size=3)
    got = float(tl.log_gaussian_diag_pdf(x, mu, var))
    assert got == pytest.approx(_logpdf(x, mu, np.diag(var)), rel=1e-5)
    # Batched over leading axes.
    xs = rng.normal(size=(4, 3))
    np.testing.assert_allclose(tl.log_gaussian_diag_pdf(xs, mu, var),
                               [_logpdf(r, mu, np.diag(var)) for r in xs], rtol=1e-5)


def test_mixture_loss():
    rng = np.random.default_rng(1)
    d, k = 2, 3
    preds = rng.normal(size=(5, k * (2 * d + 1))).astype(np.float32)
    targets = rng.normal(size=(5, d)).astype(np.float32)
    got = np.asarray(tl.multigaussian_loss(preds, targets, ngauss=k))
    for row in range(5):
        logits = preds[row, :k].astype(np.float64)
        mus = preds[row, k:k * (d + 1)].reshape(k, d)
        var = preds[row, k * (d + 1):].reshape(k, d).astype(np.float64) ** 2 + 1e-6
        w = np.exp(logits - logits.max())
        w /= w.sum()
        p = sum(w[j] * np.exp(_logpdf(targets[row], mus[j], np.diag(var[j]))) for j in range(k))
        assert got[row] == pytest.approx(np.log(p), rel=1e-4, abs=1e-5)
    with pytest.raises(ValueError, match=r"preds need 3 \* \(2 \* 2 \+ 1\) = 15"):
        tl.multigaussian_loss(preds[:, :-1], targets, ngauss=k)
