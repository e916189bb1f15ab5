"""``retrax sample CHECKPOINT``: decodes after a prompt of ids (``--prompt``) or text (``--text``).

Every limit of the model is checked before decoding, naming the flag to change:
token ids inside the vocabulary, prompt and ``--max-length`` inside ``max_len``,
``--eos-id`` a token the model can emit.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from retrax.cli.errors import UsageError, one_line
from retrax.cli.model_specs import model_from_args
from retrax.cli.sources import load_model, resolve_checkpoint
from retrax.supervised import decoding_checks

__all__ = ["cmd_sample", "parse_prompt", "model_limits"]


def parse_prompt(text: str) -> list[int]:
    """Token ids separated by spaces or commas (brackets allowed): ``"[0, 3 15]"`` -> ``[0, 3, 15]``."""
    items = [s for s in re.split(r"[\s,]+", text.strip().strip("[]")) if s]
    try:
        ids = [int(s) for s in items]
    except ValueError:
        raise UsageError(f"--prompt must be token ids separated by spaces or commas, "
                         f"e.g. \"0 3 15 14 9 0\"; got {text!r}.") from None
    if not ids or min(ids) < 0:
        raise UsageError(f"--prompt needs at least one non-negative token id; got {text!r}.")
    return ids


def model_limits(model: Any) -> tuple[int | None, int | None]:
    """``(vocab_size, max_len)`` of a model's first Embedding and its PositionalEncodings
    (the smallest table): None where the model has no such layer."""
    return decoding_checks.vocab_and_max_len(model)


def _check_lengths(model: Any, n_prompt: int, max_length: int, max_len: int | None,
                   prompt_flag: str, length_flag: str) -> None:
    """Refuses a prompt or --max-length that does not fit the model's max_len positions."""
    if max_len is None:
        return
    if model.n_in == 2:  # Encoder-decoder: the prompt is the encoder's input.
        if n_prompt > max_len:
            raise UsageError(f"{prompt_flag} has {n_prompt} tokens but the model reads at most "
                             f"max_len={max_len}; shorten it to {max_len} tokens or fewer.")
        if max_length + 1 > max_len:
            raise UsageError(f"{length_flag} is {max_length} but the model's decoder holds at "
                             f"most max_len={max_len} positions (the start token and the new "
                             f"tokens); use --max-length {max_len - 1} or less.")
        return
    # A language model reads the start token, the prompt, then each new token.
    if n_prompt + 2 > max_len:
        raise UsageError(f"{prompt_flag} has {n_prompt} tokens but the model holds at most "
                         f"max_len={max_len} positions (the start token, the prompt and at "
                         f"least one new token); shorten it to {max_len - 2} tokens or fewer.")
    if n_prompt + 1 + max_length > max_len:
        raise UsageError(f"{length_flag} is {max_length}, too long after {n_prompt} prompt "
                         f"tokens: the start token, the prompt and the new tokens need "
                         f"{n_prompt + 1 + max_length} positions but the model's max_len is "
                         f"{max_len}; use --max-length {max_len - 1 - n_prompt} or less.")


def _find_tokenizer(args: argparse.Namespace, info: dict) -> Any:
    """The tokenizer given by --tokenizer, or the one saved next to the checkpoint."""
    from retrax.data.tokenizers import load_tokenizer

    candidates = [args.tokenizer] if args.tokenizer else []
    if not args.tokenizer:
        if os.path.isdir(args.checkpoint):
            candidates.append(args.checkpoint)
        candidates.append(os.path.dirname(os.path.abspath(info["path"])))
    for directory in candidates:
        if os.path.isfile(os.path.join(directory, "tokenizer.json")):
            try:
                return load_tokenizer(directory)
            except (OSError, ValueError, KeyError) as err:
                raise UsageError(f"cannot load the tokenizer in {directory}: "
                                 f"{one_line(err)}") from None
    where = args.tokenizer or " or ".join(candidates)
    raise UsageError(f"--text needs a tokenizer, but {where} holds no tokenizer.json; pass "
                     f"--tokenizer DIR (a directory written by tokenizer.save(DIR)).")


def cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np

    from retrax.supervised import decoding

    if args.prompt is not None and args.text is not None:
        raise UsageError("give either --prompt (token ids) or --text, not both.")
    prompt = None if args.prompt is None else parse_prompt(args.prompt)
    info = resolve_checkpoint(args.checkpoint)
    tokenizer = None
    if args.text is not None:
        tokenizer = _find_tokenizer(args, info)
        prompt = list(tokenizer.encode(args.text))
        if not prompt:
            raise UsageError("--text is empty; give some text to continue.")
    flag = "--text" if tokenizer is not None else "--prompt"
    config = model_from_args(args, info["model"])
    vocab = (config or {}).get("kwargs", {}).get("vocab_size")
    if prompt is not None and isinstance(vocab, int) and max(prompt) >= vocab:
        raise UsageError(f"{flag} token {max(prompt)} is outside the model's vocabulary "
                         f"[0, {vocab}).")
    max_length = args.max_length
    if max_length is None:  # The task's answer length when known (toy tasks: 4).
        length = ((info["run"] or {}).get("task") or {}).get("length")
        max_length = length if isinstance(length, int) and length > 0 else 4
    model = load_model(info, config, "predict", args.checkpoint)
    vocab, max_len = model_limits(model)
    if prompt is not None and vocab is not None and max(prompt) >= vocab:
        raise UsageError(f"{flag} token {max(prompt)} is outside the model's vocabulary "
                         f"[0, {vocab}).")
    if prompt is not None and max(prompt) >= 2**31:
        raise UsageError(f"{flag} token {max(prompt)} does not fit a 32-bit token id.")
    _check_lengths(model, len(prompt or ()), max_length, max_len, flag,
                   "--max-length" if args.max_length is not None
                   else f"--max-length (default {max_length})")
    eos = None if args.eos_id is None or args.eos_id < 0 else args.eos_id
    if eos is not None and vocab is not None and eos >= vocab:
        raise UsageError(f"--eos-id {eos} is outside the model's vocabulary [0, {vocab}), so "
                         f"no row could stop there; give an id below {vocab} (or a negative "
                         f"one for no end token).")
    inputs = None if prompt is None else np.array([prompt], np.int32)
    output = decoding.autoregressive_sample(
        model, inputs, temperature=args.temperature, max_length=max_length, eos_id=eos,
        top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    for row in np.asarray(output):
        if tokenizer is not None:
            ids = [int(t) for t in row]
            if eos is not None and eos in ids:
                ids = ids[:ids.index(eos)]
            print(args.text + tokenizer.decode(ids))
        else:
            print(" ".join(str(int(t)) for t in row))
    return 0
