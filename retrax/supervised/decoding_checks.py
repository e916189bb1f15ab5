"""What decoding checks before it compiles anything: the model and the arguments.

The model must be an initialized predict-mode retrax ``Layer`` with 1 or 2
inputs; its vocabulary (its ``Embedding`` layers) and ``max_len`` (its
``PositionalEncoding``) bound the token ids, ``start_id`` and the length of a
call. Each check names the function called (``where``) in its message. Used by
``retrax.supervised.decoding`` and ``retrax.supervised.beam_search``.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np

from retrax.layers import base, core, positional

__all__ = ["check_model", "embedding_vocabs", "vocab_and_max_len",
           "prepare", "cache_length", "check_sampling", "check_start_id", "CACHE_BUCKET"]

CACHE_BUCKET = 8


class _Structure(NamedTuple):
    modes: frozenset
    vocabs: tuple
    encodings: tuple  # the PositionalEncoding layers


# What decoding reads from a model's layer tree, per model (held weakly).
# A built model's tree does not change (sublayers and modes are fixed at
# construction), so it is walked once instead of on every call; weights (the
# encodings' length) are read at each call.
_structures: weakref.WeakKeyDictionary[base.Layer, _Structure] = weakref.WeakKeyDictionary()


def _structure(model: base.Layer) -> _Structure:
    found = _structures.get(model)
    if found is None:
        layers = list(base.walk_layers(model))
        found = _Structure(
            frozenset(layer.mode for layer in layers) - {None},
            tuple(layer.vocab_size for layer in layers if isinstance(layer, core.Embedding)),
            tuple(layer for layer in layers if isinstance(layer, positional.PositionalEncoding)))
        _structures[model] = found
    return found


def check_model(model: base.Layer, where: str, mode: str = "predict") -> None:
    """``model`` must be an initialized ``Layer`` with 1 or 2 inputs, built in ``mode``
    (``'predict'``, or ``'eval'`` for sampling by recomputing the prefix)."""
    if not isinstance(model, base.Layer):
        raise TypeError(f"{where}: model must be a retrax Layer; got {type(model).__name__}.")
    modes = _structure(model).modes
    if mode == "eval":
        if modes - {"eval"}:
            raise ValueError(
                f"{where}: eval_mode=True needs a model built with mode='eval'; this one has "
                f"{sorted(modes - {'eval'})[0]!r}-mode layers (use eval_mode=False for a "
                f"predict-mode model).")
    # (A predict-mode Transformer runs its encoder in 'eval' mode: that is fine.)
    elif "train" in modes or (modes and "predict" not in modes):
        mode = "train" if "train" in modes else sorted(modes)[0]
        raise ValueError(
            f"{where}: the model is in {mode!r} mode; decoding needs mode='predict' "
            f"(e.g. trax.models.TransformerLM(..., mode='predict')), or mode='eval' with "
            f"eval_mode=True."
        )
    if not model.initialized:
        raise ValueError(
            f"{where}: the model has no weights; call model.init_from_file(...) or "
            f"model.init(...) first."
        )
    if model.n_in not in (1, 2):
        raise ValueError(f"{where}: models with {model.n_in} inputs are not supported (1 or 2).")


def embedding_vocabs(model: base.Layer) -> list[int]:
    """``vocab_size`` of each ``Embedding``, in print order.

    The first embeds the inputs (the prompt of a language model, the source of
    an encoder-decoder); the last embeds the decoded tokens, start_id included
    (an encoder-decoder's target embedding follows its encoder).
    """
    return list(_structure(model).vocabs)


def vocab_and_max_len(model: base.Layer) -> tuple[int | None, int | None]:
    """The input vocabulary size and the positional encodings' length (None if absent)."""
    vocabs = embedding_vocabs(model)
    vocab = vocabs[0] if vocabs else None
    max_len = None
    for layer in _structure(model).encodings:
        w = layer.weights
        table = w[0] if isinstance(w, tuple) and w else w
        if hasattr(table, "shape"):
            n = int(table.shape[-2])
            max_len = n if max_len is None else min(max_len, n)
    return vocab, max_len


def prepare(model: base.Layer, inputs: Any, batch_size: int, max_length: int,
            prompt_lengths: Any, where: str,
            mode: str = "predict") -> tuple[np.ndarray | None, np.ndarray | None]:
    """Checks the model and the arguments; returns the int32 prompt and its row lengths.

    ``(None, None)`` when there is no prompt (a language model from ``start_id``).
    """
    check_model(model, where, mode)
    if not isinstance(max_length, (int, np.integer)) or max_length < 1:
        raise ValueError(f"{where}: max_length must be a positive int; got {max_length!r}.")
    if inputs is None:
        if model.n_in == 2:
            raise ValueError(f"{where}: an encoder-decoder model needs inputs=(B, L) tokens.")
        return None, None
    inputs = np.asarray(inputs)
    if inputs.dtype.kind not in "iu":
        raise TypeError(f"{where}: inputs must be integer token ids; got dtype {inputs.dtype}.")
    if inputs.ndim != 2:
        raise ValueError(f"{where}: inputs must have shape (batch, length); got {inputs.shape}.")
    if inputs.shape[0] != batch_size:
        raise ValueError(
            f"{where}: inputs.shape[0] is {inputs.shape[0]} but batch_size is {batch_size}; "
            f"pass batch_size={inputs.shape[0]}."
        )
    if inputs.shape[1] == 0:
        raise ValueError(f"{where}: the prompt is empty (inputs.shape[1] == 0).")
    vocab, _ = vocab_and_max_len(model)
    if vocab is not None and inputs.size and (inputs.min() < 0 or inputs.max() >= vocab):
        raise ValueError(
            f"{where}: token ids must be in [0, {vocab}) (the model's vocab_size); got ids "
            f"from {inputs.min()} to {inputs.max()}."
        )
    if prompt_lengths is None:
        lengths = np.full((batch_size,), inputs.shape[1], np.int32)
    else:
        lengths = np.asarray(prompt_lengths, np.int32).reshape(-1)
        if lengths.shape != (batch_size,) or lengths.min() < 1 or lengths.max() > inputs.shape[1]:
            raise ValueError(
                f"{where}: prompt_lengths must hold {batch_size} values in [1, "
                f"{inputs.shape[1]}]; got {lengths.tolist()}."
            )
    return inputs.astype(np.int32), lengths


def cache_length(model: base.Layer, total: int, where: str = "decoding") -> int:
    """Checks that ``total`` positions fit the model's ``max_len``; returns the cache length.

    The cache holds ``total`` rounded up to a multiple of 8, at most ``max_len``.
    """
    _, max_len = vocab_and_max_len(model)
    if max_len is not None and total > max_len:
        raise ValueError(
            f"{where}: the prompt plus max_length needs {total} positions but the model's "
            f"max_len is {max_len}. Shorten the prompt or max_length, or use a model with a "
            f"larger max_len."
        )
    cache_len = -(-total // CACHE_BUCKET) * CACHE_BUCKET
    return cache_len if max_len is None else min(cache_len, max_len)


def check_sampling(temperature: float, top_k: Any, top_p: Any, where: str) -> None:
    """``temperature`` a finite number >= 0, ``top_k`` a positive int, ``top_p`` in (0, 1]."""
    if isinstance(temperature, (str, bytes)) or not np.ndim(temperature) == 0:
        raise TypeError(
            f"{where}: temperature must be a number (0.0 for greedy decoding); got "
            f"{type(temperature).__name__} {temperature!r}."
        )
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise TypeError(
            f"{where}: temperature must be a number (0.0 for greedy decoding); got "
            f"{type(temperature).__name__} {temperature!r}."
        ) from None
    if not (t >= 0 and np.isfinite(t)):  # NaN fails both comparisons
        raise ValueError(
            f"{where}: temperature must be a finite number >= 0; got {temperature!r}. Use "
            f"temperature=0.0 for greedy decoding or a positive value such as 1.0 to sample."
        )
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ValueError(f"{where}: top_k must be a positive int; got {top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"{where}: top_p must be in (0, 1]; got {top_p!r}.")


def check_start_id(model: base.Layer, start_id: Any, where: str) -> None:
    """``start_id`` must be an int inside the vocabulary of the decoded tokens."""
    if isinstance(start_id, bool) or not isinstance(start_id, (int, np.integer)):
        raise TypeError(
            f"{where}: start_id must be an int token id; got {type(start_id).__name__} "
            f"{start_id!r}."
        )
    vocabs = embedding_vocabs(model)
    if vocabs and not 0 <= start_id < vocabs[-1]:
        raise ValueError(
            f"{where}: start_id={start_id} is outside the model's vocabulary [0, "
            f"{vocabs[-1]}) (vocab_size={vocabs[-1]}); the model would read a clamped "
            f"embedding row instead. Pass a start_id in that range (Trax's default is 0)."
        )

