"""Gaussian log-densities and a mixture-of-Gaussians loss (Trax's ``tl.log_gaussian_pdf`` ...).

Functions on arrays (not layers), as in Trax. ``sigma`` is a covariance
matrix; ``diag_sigma`` the diagonal of one (variances, not standard deviations).
Two Trax 1.4.1 bugs are not copied (``docs/differences.md``):
``log_gaussian_diag_pdf`` there computes ``x - mu / sigma`` (operator
precedence) and ``multigaussian_loss`` calls an int, so it always raises.

>>> import numpy as np
>>> from retrax import layers as tl
>>> round(float(tl.log_gaussian_diag_pdf(np.zeros(2), np.zeros(2), np.ones(2))), 6)  # -log 2pi
-1.837877
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["log_gaussian_pdf", "log_gaussian_diag_pdf", "multigaussian_loss"]


def log_gaussian_pdf(x: Any, mu: Any, sigma: Any) -> Any:
    """``log N(x | mu, sigma)`` over the last axis; ``sigma`` has shape ``(..., d, d)``."""
    d = mu.shape[-1]
    diff = jnp.asarray(x) - mu
    _, logdet = jnp.linalg.slogdet(sigma)
    solved = jnp.linalg.solve(sigma, diff[..., None])[..., 0]
    mahalanobis = jnp.sum(diff * solved, axis=-1)
    return -0.5 * (d * jnp.log(2 * jnp.pi) + logdet + mahalanobis)


def log_gaussian_diag_pdf(x: Any, mu: Any, diag_sigma: Any) -> Any:
    """``log N(x | mu, diag(diag_sigma))`` over the last axis."""
    d = mu.shape[-1]
    diff = jnp.asarray(x) - mu
    return -0.5 * (d * jnp.log(2 * jnp.pi) + jnp.sum(jnp.log(diag_sigma), axis=-1)
                   + jnp.sum(diff * diff / diag_sigma, axis=-1))


def multigaussian_loss(preds: Any, targets: Any, ngauss: int = 1) -> Any:
    """Log-likelihood of ``targets`` ``(B, d)`` under a mixture of ``ngauss`` diagonal
    Gaussians read from ``preds`` ``(B, ngauss * (2d + 1))``: mixture logits, then the
    means, then values whose squares (+1e-6) are the variances. Returns ``(B,)``."""
    d = targets.shape[-1]
    if preds.shape[-1] != ngauss * (2 * d + 1):
        raise ValueError(
            f"multigaussian_loss: preds need {ngauss} * (2 * {d} + 1) = {ngauss * (2 * d + 1)} "
            f"values per row for {ngauss} Gaussians over {d}-dim targets; got "
            f"{preds.shape[-1]}.")
    logits = preds[:, :ngauss]
    mus = preds[:, ngauss:ngauss * (d + 1)].reshape(-1, ngauss, d)
    variances = preds[:, ngauss * (d + 1):].reshape(-1, ngauss, d) ** 2 + 1e-6
    log_weights = jax.nn.log_softmax(logits, axis=-1)
    log_probs = log_gaussian_diag_pdf(targets.reshape(-1, 1, d), mus, variances)
    return jax.nn.logsumexp(log_weights + log_probs, axis=-1)
