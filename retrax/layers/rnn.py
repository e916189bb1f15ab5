"""Recurrent layers, as Trax's ``trax.layers.rnn``: LSTM, GRU, SRU and their cells.

A *cell* computes one time step, ``(x_t, state) -> (y_t, new_state)``, on
arrays of any leading axes. A recurrent layer runs a cell over axis 1 of
``(B, T, D)`` inputs with ``tl.Scan`` (one ``lax.scan``), starting from zeros
that ``MakeZeroState`` shapes after the input::

    LSTM(n) == Serial(Branch([], MakeZeroState(depth_multiplier=2)),
                      Scan(LSTMCell(n), axis=1), Select([0], n_in=2))

so the layer tree, the printed name, ``n_in``/``n_out`` and the weight tree
are Trax 1.4.1's, and Trax checkpoints load one to one. In ``'predict'`` mode
the ``Scan`` keeps its final carries in its state and starts the next call
from them: a sequence fed piece by piece (one token at a time while decoding)
gives the outputs of the whole sequence fed at once.

Each cell computes its gates with one matrix product over the concatenation
``[x_t, h_{t-1}]`` (Trax's fused layout):

- ``LSTMCell(n)``: weights ``(w (D+n, 4n), b (4n,))``, gate blocks
  ``i, j, f, o`` in that order; the state is ``[c, h]``, ``(..., 2n)``.
  ``forget_bias`` is added to the whole initial bias, as Trax does.
- ``GRUCell(n)``: weights ``(w1 (D+n, 2n), b1 (2n,), w2 (D+n, n), b2 (n,))``;
  ``u, r = sigmoid([x, h] w1 + b1)``, ``c = tanh([x, r h] w2 + b2)``,
  ``h' = u h + (1 - u) c``; the state is ``h``, ``(..., n)``.
- ``SRU(n)``: one ``Dense(3n)`` for ``r, f, y``; the scan is the elementwise
  ``c_t = f_t c_{t-1} + (1 - f_t) y_t``; ``h_t = r_t act(c_t) + sqrt(3) (1 - r_t) x_t``.

Shapes: B batch, T time, D input features, n units.

``LSTMCell`` and ``GRUCell`` also compute a whole ``Scan`` at once (their
``scan_sequence``, see ``tl.Scan``): the input half of every step's gate
product is one large product before the time loop, and the gradient is
written by hand (``retrax.fastmath.recurrent``). The weights, the results (up
to float rounding) and the layer tree are those of the step-by-step scan. A
call of one step (decoding in ``'predict'`` mode) runs the cell itself.

>>> import numpy as np
>>> from retrax import layers as tl, shapes
>>> lstm = tl.LSTM(4)
>>> lstm, lstm.n_in, lstm.n_out
(LSTM_4, 1, 1)
>>> w, _ = lstm.init(shapes.ShapeDtype((2, 5, 4)))
>>> [a.shape for a in w[1][0]]  # the LSTMCell inside the Scan: (w, b)
[(8, 16), (16,)]
>>> lstm(np.ones((2, 5, 4), np.float32)).shape
(2, 5, 4)
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from retrax.fastmath import recurrent
from retrax.fastmath.linalg import dense_dot
from retrax.layers import activation_fns, convolution
from retrax.layers import initializers as init
from retrax.layers.base import Fn, Layer, init_rng_split
from retrax.layers.control_flow import Scan
from retrax.layers.core import Dense, Dropout, check_mode
from retrax.layers.merge import Concatenate, Gate, Multiply, Split
from retrax.layers.stack_combinators import Branch, Dup, Parallel, Select, Serial

__all__ = [
    "LSTMCell", "LSTM", "GRUCell", "GRU", "MakeZeroState", "ConvGRUCell", "GeneralGRUCell",
    "InnerSRUCell", "ScanSRUCell", "SRU", "Bidirectional",
]


def _positive(owner: str, arg: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{owner}: {arg} must be a positive int; got {value!r}.")
    return int(value)


def _check_step(owner: str, x: Any, state: Any, state_width: int, what: str) -> None:
    """A cell's ``(x, state)`` (arrays or signatures): floats with the same leading axes."""
    for name, a in (("input", x), ("state", state)):
        if not jnp.issubdtype(a.dtype, jnp.floating):
            hint = ("Token ids go through tl.Embedding first; cast other data with "
                    ".astype(np.float32)." if name == "input" else
                    "Make it with tl.MakeZeroState or pass a float array.")
            raise TypeError(
                f"{owner} expects a float {name}; got dtype {jnp.dtype(a.dtype)} (shape "
                f"{tuple(a.shape)}). {hint}"
            )
    if len(x.shape) < 1 or tuple(x.shape[:-1]) != tuple(state.shape[:-1]):
        raise ValueError(
            f"{owner}: the input (shape {tuple(x.shape)}) and the state (shape "
            f"{tuple(state.shape)}) must have the same leading (batch) axes and a feature "
            f"axis last. A recurrent layer feeds its cell one time step of (batch, length, "
            f"features) inputs: check the input's rank."
        )
    if state.shape[-1] != state_width:
        raise ValueError(
            f"{owner}: the state's last axis must be {state_width} ({what}); got shape "
            f"{tuple(state.shape)}. Inside tl.LSTM / tl.GRU (and the RNN models) the zero "
            f"state is shaped after the input (MakeZeroState, as in Trax), so their input "
            f"must have n_units features: project it first, e.g. with tl.Dense(n_units)."
        )


