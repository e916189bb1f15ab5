"""Transformer models: language model, encoder-decoder, encoder, decoder (Trax's).

Each model is a function returning a ``tl.Serial``; the layer tree, printed
structure and weight order are Trax's, so Trax checkpoints load into them.
Shapes: B batch, L length, D ``d_model``, V vocabulary.

Differences from Trax 1.4.1, all deliberate:

- ``TransformerLM`` and ``Transformer`` end in ``tl.LogSoftmax()`` and output
  log-probabilities, as the Trax of the seed notebook did (Trax 1.4.1 dropped
  it and outputs logits). ``LogSoftmax`` has no weights, so 1.4.1 checkpoints
  load unchanged, and ``argmax`` (greedy decoding) is the same either way. Use
  ``tl.CrossEntropyLoss`` on these outputs (not a loss that applies
  ``log_softmax`` again; that is harmless but redundant).
- In ``'predict'`` mode the key/value caches are ``max_inference_length``
  positions long (keyword-only, default ``max_len``); Trax always used 2048.
- ``TransformerDecoder`` passes ``mode`` to its ``PositionalEncoding``, so it
  can decode position by position in ``'predict'`` mode.

>>> import numpy as np
>>> from retrax import models, shapes
>>> lm = models.TransformerLM(vocab_size=16, d_model=8, d_ff=16, n_layers=1, n_heads=2,
...                          max_len=32, mode='eval')
>>> _ = lm.init(shapes.ShapeDtype((2, 5), np.int32))
>>> log_probs = lm(np.ones((2, 5), np.int32))
>>> log_probs.shape, bool(np.allclose(np.exp(log_probs).sum(-1), 1.0, atol=1e-5))
((2, 5, 16), True)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

from retrax import layers as tl
from retrax.layers.remat import RematSerial
from retrax.models.record import records_config

__all__ = ["TransformerLM", "Transformer", "TransformerEncoder", "TransformerDecoder"]

# Trax's defaults.
MODE = "train"
D_MODEL = 512
D_FF = 2048
N_LAYERS = 6
N_HEADS = 8
MAX_SEQUENCE_LENGTH = 2048
DROPOUT_RATE = 0.1
DROPOUT_SHARED_AXES = None
FF_ACTIVATION_TYPE = tl.Relu


def _check_common(
    model: str,
    d_model: int,
    n_heads: int,
    dropout: float,
    mode: str,
    ff_activation: Any,
    max_len: int,
    max_inference_length: int | None,
    remat: Any = False,
) -> int:
    """Validates shared arguments; returns the predict-mode cache length."""
    if not isinstance(remat, bool):
        raise ValueError(f"{model}: remat must be True or False; got {remat!r}.")
    if (
        isinstance(dropout, bool)
        or not isinstance(dropout, numbers.Real)
        or not 0.0 <= dropout < 1.0
    ):
        raise ValueError(f"{model}: dropout must be in [0, 1); got {dropout!r}.")
    for arg, value in (("d_model", d_model), ("n_heads", n_heads), ("max_len", max_len)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"{model}: {arg} must be a positive int; got {value!r}.")
    if d_model % n_heads:
        raise ValueError(
            f"{model}: d_model ({d_model}) is not a multiple of n_heads ({n_heads}); each "
            f"attention head gets d_model // n_heads features."
        )
    if mode not in ("train", "eval", "predict"):
        raise ValueError(f"{model}: mode must be 'train', 'eval' or 'predict'; got {mode!r}.")
    if not callable(ff_activation) or isinstance(ff_activation, tl.Layer):
        raise TypeError(
            f"{model}: ff_activation must be a layer constructor called with no arguments "
            f"(e.g. tl.Relu, not tl.Relu()); got {ff_activation!r}."
        )
    if max_inference_length is None:
        return max_len
    if (
        isinstance(max_inference_length, bool)
        or not isinstance(max_inference_length, numbers.Integral)
        or max_inference_length <= 0
    ):
        raise ValueError(
            f"{model}: max_inference_length must be a positive int or None; got "
            f"{max_inference_length!r}."
        )
    return max_inference_length


def _check_vocab(model: str, arg: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{model}: {arg} must be a positive int; got {value!r}.")


def _dropout(dropout: float, shared_axes: Any, mode: str) -> tl.Layer:
    return tl.Dropout(rate=dropout, shared_axes=shared_axes, mode=mode)


def _residual(remat: bool, *layers: Any) -> tl.Layer:
    """``tl.Residual(*layers)``; with ``remat`` its insides are recomputed for the gradient.

    Same weights, state and printout either way (``RematSerial`` of the same two
    children, named ``Serial``), so checkpoints load with or without remat.
    """
    block = tl.Residual(*layers)
    return RematSerial(*block.sublayers) if remat else block


def _feed_forward(
    d_model: int,
    d_ff: int,
    dropout: float,
    shared_axes: Any,
    mode: str,
    activation: Callable[[], tl.Layer],
) -> list[tl.Layer]:
    """``LayerNorm, Dense(d_ff), activation, Dropout, Dense(d_model), Dropout``."""
    return [
        tl.LayerNorm(),
        tl.Dense(d_ff),
        activation(),
        _dropout(dropout, shared_axes, mode),
        tl.Dense(d_model),
        _dropout(dropout, shared_axes, mode),
    ]


def _encoder_block(d_model, d_ff, n_heads, dropout, shared_axes, mode, activation, remat):
    """``(x, mask) -> (x, mask)``: padding-masked self-attention, then feed-forward."""
    return [
        _residual(
            remat,
            tl.LayerNorm(),
            tl.Attention(d_model, n_heads=n_heads, dropout=dropout, mode=mode),
            _dropout(dropout, shared_axes, mode),
        ),
        _residual(remat, _feed_forward(d_model, d_ff, dropout, shared_axes, mode, activation)),
    ]


def _decoder_block(
    d_model, d_ff, n_heads, dropout, shared_axes, mode, activation, max_inference_length, remat
):
    """``x -> x``: causal self-attention, then feed-forward (pre-norm residuals)."""
    return [
        _residual(
            remat,
            tl.LayerNorm(),
            tl.CausalAttention(
                d_model,
                n_heads=n_heads,
                dropout=dropout,
                max_inference_length=max_inference_length,
                mode=mode,
            ),
            _dropout(dropout, shared_axes, mode),
        ),
        _residual(remat, _feed_forward(d_model, d_ff, dropout, shared_axes, mode, activation)),
    ]


def _encoder_decoder_block(
    d_model, d_ff, n_heads, dropout, shared_axes, mode, activation, max_inference_length, remat
):
    """``(vec_d, mask, vec_e) -> (vec_d, mask, vec_e)``: causal, then cross attention, then FF."""
    return [
        _residual(
            remat,
            tl.LayerNorm(),
            # As in Trax, the decoder self-attention has no attention dropout.
            tl.CausalAttention(
                d_model, n_heads=n_heads, max_inference_length=max_inference_length, mode=mode
            ),
            _dropout(dropout, shared_axes, mode),
        ),
        _residual(
            remat,
            tl.LayerNorm(),
            tl.Select([0, 2, 2, 1, 2]),  # vec_d vec_e vec_e mask vec_e
            tl.AttentionQKV(
                d_model, n_heads=n_heads, dropout=dropout, mode=mode, cache_KV_in_predict=True
            ),  # vec_d mask vec_e
            _dropout(dropout, shared_axes, mode),
        ),
        _residual(remat, _feed_forward(d_model, d_ff, dropout, shared_axes, mode, activation)),
    ]


@records_config
def TransformerLM(
    vocab_size: int,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes: Any = DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation: Callable[[], tl.Layer] = FF_ACTIVATION_TYPE,
    *,
    max_inference_length: int | None = None,
    remat: bool = False,
) -> tl.Layer:
    """A decoder-only Transformer language model: tokens ``(B, L)`` -> log-probs ``(B, L, V)``.

    ``Serial(ShiftRight, Embedding, Dropout, PositionalEncoding, n_layers x
    [Residual(LayerNorm, CausalAttention, Dropout), Residual(feed-forward)],
    LayerNorm, Dense(V), LogSoftmax)`` (pre-norm). Output ``t`` predicts token
    ``t`` from tokens ``< t``.

    **Differs from Trax 1.4.1:** the final ``LogSoftmax`` (1.4.1 outputs
    logits; the Trax of the seed notebook ended in ``LogSoftmax`` as here).
    It has no weights, so 1.4.1 checkpoints load unchanged.

    Args:
      vocab_size: number of token ids; inputs are ints in ``[0, vocab_size)``.
      d_model: width of the activations and embeddings.
      d_ff: width of the hidden feed-forward layer.
      n_layers: number of decoder blocks.
      n_heads: attention heads (must divide ``d_model``).
      max_len: rows of the positional-encoding table (the longest sequence).
      dropout: dropout rate in ``'train'`` mode (activations and attention).
      dropout_shared_axes: axes along which dropout masks are shared.
      mode: ``'train'``, ``'eval'`` or ``'predict'``. In ``'predict'`` there is
        no ``ShiftRight`` (feed the start token 0 yourself) and each call
        continues the sequence held in the state (positions and K/V caches).
      ff_activation: layer constructor called with no arguments (``tl.Relu``).
      max_inference_length: (keyword-only, retrax) length of the predict-mode
        K/V caches; defaults to ``max_len`` (Trax fixed it at 2048).
      remat: (keyword-only, retrax) recompute each residual block's activations
        in the backward pass (``jax.checkpoint``, see ``tl.RematSerial``):
        training keeps only the blocks' inputs, for about one more forward pass
        per step. Same weights, outputs and gradients as without.

    Flat weights: ``2 + 16 * n_layers + 4`` arrays in Trax's order.
    """
    _check_vocab("TransformerLM", "vocab_size", vocab_size)
    cache_len = _check_common(
        "TransformerLM",
        d_model,
        n_heads,
        dropout,
        mode,
        ff_activation,
        max_len,
        max_inference_length,
        remat=remat,
    )
    return tl.Serial(
        tl.ShiftRight(mode=mode),
        tl.Embedding(vocab_size, d_model),
        _dropout(dropout, dropout_shared_axes, mode),
        tl.PositionalEncoding(max_len=max_len, mode=mode),
        [
            _decoder_block(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation,
                cache_len,
                remat,
            )
            for _ in range(n_layers)
        ],
        tl.LayerNorm(),
        tl.Dense(vocab_size),
        tl.LogSoftmax(),
    )


@records_config
def Transformer(
    input_vocab_size: int,
    output_vocab_size: int | None = None,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_encoder_layers: int = N_LAYERS,
    n_decoder_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes: Any = DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation: Callable[[], tl.Layer] = FF_ACTIVATION_TYPE,
    *,
    max_inference_length: int | None = None,
    remat: bool = False,
) -> tl.Layer:
    """An encoder-decoder Transformer: ``(source, target) -> (log_probs, target)`` (2 -> 2).

    ``source (B, Le)`` and ``target (B, Ld)`` are token ids, 0 is padding in
    the source; ``log_probs`` is ``(B, Ld, V_out)`` and the target is passed
    through (for the loss). With ``output_vocab_size=None`` the encoder and
    decoder share one embedding, stored once in the weights.

    **Differs from Trax 1.4.1:** the final ``LogSoftmax`` (see ``TransformerLM``).

    In ``'predict'`` mode the encoder runs once (``tl.Cache``, in ``'eval'``
    mode) on the first call and the decoder takes one step per call:
    ``model((source, target_tokens))`` with the start token 0 first. The first
    call stores the encoder output in the state, which changes the state's tree
    structure, so a jitted step function is traced twice (first call, then the
    rest).
    ``max_inference_length`` (keyword-only) sets the decoder cache length
    (default ``max_len``). Other arguments as in ``TransformerLM``.
    """
    _check_vocab("Transformer", "input_vocab_size", input_vocab_size)
    cache_len = _check_common(
        "Transformer", d_model, n_heads, dropout, mode, ff_activation, max_len,
        max_inference_length,
        remat=remat,
    )
    encoder_mode = "eval" if mode == "predict" else mode  # the encoder never runs stepwise
    in_embedder = tl.Embedding(input_vocab_size, d_model)
    if output_vocab_size is None:
        out_embedder = in_embedder  # shared: its weight appears once, in the encoder
        output_vocab_size = input_vocab_size
    else:
        _check_vocab("Transformer", "output_vocab_size", output_vocab_size)
        out_embedder = tl.Embedding(output_vocab_size, d_model)

    encoder = tl.Serial(
        in_embedder,
        _dropout(dropout, dropout_shared_axes, mode),
        tl.PositionalEncoding(max_len=max_len, mode=encoder_mode),
        [
            _encoder_block(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, remat
            )
            for _ in range(n_encoder_layers)
        ],
        tl.LayerNorm(),
    )
    if mode == "predict":
        encoder = tl.Cache(encoder)

    return tl.Serial(
        tl.Select([0, 1, 1]),  # tok_e tok_d tok_d
        tl.Branch([], tl.PaddingMask()),  # tok_e mask tok_d tok_d
        encoder,  # vec_e mask tok_d tok_d
        tl.Select([2, 1, 0]),  # tok_d mask vec_e tok_d
        tl.ShiftRight(mode=mode),
        out_embedder,
        _dropout(dropout, dropout_shared_axes, mode),
        tl.PositionalEncoding(max_len=max_len, mode=mode),
        tl.Branch([], tl.EncoderDecoderMask()),  # vec_d mask vec_e tok_d
        [
            _encoder_decoder_block(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation,
                cache_len,
                remat,
            )
            for _ in range(n_decoder_layers)
        ],
        tl.LayerNorm(),
        tl.Select([0], n_in=3),  # vec_d tok_d
        tl.Dense(output_vocab_size),
        tl.LogSoftmax(),
    )


@records_config
def TransformerEncoder(
    vocab_size: int,
    n_classes: int = 10,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes: Any = DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation: Callable[[], tl.Layer] = FF_ACTIVATION_TYPE,
    *,
    remat: bool = False,
) -> tl.Layer:
    """A Transformer encoder with a classification head: tokens ``(B, L)`` -> logits ``(B, C)``.

    Token 0 is padding (masked in attention). ``Serial(Branch([], PaddingMask),
    Embedding, Dropout, PositionalEncoding, n_layers x encoder block,
    Select([0], n_in=2), LayerNorm, Mean(axis=1), Dense(n_classes))``. Outputs
    logits, as in Trax 1.4.1 (the mean runs over padding positions too, as in
    Trax). ``'predict'`` behaves as ``'eval'``. ``remat`` (keyword-only): see
    ``TransformerLM``.
    """
    _check_vocab("TransformerEncoder", "vocab_size", vocab_size)
    _check_vocab("TransformerEncoder", "n_classes", n_classes)
    _check_common(
        "TransformerEncoder", d_model, n_heads, dropout, mode, ff_activation, max_len, None,
        remat=remat,
    )
    return tl.Serial(
        tl.Branch([], tl.PaddingMask()),  # tokens mask
        tl.Embedding(vocab_size, d_model),
        _dropout(dropout, dropout_shared_axes, mode),
        tl.PositionalEncoding(max_len=max_len, mode="eval" if mode == "predict" else mode),
        [
            _encoder_block(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, remat
            )
            for _ in range(n_layers)
        ],
        tl.Select([0], n_in=2),  # drops the mask
        tl.LayerNorm(),
        tl.Mean(axis=1),
        tl.Dense(n_classes),
    )


@records_config
def TransformerDecoder(
    vocab_size: int | None = None,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes: Any = DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation: Callable[[], tl.Layer] = FF_ACTIVATION_TYPE,
    *,
    max_inference_length: int | None = None,
    remat: bool = False,
) -> tl.Layer:
    """A stack of causal decoder blocks: ``(B, L)`` tokens (or ``(B, L, D)``) -> ``(B, L, D)``.

    With ``vocab_size`` the input is token ids (``Embedding``); with ``None``
    it is vectors (``Dense(d_model)``). No ``ShiftRight``: output ``t`` sees
    inputs ``<= t``. Unlike Trax, ``mode`` also reaches ``PositionalEncoding``
    so ``'predict'`` mode decodes position by position; ``max_inference_length``
    (keyword-only) sets the cache length (default ``max_len``); ``remat``
    (keyword-only): see ``TransformerLM``.
    """
    if vocab_size is not None:
        _check_vocab("TransformerDecoder", "vocab_size", vocab_size)
    cache_len = _check_common(
        "TransformerDecoder",
        d_model,
        n_heads,
        dropout,
        mode,
        ff_activation,
        max_len,
        max_inference_length,
        remat=remat,
    )
    return tl.Serial(
        tl.Embedding(vocab_size, d_model) if vocab_size is not None else tl.Dense(d_model),
        _dropout(dropout, dropout_shared_axes, mode),
        tl.PositionalEncoding(max_len=max_len, mode=mode),
        [
            _decoder_block(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation,
                cache_len,
                remat,
            )
            for _ in range(n_layers)
        ],
        tl.LayerNorm(),
    )
