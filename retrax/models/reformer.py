"""Reformer models (Trax's): ``ReformerLM`` and the encoder-decoder ``Reformer``.

Reversible residual blocks (``tl.ReversibleSerial`` of ``ReversibleHalfResidual``
and ``ReversibleSwap``) over two copies of the activations, efficient
attention (``tl.SelfAttention`` by default), optional chunked feed-forward
layers (``ff_chunk_size``) and SRU layers (``ff_use_sru``). The layer tree
and weight order are Trax 1.4.1's, so its checkpoints load.

Not implemented (refused with a message): sparse feed-forward layers
(``ff_sparsity``), sparse loss layers (``loss_sparsity``) and
``pos_type='time-bin'`` (its ``time_bin_length`` came from a gin binding in
Trax); the other positional encodings (the default, ``'fixed-base'``,
``'sin-cos'``, ``'infinite'``, ``'infinite-affine'``, ``'no'``, ``'axial'``)
work.

>>> import numpy as np
>>> from retrax import models, shapes
>>> lm = models.ReformerLM(vocab_size=16, d_model=8, d_ff=16, d_attention_key=4,
...                        d_attention_value=4, n_layers=1, n_heads=2, max_len=32,
...                        mode='eval')
>>> _ = lm.init(shapes.ShapeDtype((2, 6), np.int32))
>>> lm(np.ones((2, 6), np.int32)).shape
(2, 6, 16)
"""

from __future__ import annotations

import numbers
from typing import Any

import jax.numpy as jnp

from retrax import layers as tl
from retrax.models.record import records_config

__all__ = ["ReformerLM", "Reformer"]

FIXED_BASE_DIGITS = 8  # tl.FixedBasePositionalEncoding's default n_digits, which Trax uses