def _check_width(owner: str, x: Any, kernel: Any, n_units: int) -> None:
    d_in = kernel.shape[0] - n_units
    if x.shape[-1] != d_in:
        raise ValueError(
            f"{owner} was initialized for inputs with {d_in} features (its kernel is "
            f"{tuple(kernel.shape)} = (features + n_units, ...)), but got inputs of shape "
            f"{tuple(x.shape)}. Feed inputs with {d_in} features, or re-run init() with the "
            f"new input signature."
        )


def _weight_arrays(weights: Any, count: int) -> tuple | None:
    """``weights`` as ``count`` arrays, or None (a shared-layer marker, another tree)."""
    if not isinstance(weights, (tuple, list)) or len(weights) != count:
        return None
    if not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in weights):
        return None
    return tuple(weights)


def _sequence_fits(owner: str, x: Any, state: Any, state_width: int, weights: tuple,
                   n_units: int, columns: tuple[int, ...]) -> bool:
    """Whether a cell's whole-sequence path takes ``x`` (scanned axis first) and ``state``.

    Everything the step-by-step path would accept, with weights shaped as
    ``init`` makes them (kernels ``(D + n_units, k)``, biases ``(k,)`` for
    ``k`` in ``columns``), one float dtype for all arrays and at least two
    steps; anything else goes step by step, where bad input gets its error. (A
    single step, as when decoding, gains nothing from hoisting the input
    products: the cell's one fused product is faster.)
    """
    if len(x.shape) < 2 or x.shape[0] < 2:
        return False
    try:
        step = jax.ShapeDtypeStruct(tuple(x.shape[1:]), x.dtype)
        _check_step(owner, step, state, state_width, "")
        _check_width(owner, step, weights[0], n_units)
    except (TypeError, ValueError):
        return False
    rows = x.shape[-1] + n_units
    shapes = [s for k in columns for s in ((rows, k), (k,))]
    return ([tuple(a.shape) for a in weights] == shapes
            and len({jnp.dtype(a.dtype) for a in (x, state, *weights)}) == 1)


