"""Whole-sequence LSTM and GRU recurrences with hand-written gradients (Trax's cell equations).

A recurrent layer applies its cell once per time step, and each step's gate
product ``[x_t, h_{t-1}] @ w`` is a small matrix product (a batch of rows).
Half of that work does not depend on the recurrence: ``x_t @ w_x`` for all
steps is one large product, computed here before the time loop, so the loop
(one ``lax.scan``) multiplies only ``h_{t-1} @ w_h``. The gradient is written
by hand (``jax.custom_vjp``): the backward loop carries only what the
recurrence needs and stacks the gate gradients; the weight gradients are then
two large products over all steps (``[x; h_prev]^T @ dgates``) instead of one
small product per step, and the input gradient one more. One buffer of a
gate's width per time step serves three uses in turn (the input products, the
forward pass's factors for the backward pass, the gate gradients), each step
overwriting the slot it has just read: a compiled training step then needs
less scratch memory (which the CPU backend maps afresh at every call). The
functions take the weights in Trax's fused layout (``w`` of shape
``(D + n, ...)``, rows for ``x`` first), as a checkpoint holds them.

Shapes are time-major: ``x`` is ``(T, M, D)`` (T steps, M rows: the batch),
the states ``(M, n)``. Every array must have one float dtype. The results
equal the step-by-step cells up to float rounding (the products are summed in
another order). Forward-mode differentiation (``jax.jvp``) is not defined for
these functions (``jax.custom_vjp``); reverse mode (``jax.grad``) is.

- ``lstm_sequence(x, w, b, c0, h0) -> (hs, c_T, h_T)``: ``w (D + n, 4n)``,
  gate blocks ``i, j, f, o``; ``c' = c sigmoid(f) + sigmoid(i) tanh(j)``,
  ``h' = tanh(c') sigmoid(o)``.
- ``gru_sequence(x, w1, b1, w2, b2, h0) -> (hs, h_T)``: ``w1 (D + n, 2n)``,
  ``w2 (D + n, n)``; ``u, r = sigmoid([x, h] w1 + b1)``,
  ``h' = u h + (1 - u) tanh([x, r h] w2 + b2)``.

>>> import numpy as np
>>> x = np.ones((3, 1, 2), np.float32)  # T=3, M=1, D=2
>>> w, b = np.zeros((3, 4), np.float32), np.zeros(4, np.float32)  # n = 1
>>> zero = np.zeros((1, 1), np.float32)
>>> hs, c, h = lstm_sequence(x, w, b, zero, zero)  # every gate sigmoid(0) = 1/2, tanh(0) = 0
>>> hs.shape, float(c[0, 0]), float(h[0, 0])
((3, 1, 1), 0.0, 0.0)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["lstm_sequence", "gru_sequence"]


def _check(name: str, x: Any, weights: tuple[Any, ...], states: tuple[Any, ...], n: int) -> None:
    dtypes = {jnp.dtype(a.dtype) for a in (x, *weights, *states)}
    if len(dtypes) != 1 or not jnp.issubdtype(next(iter(dtypes)), jnp.floating):
        raise TypeError(f"{name}: all arrays must have one float dtype; got "
                        f"{sorted(str(d) for d in dtypes)}.")
    if x.ndim != 3 or any(s.shape != (x.shape[1], n) for s in states):
        raise ValueError(f"{name}: expects x (T, M, D) and states (M, {n}); got x "
                         f"{tuple(x.shape)} and states {[tuple(s.shape) for s in states]}.")


def _rows(a: Any) -> Any:
    """``(T, M, K) -> (T * M, K)``."""
    return a.reshape((-1, a.shape[-1]))


def _previous(first: Any, seq: Any) -> Any:
    """The sequence shifted one step later: ``[first, seq_0, .., seq_{T-2}]``."""
    return jnp.concatenate([first[None], seq[:-1]], axis=0)


# -- LSTM ---------------------------------------------------------------------------------


def _lstm_loop(x: Any, w: Any, b: Any, c0: Any, h0: Any, keep: bool):
    """The forward recurrence; with ``keep``, also what the backward pass needs per step.

    Kept per step: ``h``, ``p`` (the factors turning ``[dc, dc, dc, dh]`` into
    the gradients of the gate pre-activations ``i, j, f, o``), ``a``
    (``dh -> dc`` at that step) and ``sigmoid(f)`` (``dc -> dc`` of the step
    before). ``p`` overwrites the input products of its step, read just before.
    """
    d = x.shape[-1]
    x_w = jnp.dot(_rows(x), w[:d]).reshape(x.shape[:2] + (w.shape[1],))
    w_h = w[d:]

    def gates(c, h, x_w_t):
        i, j, f, o = jnp.split(x_w_t + jnp.dot(h, w_h) + b, 4, axis=-1)
        si, tj, sf, so = jax.nn.sigmoid(i), jnp.tanh(j), jax.nn.sigmoid(f), jax.nn.sigmoid(o)
        new_c = c * sf + si * tj
        tc = jnp.tanh(new_c)
        return si, tj, sf, so, new_c, tc, tc * so

    if not keep:
        def step(carry, x_w_t):
            c, h = carry
            *_, new_c, _, new_h = gates(c, h, x_w_t)
            return (new_c, new_h), new_h
        return lax.scan(step, (c0, h0), x_w)

    def step_keep(carry, t):
        c, h, buf = carry
        si, tj, sf, so, new_c, tc, new_h = gates(c, h, buf[t])
        p = jnp.concatenate([tj * si * (1 - si), si * (1 - tj * tj), c * sf * (1 - sf),
                             tc * so * (1 - so)], axis=-1)
        buf = lax.dynamic_update_index_in_dim(buf, p, t, 0)
        return (new_c, new_h, buf), (new_h, so * (1 - tc * tc), sf)

    (c, h, p), (hs, a, sf) = lax.scan(step_keep, (c0, h0, x_w), jnp.arange(x.shape[0]))
    return (c, h), (hs, p, a, sf)


@jax.custom_vjp
def _lstm(x, w, b, c0, h0):
    (c, h), hs = _lstm_loop(x, w, b, c0, h0, keep=False)
    return hs, c, h


def _lstm_forward(x, w, b, c0, h0):
    (c, h), (hs, p, a, sf) = _lstm_loop(x, w, b, c0, h0, keep=True)
    return (hs, c, h), (x, w, h0, hs, p, a, sf)


def _lstm_backward(residuals, cotangents):
    x, w, h0, hs, p, a, sf = residuals
    d_hs, d_c, d_h = cotangents
    d = x.shape[-1]
    w_h_t = w[d:].T

    def step(carry, per_step):
        dc, dh, buf = carry  # dc already through the next step's forget gate
        t, dh_out, a_t, sf_t = per_step
        dh = dh + dh_out
        dc = dc + dh * a_t
        d_gates = jnp.concatenate([dc, dc, dc, dh], axis=-1) * buf[t]
        buf = lax.dynamic_update_index_in_dim(buf, d_gates, t, 0)  # p_t no longer needed
        return (dc * sf_t, jnp.dot(d_gates, w_h_t), buf), None

    (dc0, dh0, d_gates), _ = lax.scan(step, (d_c, d_h, p), (jnp.arange(x.shape[0]), d_hs, a, sf),
                                      reverse=True)
    g = _rows(d_gates)
    dw = jnp.concatenate([jnp.dot(_rows(x).T, g), jnp.dot(_rows(_previous(h0, hs)).T, g)])
    dx = jnp.dot(g, w[:d].T).reshape(x.shape)
    return dx, dw, jnp.sum(g, axis=0), dc0, dh0


_lstm.defvjp(_lstm_forward, _lstm_backward)


def lstm_sequence(x: Any, w: Any, b: Any, c0: Any, h0: Any) -> tuple[Any, Any, Any]:
    """An LSTM over axis 0 of ``x`` ``(T, M, D)`` from ``c0, h0`` ``(M, n)``.

    ``w`` is ``(D + n, 4n)`` (rows for ``x`` then ``h``; gate blocks ``i, j,
    f, o``), ``b`` is ``(4n,)``. Returns ``(hs (T, M, n), c_T, h_T)``.
    """
    n = h0.shape[-1]
    _check("lstm_sequence", x, (w, b), (c0, h0), n)
    if w.shape != (x.shape[-1] + n, 4 * n) or b.shape != (4 * n,):
        raise ValueError(f"lstm_sequence: expects w ({x.shape[-1] + n}, {4 * n}) and b "
                         f"({4 * n},); got {tuple(w.shape)} and {tuple(b.shape)}.")
    return _lstm(x, w, b, c0, h0)


# -- GRU ----------------------------------------------------------------------------------


def _gru_loop(x: Any, w1: Any, b1: Any, w2: Any, b2: Any, h0: Any, keep: bool):
    """The forward recurrence; with ``keep``, also what the backward pass needs per step.

    Kept per step: ``h``, ``r h``, ``[u, r]`` and the factors ``[k_u, k_r, k_c]``
    (see below), which overwrite the input products of their step.
    """
    d, n = x.shape[-1], h0.shape[-1]
    x_w = jnp.dot(_rows(x), jnp.concatenate([w1[:d], w2[:d]], axis=1))
    x_w = x_w.reshape(x.shape[:2] + (3 * n,))
    w1_h, w2_h = w1[d:], w2[d:]

    def cell(h, x_w_t):
        ur = jax.nn.sigmoid(x_w_t[:, :2 * n] + jnp.dot(h, w1_h) + b1)
        u, r = ur[:, :n], ur[:, n:]
        rh = r * h
        cand = jnp.tanh(x_w_t[:, 2 * n:] + jnp.dot(rh, w2_h) + b2)
        return u, r, rh, cand, u * h + (1 - u) * cand

    if not keep:
        def step(h, x_w_t):
            new_h = cell(h, x_w_t)[-1]
            return new_h, new_h
        return lax.scan(step, h0, x_w)

    def step_keep(carry, t):
        h, buf = carry
        u, r, rh, cand, new_h = cell(h, buf[t])
        # d(u pre-activation) = dh k_u, d(r pre) = d(r h) k_r, d(candidate pre) = dh k_c
        k = jnp.concatenate([(h - cand) * u * (1 - u), h * r * (1 - r),
                             (1 - u) * (1 - cand * cand)], axis=-1)
        buf = lax.dynamic_update_index_in_dim(buf, k, t, 0)
        return (new_h, buf), (new_h, rh, jnp.concatenate([u, r], axis=-1))

    (h, k), (hs, rh, ur) = lax.scan(step_keep, (h0, x_w), jnp.arange(x.shape[0]))
    return h, (hs, rh, ur, k)


@jax.custom_vjp
def _gru(x, w1, b1, w2, b2, h0):
    h, hs = _gru_loop(x, w1, b1, w2, b2, h0, keep=False)
    return hs, h


def _gru_forward(x, w1, b1, w2, b2, h0):
    h, (hs, rh, ur, k) = _gru_loop(x, w1, b1, w2, b2, h0, keep=True)
    return (hs, h), (x, w1, w2, h0, hs, rh, ur, k)


def _gru_backward(residuals, cotangents):
    x, w1, w2, h0, hs, rh, ur, k = residuals
    d_hs, d_h = cotangents
    d, n = x.shape[-1], h0.shape[-1]
    w1_h_t, w2_h_t = w1[d:].T, w2[d:].T

    def step(carry, per_step):
        dh, buf = carry
        t, dh_out, ur_t = per_step
        k_t = buf[t]
        dh = dh + dh_out
        d_cand = dh * k_t[:, 2 * n:]
        d_rh = jnp.dot(d_cand, w2_h_t)
        d_ur = jnp.concatenate([dh * k_t[:, :n], d_rh * k_t[:, n:2 * n]], axis=-1)
        buf = lax.dynamic_update_index_in_dim(buf, jnp.concatenate([d_ur, d_cand], axis=-1), t, 0)
        new_dh = dh * ur_t[:, :n] + d_rh * ur_t[:, n:] + jnp.dot(d_ur, w1_h_t)
        return (new_dh, buf), None

    (dh0, g), _ = lax.scan(step, (d_h, k), (jnp.arange(x.shape[0]), d_hs, ur), reverse=True)
    g = _rows(g)
    g1, g2 = g[:, :2 * n], g[:, 2 * n:]
    x2 = _rows(x)
    dw_x = jnp.dot(x2.T, g)
    dw1 = jnp.concatenate([dw_x[:, :2 * n], jnp.dot(_rows(_previous(h0, hs)).T, g1)])
    dw2 = jnp.concatenate([dw_x[:, 2 * n:], jnp.dot(_rows(rh).T, g2)])
    dx = jnp.dot(g, jnp.concatenate([w1[:d], w2[:d]], axis=1).T).reshape(x.shape)
    db = jnp.sum(g, axis=0)
    return dx, dw1, db[:2 * n], dw2, db[2 * n:], dh0


_gru.defvjp(_gru_forward, _gru_backward)


def gru_sequence(x: Any, w1: Any, b1: Any, w2: Any, b2: Any, h0: Any) -> tuple[Any, Any]:
    """A GRU over axis 0 of ``x`` ``(T, M, D)`` from ``h0`` ``(M, n)``.

    ``w1`` is ``(D + n, 2n)`` (blocks ``u, r``), ``w2`` ``(D + n, n)``, rows
    for ``x`` then ``h``; ``b1 (2n,)``, ``b2 (n,)``. Returns ``(hs (T, M, n), h_T)``.
    """
    n = h0.shape[-1]
    _check("gru_sequence", x, (w1, b1, w2, b2), (h0,), n)
    rows = x.shape[-1] + n
    if (w1.shape, b1.shape, w2.shape, b2.shape) != ((rows, 2 * n), (2 * n,), (rows, n), (n,)):
        raise ValueError(
            f"gru_sequence: expects w1 ({rows}, {2 * n}), b1 ({2 * n},), w2 ({rows}, {n}), b2 "
            f"({n},); got {[tuple(a.shape) for a in (w1, b1, w2, b2)]}.")
    return _gru(x, w1, b1, w2, b2, h0)