def _check_int(model: str, arg: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{model}: {arg} must be an int >= {low}; got {value!r}.")
    return int(value)


def _layer_class(model: str, arg: str, value: Any) -> Any:
    """A layer class given as itself or by its name in ``retrax.layers`` (configs)."""
    if isinstance(value, str):
        found = getattr(tl, value, None)
        if found is None:
            raise ValueError(f"{model}: {arg}={value!r} is not a layer in retrax.layers.")
        return found
    if not callable(value):
        raise ValueError(f"{model}: {arg} must be a layer class; got {value!r}.")
    return value


def _refuse(model: str, arg: str, value: Any, what: str) -> None:
    if value:
        raise NotImplementedError(
            f"{model}: {arg}={value!r} ({what}) is not implemented in retrax; leave it at 0.")


def FeedForwardWithOptions(d_model: int, d_ff: int, dropout: float,  # noqa: N802
                           dropout_shared_axes: Any, ff_activation: Any, ff_dropout: Any,
                           ff_chunk_size: int, ff_use_sru: Any, ff_sparsity: Any,
                           center_layernorm: bool, mode: str) -> list:
    """Trax's feed-forward block: LayerNorm, Dense, Dropout, activation, Dense, Dropout.

    ``ff_chunk_size > 0`` runs it on chunks of that many positions
    (``BatchLeadingAxes(Chunk(...))``); ``ff_use_sru`` (``n`` or ``(n, units)``)
    adds a residual branch of SRU layers beside it.
    """
    _refuse("FeedForwardWithOptions", "ff_sparsity", ff_sparsity, "sparse feed-forward")
    act_dropout = dropout if ff_dropout is None else ff_dropout
    block = [
        tl.LayerNorm(center=center_layernorm),
        tl.Dense(d_ff),
        tl.Dropout(rate=act_dropout, shared_axes=dropout_shared_axes, mode=mode),
        ff_activation(),
        tl.Dense(d_model),
        tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
    ]
    if ff_chunk_size > 0:
        block = tl.BatchLeadingAxes(tl.Chunk(tl.Serial(block), ff_chunk_size))
    if ff_use_sru:
        n_layers, n_units = (ff_use_sru if isinstance(ff_use_sru, (list, tuple))
                             else (ff_use_sru, 32))
        sru = [tl.LayerNorm(center=center_layernorm), tl.Dense(n_units)]
        sru += [tl.SRU(n_units, mode=mode) for _ in range(n_layers)]
        block = tl.Residual(sru + [tl.Dense(d_model)], shortcut=block)
    return [block]


def ApplyAttentionLayer(attention_type: Any, d_model: int, n_heads: int, d_qk: int,  # noqa: N802
                        d_v: int, causal: bool, masked: bool, attention_dropout: float,
                        output_dropout: float, attention_chunk_size: int, mode: str) -> tl.Layer:
    """``attention_type`` built with efficient-attention arguments, or (for a layer that
    does not take them, such as ``tl.CausalAttention``) as ``(d_model, n_heads, dropout)``;
    run on batch chunks of ``attention_chunk_size`` when it is > 0."""
    try:
        attention = attention_type(n_heads=n_heads, d_qk=d_qk, d_v=d_v, causal=causal,
                                   masked=masked, output_dropout=output_dropout,
                                   attention_dropout=attention_dropout, mode=mode)
    except TypeError:
        attention = attention_type(d_model, n_heads=n_heads, dropout=attention_dropout,
                                   mode=mode)
    return tl.Chunk(attention, attention_chunk_size)


def PositionalEncoder(mode: str, dropout: float | None = None,  # noqa: N802
                      max_len: int | None = None, pos_type: Any = None,
                      pos_axial_shape: Any = None, pos_d_axial_embs: Any = None,
                      pos_start_from_zero_prob: float = 1.0,
                      pos_max_offset_to_add: int = 0) -> tl.Layer:
    """The positional encoding ``pos_type`` names (Trax's ``PositionalEncoder``)."""
    if not pos_type:
        return tl.PositionalEncoding(max_len=max_len, dropout=dropout,
                                     start_from_zero_prob=pos_start_from_zero_prob,
                                     max_offset_to_add=pos_max_offset_to_add, mode=mode)
    if pos_type == "no":
        return tl.Serial()
    if pos_type == "fixed-base":
        return tl.FixedBasePositionalEncoding(mode=mode)
    if pos_type == "sin-cos":
        return tl.SinCosPositionalEncoding(mode=mode)
    if pos_type == "time-bin":
        raise ValueError(
            "pos_type='time-bin' needs a time_bin_length, which Trax took from a gin binding; "
            "put tl.TimeBinPositionalEncoding(time_bin_length=..., mode=...) in the model "
            "yourself, or use pos_type None (learned), 'fixed-base', 'sin-cos', 'infinite', "
            "'no' or 'axial'.")
    if pos_type in ("infinite", "infinite-affine"):
        # Trax built it without its mode (so 'predict' restarted at position 0 every call).
        return tl.InfinitePositionalEncoding(affine=pos_type == "infinite-affine", mode=mode)
    # Any other value is axial, as in Trax (which names it nowhere).
    if not pos_axial_shape or pos_d_axial_embs is None:
        raise ValueError(
            f"pos_type={pos_type!r} is axial positional encoding and needs pos_axial_shape "
            f"(a grid whose size is the longest sequence) and pos_d_axial_embs (one width per "
            f"axis, summing to d_model); got {pos_axial_shape!r} and {pos_d_axial_embs!r}. "
            f"Or use pos_type None (learned), 'fixed-base', 'sin-cos', 'infinite' or 'no'.")
    return tl.AxialPositionalEncoding(
        shape=tuple(pos_axial_shape), d_embs=tuple(pos_d_axial_embs),
        dropout_broadcast_dims=tuple(range(1, len(pos_axial_shape) + 1)), dropout=dropout,
        mode=mode)


def _check_positions(model: str, d_model: int, pos_type: Any) -> None:
    if pos_type == "sin-cos" and d_model % 2:
        raise ValueError(f"{model}: pos_type='sin-cos' gives half of d_model to sines and half "
                         f"to cosines; use an even d_model (got {d_model}).")
    if pos_type == "fixed-base" and d_model % FIXED_BASE_DIGITS:
        raise ValueError(
            f"{model}: pos_type='fixed-base' gives each of its {FIXED_BASE_DIGITS} digits "
            f"d_model / {FIXED_BASE_DIGITS} features; use a d_model that is a multiple of "
            f"{FIXED_BASE_DIGITS} (got {d_model}).")


def _decoder_block(d_model, d_ff, d_attention_key, d_attention_value, n_heads, attention_type,
                   dropout, ff_activation, ff_use_sru, ff_chunk_size, attention_chunk_size,
                   mode) -> list:
    attention = ApplyAttentionLayer(attention_type, d_model, n_heads, d_attention_key,
                                    d_attention_value, True, False, dropout, dropout,
                                    attention_chunk_size, mode)
    feed_forward = FeedForwardWithOptions(d_model, d_ff, dropout, [-2], ff_activation, dropout,
                                          ff_chunk_size, ff_use_sru, 0, True, mode)
    return [
        tl.ReversibleHalfResidual(tl.LayerNorm(), attention_layer=attention,
                                  name="ReversibleHalfResidualDecoderAttn"),
        tl.ReversibleSwap(),
        tl.ReversibleHalfResidual(feed_forward, name="ReversibleHalfResidualDecoderFF"),
        tl.ReversibleSwap(),
    ]


@records_config
def ReformerLM(vocab_size: int, d_model: int = 512, d_ff: int = 2048,  # noqa: N802
               d_attention_key: int = 64, d_attention_value: int = 64, n_layers: int = 6,
               n_heads: int = 8, dropout: float = 0.1, max_len: int = 2048,
               attention_type: Any = tl.SelfAttention, pos_type: Any = None,
               pos_axial_shape: Any = (), pos_d_axial_embs: Any = None,
               pos_start_from_zero_prob: float = 1.0, pos_max_offset_to_add: int = 0,
               ff_activation: Any = tl.FastGelu, ff_use_sru: Any = 0, ff_chunk_size: int = 0,
               ff_sparsity: Any = 0, loss_sparsity_type: str = "mult", loss_sparsity: int = 0,
               loss_d_lowrank: int = 0, loss_sparsity_prob: Any = None,
               attention_chunk_size: int = 0, mode: str = "train") -> tl.Layer:
    """Reversible Transformer language model: tokens ``(B, L)`` -> logits ``(B, L, vocab)``.

    ``ShiftRight``, ``Embedding``, ``Dropout``, positional encoding, ``Dup``,
    ``ReversibleSerial`` of ``n_layers`` blocks (attention half-residual, swap,
    feed-forward half-residual, swap), ``Concatenate`` (width ``2 * d_model``),
    ``LayerNorm``, ``Dropout``, ``Dense(vocab_size)``; Trax 1.4.1's arguments.
    ``attention_type`` may be a list, used in turn by the layers (it must
    divide ``n_layers``), or a layer name.
    """
    name = "ReformerLM"
    _check_int(name, "vocab_size", vocab_size)
    _check_int(name, "d_model", d_model)
    _check_int(name, "n_layers", n_layers, low=0)
    _refuse(name, "ff_sparsity", ff_sparsity, "sparse feed-forward")
    _refuse(name, "loss_sparsity", loss_sparsity, "sparse loss layer")
    _check_positions(name, d_model, pos_type)
    if loss_sparsity_prob is not None:
        _refuse(name, "loss_sparsity_prob", loss_sparsity_prob, "random sparse loss layer")
    types = list(attention_type) if isinstance(attention_type, (list, tuple)) else \
        [attention_type]
    if not types or n_layers % len(types):
        raise ValueError(f"{name}: the {len(types)} attention types must divide n_layers "
                         f"({n_layers}).")
    types = [_layer_class(name, "attention_type", t) for t in types]
    ff_activation = _layer_class(name, "ff_activation", ff_activation)
    blocks = [_decoder_block(d_model, d_ff, d_attention_key, d_attention_value, n_heads,
                             types[i % len(types)], dropout, ff_activation, ff_use_sru,
                             ff_chunk_size, attention_chunk_size, mode)
              for i in range(n_layers)]
    positional = PositionalEncoder(mode, dropout, max_len, pos_type, pos_axial_shape,
                                   pos_d_axial_embs, pos_start_from_zero_prob,
                                   pos_max_offset_to_add)
    return tl.Serial(
        tl.ShiftRight(mode=mode),
        tl.Embedding(vocab_size, d_model),
        tl.Dropout(rate=dropout, shared_axes=[-2], mode=mode),
        positional,
        tl.Dup(),
        tl.ReversibleSerial(blocks),
        tl.Concatenate(),
        tl.LayerNorm(),
        tl.Dropout(rate=dropout, shared_axes=[-2], mode=mode),
        tl.Dense(vocab_size),
    )


def _encoder_block(d_model, d_ff, n_heads, dropout, ff_activation, ff_dropout, ff_use_sru,
                   ff_chunk_size, mode) -> list:
    mode = "eval" if mode == "predict" else mode  # the encoder never runs stepwise
    attention = ApplyAttentionLayer(tl.SelfAttention, d_model, n_heads, d_model // n_heads,
                                    d_model // n_heads, False, True, dropout, dropout, 0, mode)
    feed_forward = FeedForwardWithOptions(d_model, d_ff, dropout, [-2], ff_activation,
                                          ff_dropout, ff_chunk_size, ff_use_sru, 0, True, mode)
    return [
        tl.ReversibleHalfResidual(tl.LayerNorm(), attention_layer=attention,
                                  name="ReversibleHalfResidualEncoderAttn"),
        tl.ReversibleSwap(),
        tl.ReversibleHalfResidual(feed_forward, name="ReversibleHalfResidualEncoderFF"),
        tl.ReversibleSwap(),
    ]


def _encoder_decoder_block(d_model, d_ff, n_heads, dropout, ff_activation, ff_dropout, mode,
                           ff_use_sru, ff_chunk_size, max_len) -> list:
    d_head = d_model // n_heads
    # Unchunked, so in 'predict' mode it keeps all max_len positions (Trax gave it no memory
    # length and could not decode); no weights depend on it.
    causal = tl.SelfAttention(n_heads=n_heads, d_qk=d_head, d_v=d_head, causal=True,
                              attention_dropout=dropout, output_dropout=dropout, mode=mode,
                              predict_mem_len=max_len, predict_drop_len=max_len)
    enc_dec = tl.EncDecAttention(n_heads=n_heads, d_qk=d_head, d_v=d_head,
                                 attention_dropout=dropout, output_dropout=dropout, mode=mode)
    feed_forward = FeedForwardWithOptions(d_model, d_ff, dropout, [-2], ff_activation,
                                          ff_dropout, ff_chunk_size, ff_use_sru, 0, True, mode)
    return [                                                    # vec_d1 vec_d2 vec_e mask
        tl.ReversibleHalfResidual(tl.LayerNorm(), attention_layer=causal),
        tl.ReversibleSwap(),
        tl.ReversibleHalfResidual(tl.LayerNorm(), attention_layer=enc_dec),
        tl.ReversibleSwap(),
        tl.ReversibleHalfResidual(feed_forward),
        tl.ReversibleSwap(),
    ]


def _xy_avg() -> tl.Layer:
    return tl.Fn("XYAvg", lambda x, y: (x + y) / 2.0)


@records_config
def Reformer(input_vocab_size: int, output_vocab_size: int | None = None,  # noqa: N802
             d_model: int = 512, d_ff: int = 2048, n_encoder_layers: int = 6,
             n_decoder_layers: int = 6, n_heads: int = 8, dropout: float = 0.1,
             max_len: int = 2048, ff_activation: Any = tl.Relu, ff_dropout: Any = None,
             mode: str = "train", pos_type: Any = None, pos_axial_shape: Any = None,
             pos_d_axial_embs: Any = None, ff_use_sru: Any = 0, ff_chunk_size: int = 0,
             ff_sparsity: Any = 0) -> tl.Layer:
    """Reversible encoder-decoder: ``(source, target)`` tokens -> ``(logits, target)``.

    Trax 1.4.1's layers and arguments: the source is embedded and encoded by
    reversible blocks of masked ``SelfAttention`` (padding id 0) and
    feed-forward layers; the shifted target by blocks of causal
    ``SelfAttention``, ``EncDecAttention`` and feed-forward layers. Without
    ``output_vocab_size`` the target shares the source's embedding. In
    ``'predict'`` mode the encoder runs once per sequence (``tl.Cache``), the
    ``EncDecAttention`` layers keep its keys and values, and the decoder's
    causal attention remembers up to ``max_len`` positions, so
    ``autoregressive_sample`` decodes it in one compiled loop.
    """
    name = "Reformer"
    _check_int(name, "input_vocab_size", input_vocab_size)
    _check_int(name, "d_model", d_model)
    _check_int(name, "n_heads", n_heads)
    if d_model % n_heads:
        raise ValueError(f"{name}: n_heads ({n_heads}) must divide d_model ({d_model}).")
    _refuse(name, "ff_sparsity", ff_sparsity, "sparse feed-forward")
    _check_positions(name, d_model, pos_type)
    ff_activation = _layer_class(name, "ff_activation", ff_activation)
    encoder_mode = "eval" if mode == "predict" else mode

    def embedder(vocab, embedding_mode):
        return [tl.Embedding(vocab, d_model),
                tl.Dropout(rate=dropout, shared_axes=[-2], mode=embedding_mode)]

    def positional(positional_mode):
        return PositionalEncoder(positional_mode, dropout, max_len, pos_type, pos_axial_shape,
                                 pos_d_axial_embs)

    in_embedder = embedder(input_vocab_size, encoder_mode)
    out_embedder = in_embedder if output_vocab_size is None else embedder(output_vocab_size,
                                                                         mode)
    output_vocab_size = output_vocab_size or input_vocab_size
    encoder_blocks = [_encoder_block(d_model, d_ff, n_heads, dropout, ff_activation,
                                     ff_dropout, ff_use_sru, ff_chunk_size, mode)
                      for _ in range(n_encoder_layers)]
    encoder = tl.Serial(in_embedder + [positional(encoder_mode)], tl.Dup(),
                        tl.ReversibleSerial(encoder_blocks), _xy_avg(), tl.LayerNorm())
    if mode == "predict":
        encoder = tl.Cache(encoder)
    decoder_blocks = [_encoder_decoder_block(d_model, d_ff, n_heads, dropout, ff_activation,
                                             ff_dropout, mode, ff_use_sru, ff_chunk_size,
                                             max_len)
                      for _ in range(n_decoder_layers)]
    return tl.Serial(
        tl.Select([0, 1, 1]),                            # tok_e tok_d tok_d
        tl.Branch([], [tl.PaddingMask(),
                       tl.Fn("RemoveAxes12", lambda x: jnp.squeeze(x, (1, 2)))]),
        encoder,                                         # vec_e mask tok_d
        tl.Select([2, 0, 1]),                            # tok_d vec_e mask
        tl.ShiftRight(mode=mode),
        out_embedder + [positional(mode)],               # vec_d vec_e mask
        tl.Dup(),                                        # vec_d1 vec_d2 vec_e mask
        tl.ReversibleSerial(decoder_blocks),
        _xy_avg(),                                       # vec_d vec_e mask
        tl.LayerNorm(),
        tl.Select([0], n_in=3),                          # vec_d
        tl.Dense(output_vocab_size),
    )