class LSTMCell(Layer):
    """One LSTM step: ``(x, [c, h]) -> (h', [c', h'])`` (2 -> 2).

    Gates from one product: ``i, j, f, o = split([x, h] @ w + b, 4)``;
    ``c' = c * sigmoid(f) + sigmoid(i) * tanh(j)``, ``h' = tanh(c') * sigmoid(o)``.
    ``x`` is ``(..., D)``, the state ``(..., 2 * n_units)`` (``c`` then ``h``).
    Weights ``(w, b)``: ``w (D + n_units, 4 * n_units)``, ``b (4 * n_units,)``,
    ``b`` starting at ``bias_initializer + forget_bias`` (every gate, as in Trax).

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> cell = tl.LSTMCell(2)
    >>> _ = cell.init((shapes.ShapeDtype((1, 3)), shapes.ShapeDtype((1, 4))))
    >>> cell.weights = (np.zeros((5, 8), np.float32), np.zeros(8, np.float32))
    >>> h, state = cell((np.ones((1, 3), np.float32), np.ones((1, 4), np.float32)))
    >>> h.tolist(), state.tolist()  # c' = c/2 + 0, h' = tanh(c')/2
    ([[0.2310..., 0.2310...]], [[0.5, 0.5, 0.2310..., 0.2310...]])
    """

    def __init__(self, n_units: int, forget_bias: float = 1.0,
                 kernel_initializer: Callable = init.GlorotUniformInitializer(),
                 bias_initializer: Callable = init.RandomNormalInitializer(1e-6)):
        super().__init__(n_in=2, n_out=2)
        self._n_units = _positive("LSTMCell", "n_units", n_units)
        self._forget_bias = forget_bias
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer

    def init_weights_and_state(self, input_signature):
        x, state = input_signature
        n = self._n_units
        _check_step(self.name, x, state, 2 * n, f"2 * n_units: c and h of {n} each")
        rng_w, rng_b = init_rng_split(self.rng, 2)
        w = self._kernel_initializer((x.shape[-1] + n, 4 * n), rng_w)
        b = self._bias_initializer((4 * n,), rng_b) + self._forget_bias
        self.weights = (w, b)

    def forward(self, inputs):
        x, state = inputs
        w, b = self.weights
        n = self._n_units
        _check_step(self.name, x, state, 2 * n, f"2 * n_units: c and h of {n} each")
        _check_width(self.name, x, w, n)
        c, h = jnp.split(state, 2, axis=-1)
        gates = dense_dot(jnp.concatenate([x, h], axis=-1), w) + b
        i, j, f, o = jnp.split(gates, 4, axis=-1)
        new_c = c * jax.nn.sigmoid(f) + jax.nn.sigmoid(i) * jnp.tanh(j)
        new_h = jnp.tanh(new_c) * jax.nn.sigmoid(o)
        return new_h, jnp.concatenate([new_c, new_h], axis=-1)

    def scan_sequence(self, xs: list, carries: list, weights: Any, state: Any):
        """All steps at once, for ``tl.Scan``: ``([hs], [final [c, h]], state)`` or None.

        ``xs == [x]`` with time first, ``(T, ..., D)``; ``carries == [[c, h]]``.
        Computes what ``forward`` step by step would (``retrax.fastmath.recurrent``);
        None (step by step) for a subclass with its own ``forward``.
        """
        n = self._n_units
        arrays = _weight_arrays(weights, 2)
        if (type(self).forward is not LSTMCell.forward  # a subclass's own step
                or len(xs) != 1 or len(carries) != 1 or arrays is None
                or not _sequence_fits(self.name, xs[0], carries[0], 2 * n, arrays, n, (4 * n,))):
            return None
        x, carry = xs[0], carries[0]
        c0, h0 = jnp.split(carry.reshape((-1, 2 * n)), 2, axis=-1)
        hs, c, h = recurrent.lstm_sequence(x.reshape((x.shape[0], -1, x.shape[-1])),
                                           *arrays, c0, h0)
        final = jnp.concatenate([c, h], axis=-1).reshape(carry.shape)
        return [hs.reshape(tuple(x.shape[:-1]) + (n,))], [final], state


