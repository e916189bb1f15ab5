"""Recurrent models (Trax's ``trax.models.rnn``): two language models and an encoder-decoder.

Each model is a function returning a ``tl.Serial`` whose layer tree, printed
structure and weight order are Trax 1.4.1's, so Trax checkpoints load one to
one. Shapes: B batch, L length, D ``d_model``, V vocabulary.

- ``RNNLM``: ``ShiftRight, Embedding, Dropout``, then one ``Scan`` of a
  multi-layer cell (``n_layers`` cells chained, their states concatenated in
  one carry) and ``Dense(V)``: tokens ``(B, L)`` -> logits ``(B, L, V)``.
- ``GRULM``: ``ShiftRight, Embedding``, ``n_layers`` ``GRU``\\ s, ``Dense(V)``:
  tokens -> logits.
- ``LSTMSeq2SeqAttn``: an LSTM encoder over the source, an LSTM over the
  shifted target, encoder-decoder attention (``AttentionQKV``, padding of the
  source masked), LSTMs, ``Dense(V)`` and ``LogSoftmax``:
  ``(source, target) -> (log-probs (B, L, V), target)``.

As in Trax, ``RNNLM`` and ``GRULM`` output logits (their last layer is a
``Dense``) and ``LSTMSeq2SeqAttn`` log-probabilities; ``tl.CrossEntropyLoss``
and decoding accept both. In ``'predict'`` mode the recurrent state is kept
between calls (see ``retrax.layers.rnn``), so
``retrax.supervised.decoding.autoregressive_sample`` decodes these models in
one compiled loop.

One difference from Trax 1.4.1, on purpose: the encoder LSTMs of
``LSTMSeq2SeqAttn``, which Trax always builds in ``'train'`` mode, run in the
model's mode (``'eval'`` for a ``'predict'`` model: the encoder reads the whole
source at every call and keeps no state). An LSTM computes the same in
``'train'`` and ``'eval'`` mode, so outputs and weights are Trax's; the model's
mode is then one mode (``tl.with_mode`` and decoding's checks see it).

>>> import numpy as np
>>> from retrax import models, shapes
>>> lm = models.GRULM(vocab_size=16, d_model=8, mode='eval')
>>> _ = lm.init(shapes.ShapeDtype((2, 5), np.int32))
>>> lm(np.ones((2, 5), np.int32)).shape
(2, 5, 16)
>>> models.config_of(lm)
{'name': 'GRULM', 'kwargs': {'vocab_size': 16, 'd_model': 8, 'n_layers': 1}}
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp

from retrax import layers as tl
from retrax.models.record import records_config

__all__ = ["RNNLM", "GRULM", "LSTMSeq2SeqAttn"]


def _check_int(model: str, arg: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        kind = "a positive int" if low == 1 else f"an int >= {low}"
        raise ValueError(f"{model}: {arg} must be {kind}; got {value!r}.")
    return int(value)


def _check_rate(model: str, arg: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"{model}: {arg} must be in [0, 1); got {value!r}.")
    return float(value)


def _check_mode(model: str, mode: str) -> None:
    if mode not in ("train", "eval", "predict"):
        raise ValueError(f"{model}: mode must be 'train', 'eval' or 'predict'; got {mode!r}.")


def _cell_constructor(rnn_cell: Any) -> Any:
    """``rnn_cell`` as a constructor: a layer class, or its name in ``retrax.layers``."""
    if isinstance(rnn_cell, str):
        found = getattr(tl, rnn_cell.removeprefix("tl."), None)
        if not callable(found):
            raise ValueError(f"RNNLM: rnn_cell={rnn_cell!r} is not a layer in retrax.layers.")
        return found
    if not callable(rnn_cell) or isinstance(rnn_cell, tl.Layer):
        raise TypeError(
            f"RNNLM: rnn_cell must be a cell class called as rnn_cell(n_units=d_model) (e.g. "
            f"tl.LSTMCell, not tl.LSTMCell(16)); got {rnn_cell!r}."
        )
    return rnn_cell


class _MultiRNNCell(tl.Serial):
    """``(x, [s_1 .. s_n]) -> (y, [s_1' .. s_n'])``: cells chained, states in one array.

    Trax's ``Serial`` (its name, sublayers and weights)::

        Serial(Parallel([], Split(n_items=n)),          # x, s_1 .. s_n
               SerialWithSideOutputs(cells),            # y, s_1' .. s_n'
               Parallel([], Concatenate(n_items=n)))    # y, [s_1' .. s_n']

    with one addition: ``scan_sequence`` (see ``tl.Scan``) runs the whole
    scan one cell after the other, each over all steps (cell ``k + 1`` needs
    only the outputs of cell ``k``), through the cells' own ``scan_sequence``.
    """

    def __init__(self, cells: list[tl.Layer]):
        n = len(cells)
        chain = tl.SerialWithSideOutputs(cells)
        super().__init__(tl.Parallel([], tl.Split(n_items=n)), chain,
                         tl.Parallel([], tl.Concatenate(n_items=n)), name="Serial")
        # Where each cell sits among the chain's sublayers (weights and state follow them).
        self._cell_positions = tuple(
            next(i for i, sub in enumerate(chain.sublayers) if sub is cell) for cell in cells)

    def scan_sequence(self, xs: list, carries: list, weights: Any, state: Any):
        """The cells one after the other over all steps; None where one cannot."""
        chain = self.sublayers[1]
        n = len(self._cell_positions)
        trees_fit = all(isinstance(t, (tuple, list)) and len(t) == 3
                        and isinstance(t[1], (tuple, list))
                        and len(t[1]) == len(chain.sublayers) for t in (weights, state))
        if (not trees_fit or len(xs) != 1 or len(carries) != 1
                or len(carries[0].shape) < 1 or carries[0].shape[-1] % n):
            return None
        y, chain_state, finals = xs[0], list(state[1]), []
        for i, s in zip(self._cell_positions, jnp.split(carries[0], n, axis=-1)):
            cell = chain.sublayers[i]
            run = getattr(cell, "scan_sequence", None)
            result = None if run is None else run([y], [s], weights[1][i], chain_state[i])
            if result is None:
                return None
            (y,), (final,), chain_state[i] = result
            finals.append(final)
        new_state = (state[0], tuple(chain_state), state[2])
        return [y], [jnp.concatenate(finals, axis=-1)], new_state


@records_config
def RNNLM(vocab_size: int, d_model: int = 512, n_layers: int = 2,  # noqa: N802
          rnn_cell: Any = tl.LSTMCell, rnn_cell_d_state_multiplier: int = 2,
          dropout: float = 0.1, mode: str = "train") -> tl.Layer:
    """An RNN language model: tokens ``(B, L)`` -> logits ``(B, L, vocab_size)``.

    Args:
      vocab_size: token ids are in ``[0, vocab_size)``.
      d_model: embedding depth and units of every cell.
      n_layers: number of cells; Trax 1.4.1 accepts only 2.
      rnn_cell: the cell class (``tl.LSTMCell``, or ``tl.GRUCell`` with
        ``rnn_cell_d_state_multiplier=1``), or its name in ``retrax.layers``.
      rnn_cell_d_state_multiplier: a cell's state width over ``d_model``.
      dropout: rate of the dropout after the embedding (``'train'`` mode).
      mode: ``'train'``, ``'eval'`` or ``'predict'`` (keeps the state between calls).

    Weights: ``Embedding``, the ``n_layers`` cells (inside the ``Scan``), ``Dense``.
    """
    _check_int("RNNLM", "vocab_size", vocab_size)
    _check_int("RNNLM", "d_model", d_model)
    _check_int("RNNLM", "rnn_cell_d_state_multiplier", rnn_cell_d_state_multiplier)
    _check_rate("RNNLM", "dropout", dropout)
    _check_mode("RNNLM", mode)
    if n_layers != 2:
        raise ValueError(f"RNNLM: n_layers must be 2 (as in Trax 1.4.1); got {n_layers!r}.")
    cell = _cell_constructor(rnn_cell)
    zero_state = tl.MakeZeroState(depth_multiplier=n_layers * rnn_cell_d_state_multiplier)
    return tl.Serial(
        tl.ShiftRight(mode=mode),
        tl.Embedding(vocab_size, d_model),
        tl.Dropout(rate=dropout, mode=mode),
        tl.Branch([], zero_state),
        tl.Scan(_MultiRNNCell([cell(n_units=d_model) for _ in range(n_layers)]), axis=1,
                mode=mode),
        tl.Select([0], n_in=2),  # drop the final state
        tl.Dense(vocab_size),
    )


@records_config
def GRULM(vocab_size: int = 256, d_model: int = 512, n_layers: int = 1,  # noqa: N802
          mode: str = "train") -> tl.Layer:
    """A GRU language model: tokens ``(B, L)`` -> logits ``(B, L, vocab_size)``.

    ``ShiftRight``, ``Embedding(vocab_size, d_model)``, ``n_layers`` ``GRU(d_model)``,
    ``Dense(vocab_size)``. In ``'predict'`` mode (no shift) each GRU keeps its state.
    """
    _check_int("GRULM", "vocab_size", vocab_size)
    _check_int("GRULM", "d_model", d_model)
    _check_int("GRULM", "n_layers", n_layers, low=0)
    _check_mode("GRULM", mode)
    return tl.Serial(
        tl.ShiftRight(mode=mode),
        tl.Embedding(vocab_size, d_model),
        [tl.GRU(d_model, mode=mode) for _ in range(n_layers)],
        tl.Dense(vocab_size),
    )


def _prepare_attention_inputs() -> tl.Layer:
    """``(encoder_vecs, decoder_vecs, source) -> (q, k, v, mask)`` (3 -> 4).

    Queries are the decoder's vectors, keys and values the encoder's; the mask
    ``(B, 1, L_dec, L_src)`` (float32) is 1 where the source token is not 0.
    """
    def prepare(encoder_activations, decoder_activations, input_tokens):
        mask = jnp.reshape(input_tokens != 0, (input_tokens.shape[0], 1, 1, -1))
        mask = jnp.broadcast_to(mask, (mask.shape[0], 1, decoder_activations.shape[1],
                                       mask.shape[-1])).astype(jnp.float32)
        return decoder_activations, encoder_activations, encoder_activations, mask

    return tl.Fn("PrepareAttentionInputs", prepare, n_out=4)


@records_config
def LSTMSeq2SeqAttn(input_vocab_size: int = 256, target_vocab_size: int = 256,  # noqa: N802
                    d_model: int = 512, n_encoder_layers: int = 2, n_decoder_layers: int = 2,
                    n_attention_heads: int = 1, attention_dropout: float = 0.0,
                    mode: str = "train") -> tl.Layer:
    """An LSTM encoder-decoder with attention: ``(source, target) -> (log-probs, target)``.

    Data stack (source ``(B, S)``, target ``(B, L)`` token ids, 0 = padding)::

        source, target -> encoder(source), pre-decoder(target), source
                       -> q, k, v, mask            (keys/values: the encoder's vectors)
                       -> q + AttentionQKV(q, k, v, mask), target
                       -> LSTMs, Dense(target_vocab_size), LogSoftmax;  target

    The encoder is ``Embedding(input_vocab_size, d_model)`` and
    ``n_encoder_layers`` LSTMs; the pre-attention decoder ``ShiftRight``,
    ``Embedding(target_vocab_size, d_model)`` and one LSTM; after the
    attention (``n_attention_heads`` heads, ``attention_dropout``) come
    ``n_decoder_layers`` LSTMs. In ``'predict'`` mode the keys and values are
    computed on the first call and kept; the decoder's LSTMs keep their state.
    """
    where = "LSTMSeq2SeqAttn"
    _check_int(where, "input_vocab_size", input_vocab_size)
    _check_int(where, "target_vocab_size", target_vocab_size)
    _check_int(where, "d_model", d_model)
    _check_int(where, "n_encoder_layers", n_encoder_layers, low=0)
    _check_int(where, "n_decoder_layers", n_decoder_layers, low=0)
    _check_int(where, "n_attention_heads", n_attention_heads)
    _check_rate(where, "attention_dropout", attention_dropout)
    _check_mode(where, mode)
    encoder_mode = "eval" if mode == "predict" else mode  # see the module docstring
    input_encoder = tl.Serial(
        tl.Embedding(input_vocab_size, d_model),
        [tl.LSTM(d_model, mode=encoder_mode) for _ in range(n_encoder_layers)],
    )
    pre_attention_decoder = tl.Serial(
        tl.ShiftRight(mode=mode),
        tl.Embedding(target_vocab_size, d_model),
        tl.LSTM(d_model, mode=mode),
    )
    return tl.Serial(                                   # source, target
        tl.Select([0, 1, 0, 1]),                        # source, target, source, target
        tl.Parallel(input_encoder, pre_attention_decoder),
        _prepare_attention_inputs(),                    # q, k, v, mask, target
        tl.Residual(tl.AttentionQKV(d_model, n_heads=n_attention_heads,
                                    dropout=attention_dropout, mode=mode,
                                    cache_KV_in_predict=True)),  # vecs, mask, target
        tl.Select([0, 2]),                              # vecs, target
        [tl.LSTM(d_model, mode=mode) for _ in range(n_decoder_layers)],
        tl.Dense(target_vocab_size),
        tl.LogSoftmax(),
    )