class GRUCell(Layer):
    """One GRU step: ``(x, h) -> (h', h')`` (2 -> 2).

    ``u, r = split(sigmoid([x, h] @ w1 + b1), 2)``,
    ``c = [x, r * h] @ w2 + b2``, ``h' = u * h + (1 - u) * tanh(c)``.
    ``x`` is ``(..., D)``, ``h`` is ``(..., n_units)``. Weights
    ``(w1 (D + n, 2n), b1 (2n,), w2 (D + n, n), b2 (n,))``; ``forget_bias`` is
    added to ``b1`` at init.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> cell = tl.GRUCell(2)
    >>> _ = cell.init((shapes.ShapeDtype((1, 3)), shapes.ShapeDtype((1, 2))))
    >>> cell.weights = tuple(np.zeros(w.shape, np.float32) for w in cell.weights)
    >>> h, _ = cell((np.ones((1, 3), np.float32), np.ones((1, 2), np.float32)))
    >>> h.tolist()  # u = 1/2, tanh(c) = 0
    [[0.5, 0.5]]
    """

    def __init__(self, n_units: int, forget_bias: float = 0.0,
                 kernel_initializer: Callable = init.RandomUniformInitializer(0.01),
                 bias_initializer: Callable = init.RandomNormalInitializer(1e-6)):
        super().__init__(n_in=2, n_out=2)
        self._n_units = _positive("GRUCell", "n_units", n_units)
        self._forget_bias = forget_bias
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer

    def init_weights_and_state(self, input_signature):
        x, state = input_signature
        n = self._n_units
        _check_step(self.name, x, state, n, "n_units")
        rngs = init_rng_split(self.rng, 4)
        d = x.shape[-1] + n
        w1 = self._kernel_initializer((d, 2 * n), rngs[0])
        b1 = self._bias_initializer((2 * n,), rngs[1]) + self._forget_bias
        w2 = self._kernel_initializer((d, n), rngs[2])
        b2 = self._bias_initializer((n,), rngs[3])
        self.weights = (w1, b1, w2, b2)

    def forward(self, inputs):
        x, h = inputs
        w1, b1, w2, b2 = self.weights
        _check_step(self.name, x, h, self._n_units, "n_units")
        _check_width(self.name, x, w1, self._n_units)
        u, r = jnp.split(jax.nn.sigmoid(dense_dot(jnp.concatenate([x, h], -1), w1) + b1), 2, -1)
        c = dense_dot(jnp.concatenate([x, r * h], -1), w2) + b2
        new_h = u * h + (1.0 - u) * jnp.tanh(c)
        return new_h, new_h

    def scan_sequence(self, xs: list, carries: list, weights: Any, state: Any):
        """All steps at once, for ``tl.Scan``: ``([hs], [final h], state)`` or None.

        ``xs == [x]`` with time first, ``(T, ..., D)``; ``carries == [h]``.
        Computes what ``forward`` step by step would (``retrax.fastmath.recurrent``);
        None (step by step) for a subclass with its own ``forward``.
        """
        n = self._n_units
        arrays = _weight_arrays(weights, 4)
        if (type(self).forward is not GRUCell.forward  # a subclass's own step
                or len(xs) != 1 or len(carries) != 1 or arrays is None
                or not _sequence_fits(self.name, xs[0], carries[0], n, arrays, n, (2 * n, n))):
            return None
        x, h0 = xs[0], carries[0]
        hs, h = recurrent.gru_sequence(x.reshape((x.shape[0], -1, x.shape[-1])), *arrays,
                                       h0.reshape((-1, n)))
        return [hs.reshape(tuple(x.shape[:-1]) + (n,))], [h.reshape(h0.shape)], state


def MakeZeroState(depth_multiplier: int = 1) -> Layer:  # noqa: N802
    """Float32 zeros ``(B, depth_multiplier * D)`` for an input ``(B, T, D)``; 1 -> 1.

    The initial state of a recurrent layer (``LSTM`` uses 2: ``c`` and ``h``).

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> tl.MakeZeroState(depth_multiplier=2)(np.ones((3, 5, 4))).shape
    (3, 8)
    """
    depth_multiplier = _positive("MakeZeroState", "depth_multiplier", depth_multiplier)

    def zeros(x):
        if len(x.shape) != 3:
            raise ValueError(
                f"MakeZeroState expects a rank-3 input (batch, length, features); got shape "
                f"{tuple(x.shape)}. Recurrent layers (LSTM, GRU, SRU, RNN models) run over "
                f"axis 1 of (batch, length, features) arrays: embed token ids with "
                f"tl.Embedding, or add the missing axis (x[:, :, None] or x[:, None, :])."
            )
        return jnp.zeros((x.shape[0], depth_multiplier * x.shape[-1]), jnp.float32)

    return Fn("MakeZeroState", zeros)


def LSTM(n_units: int, mode: str = "train", return_state: bool = False,  # noqa: N802
         initial_state: bool = False) -> Layer:
    """An LSTM over axis 1: ``(B, T, D) -> (B, T, n_units)``.

    ``initial_state=True`` takes the state ``[c, h]`` ``(B, 2 * n_units)`` from
    the stack (2 inputs) instead of zeros; ``return_state=True`` also returns
    the final state (2 outputs). In ``'predict'`` mode the final state is kept
    and the next call continues from it.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> lstm = tl.LSTM(3, return_state=True, initial_state=True)
    >>> lstm, lstm.n_in, lstm.n_out
    (LSTM_3_in2_out2, 2, 2)
    """
    n_units = _positive("LSTM", "n_units", n_units)
    check_mode("LSTM", mode)
    layers = [] if initial_state else [Branch([], MakeZeroState(depth_multiplier=2))]
    layers.append(Scan(LSTMCell(n_units=n_units), axis=1, mode=mode))
    if not return_state:
        layers.append(Select([0], n_in=2))  # drop the final state
    return Serial(layers, name=f"LSTM_{n_units}", sublayers_to_print=[])


def GRU(n_units: int, mode: str = "train") -> Layer:  # noqa: N802
    """A GRU over axis 1 from a zero state: ``(B, T, D) -> (B, T, n_units)``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> gru = tl.GRU(5)
    >>> _ = gru.init(shapes.ShapeDtype((2, 4, 5)))
    >>> gru, gru(np.ones((2, 4, 5), np.float32)).shape
    (GRU_5, (2, 4, 5))
    """
    n_units = _positive("GRU", "n_units", n_units)
    check_mode("GRU", mode)
    return Serial(
        Branch([], MakeZeroState(depth_multiplier=1)),
        Scan(GRUCell(n_units=n_units), axis=1, mode=mode),
        Select([0], n_in=2),  # drop the final state
        name=f"GRU_{n_units}", sublayers_to_print=[],
    )


def GeneralGRUCell(candidate_transform: Callable[[], Any],  # noqa: N802
                   memory_transform_fn: Callable[[], Any] | None = None,
                   gate_nonlinearity: Callable[[], Layer] = activation_fns.Sigmoid,
                   candidate_nonlinearity: Callable[[], Layer] = activation_fns.Tanh,
                   dropout_rate_c: float = 0.1, sigmoid_bias: float = 0.5, *,
                   mode: str = "train") -> Layer:
    """A GRU cell on the state alone, with transforms of your choice; 1 -> 1.

    For the state ``s`` (``candidate_transform()`` makes a fresh layer each time)::

        u = gate_nonlinearity(T_u(s) + sigmoid_bias)
        r = gate_nonlinearity(T_r(s) + sigmoid_bias)
        c = Dropout(dropout_rate_c)(candidate_nonlinearity(T_c(r * s)))
        s' = u * M(s) + (1 - u) * c

    with ``M = memory_transform_fn()`` (the identity when None). Weights, in
    order: those of ``M``, ``T_u``, ``T_r``, ``T_c``. ``mode`` (keyword-only,
    a retrax addition) is the Dropout's; Trax always drops (``'train'``).
    """
    check_mode("GeneralGRUCell", mode)

    def add_bias():
        return Fn("AddSigmoidBias({sigmoid_bias})", lambda x: x + sigmoid_bias)

    gate = [candidate_transform(), add_bias(), gate_nonlinearity()]  # u
    reset = [candidate_transform(), add_bias(), gate_nonlinearity()]  # r
    candidate = [
        Dup(), reset, Multiply(),  # r * s
        candidate_transform(), candidate_nonlinearity(),
        Dropout(rate=dropout_rate_c, mode=mode),  # only on c, as in the paper
    ]
    memory = memory_transform_fn() if memory_transform_fn else []
    return Serial(Branch(memory, gate, candidate), Gate())


def ConvGRUCell(n_units: int, kernel_size: tuple[int, int] = (3, 3), *,  # noqa: N802
                mode: str = "train") -> Layer:
    """A convolutional GRU cell (arXiv:1511.06432) on ``(B, H, W, n_units)`` states; 1 -> 1.

    ``GeneralGRUCell`` whose transforms are ``Conv(n_units, kernel_size,
    padding='SAME')``; the output has the input's shape. ``mode`` as in
    ``GeneralGRUCell``.
    """
    n_units = _positive("ConvGRUCell", "n_units", n_units)

    def conv():
        return convolution.Conv(filters=n_units, kernel_size=kernel_size, padding="SAME")

    return GeneralGRUCell(candidate_transform=conv, memory_transform_fn=None,
                          gate_nonlinearity=activation_fns.Sigmoid,
                          candidate_nonlinearity=activation_fns.Tanh, mode=mode)


def InnerSRUCell() -> Layer:  # noqa: N802
    """The SRU recurrence for one step: ``(x (1 - f), f, c) -> (c', c')``; 3 -> 2.

    ``c' = f * c + x (1 - f)``.

    >>> import numpy as np
    >>> from retrax import layers as tl
    >>> [a.item() for a in tl.InnerSRUCell()((np.array(1.0), np.array(0.5), np.array(4.0)))]
    [3.0, 3.0]
    """
    def step(x_times_one_minus_f, f, c):
        new_c = f * c + x_times_one_minus_f
        return new_c, new_c

    return Fn("InnerSRUCell", step, n_out=2)


def ScanSRUCell(mode: str, monkey_patched_mask: Any = None) -> Layer:  # noqa: N802
    """``InnerSRUCell`` scanned over axis 1: ``(x (1 - f), f, c0) -> (cs, c_T)``; 3 -> 2.

    ``monkey_patched_mask`` (Trax's Terraformer hook) is not supported.
    """
    if monkey_patched_mask is not None:
        raise NotImplementedError(
            "ScanSRUCell: monkey_patched_mask (Trax's Terraformer predict-mode hook) is not "
            "implemented; pass None."
        )
    check_mode("ScanSRUCell", mode)
    return Scan(InnerSRUCell(), axis=1, mode=mode)


def SRU(n_units: int, activation: Layer | None = None, mode: str = "train") -> Layer:  # noqa: N802
    """Simple Recurrent Unit (arXiv:1709.02755) over axis 1: ``(B, T, n) -> (B, T, n)``.

    ``r, f, y = split(Dense(3n)(x), 3)`` with ``r, f`` through a sigmoid;
    ``c_t = f_t c_{t-1} + (1 - f_t) y_t`` (the scan, elementwise);
    ``h_t = r_t act(c_t) + sqrt(3) (1 - r_t) x_t`` (Trax's scaling). The input
    must have ``n_units`` features. Weights: the ``Dense``'s ``(w, b)``.

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> sru = tl.SRU(4)
    >>> _ = sru.init(shapes.ShapeDtype((2, 3, 4)))
    >>> sru, sru(np.ones((2, 3, 4), np.float32)).shape
    (SRU_4, (2, 3, 4))
    """
    n_units = _positive("SRU", "n_units", n_units)
    check_mode("SRU", mode)
    sigmoid = activation_fns.Sigmoid()
    owner = f"SRU_{n_units}"

    def final_gate(c, r, x):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(
                f"{owner} expects float inputs; got dtype {jnp.dtype(x.dtype)}. Token ids go "
                f"through tl.Embedding first; cast other data with .astype(np.float32)."
            )
        if tuple(x.shape) != tuple(c.shape):
            raise ValueError(
                f"{owner}: its input must have n_units={n_units} features (an SRU mixes its "
                f"input into its output); got shape {tuple(x.shape)}. Project the input "
                f"first, e.g. with tl.Dense({n_units})."
            )
        return c * r + x * (1.0 - r) * (3.0 ** 0.5)

    return Serial(                                              # x
        Branch(Dense(3 * n_units), []),                         # r_f_y, x
        Split(n_items=3),                                       # r, f, y, x
        Parallel(sigmoid, sigmoid),                             # r, f, y, x
        Fn("", lambda r, f, y: (y * (1.0 - f), f, r), n_out=3),  # y (1 - f), f, r, x
        Parallel([], [], Branch(MakeZeroState(), [])),          # y (1 - f), f, c0, r, x
        ScanSRUCell(mode=mode),                                 # cs, c_T, r, x
        Select([0], n_in=2),                                    # cs, r, x
        activation if activation is not None else [],           # act(cs), r, x
        Fn("FinalSRUGate", final_gate),
        name=owner, sublayers_to_print=[],
    )


def Bidirectional(forward_layer: Layer, axis: int = 1,  # noqa: N802
                  merge_layer: Layer | None = None) -> Layer:
    """Runs ``forward_layer`` and a copy of it on the time-reversed input; merges them.

    For a 1 -> 1 recurrent layer ``F`` and input ``x``::

        outputs: merge(F(x), flip(F'(flip(x))))

    where ``F'`` is a deep copy of ``F`` (its own weights) and ``flip``
    reverses ``axis``. ``merge_layer`` defaults to a new ``Concatenate()``
    (features of both directions side by side). Weights, as in Trax:
    ``(((), (F, ((), F', marker))), merge)`` (``Branch`` is ``Serial(Select,
    Parallel)``; the one flip layer runs twice, so its second entry is the
    shared-weights marker).

    >>> import numpy as np
    >>> from retrax import layers as tl, shapes
    >>> bi = tl.Bidirectional(tl.GRU(3))
    >>> _ = bi.init(shapes.ShapeDtype((2, 5, 3)))
    >>> bi(np.ones((2, 5, 3), np.float32)).shape
    (2, 5, 6)
    """
    if not isinstance(forward_layer, Layer):
        raise TypeError(f"Bidirectional: forward_layer must be a Layer; got "
                        f"{type(forward_layer).__name__}.")
    backward_layer = copy.deepcopy(forward_layer)
    flip = Fn("_FlipAlongTimeAxis", lambda x: jnp.flip(x, axis=axis))
    merge = Concatenate() if merge_layer is None else merge_layer
    return Serial(Branch(forward_layer, Serial(flip, backward_layer, flip)), merge)
