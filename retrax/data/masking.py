"""Span corruption for masked language models (T5's objective, Trax's ``data.MLM``).

:func:`random_spans_noise_mask` marks about ``noise_density`` of a sequence's
tokens as noise, in spans of mean length ``mean_noise_span_length``, each
span preceded by a run of kept tokens. :func:`consume_noise_mask` then turns
``(tokens, mask)`` into ``(inputs, targets)``: the inputs keep the kept tokens
and replace each noise span by one sentinel id, the targets hold the noise
spans each after its sentinel. Sentinels count down from ``vocab_size - 1``.

>>> import numpy as np
>>> from retrax import data
>>> tokens = np.array([10, 11, 12, 13, 14, 15])
>>> mask = np.array([False, True, True, False, False, True])
>>> inputs, targets = next(data.consume_noise_mask(vocab_size=100)([(tokens, mask)]))
>>> inputs.tolist(), targets.tolist()
([10, 99, 13, 14, 98], [99, 11, 12, 98, 15])

``data.MLM(vocab_size, max_length)`` chains the three stages: chunk, mask,
consume. Masks are drawn from NumPy generators seeded by ``seed1``/``seed2``
(or a stage's ``seed``): the same seeds give the same masks. Unlike Trax, a
stage draws a different mask for every example (Trax re-seeds NumPy's global
generator per example when seeds are given, which repeats one mask for every
example of a length, and uses the global generator otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrax.data.chunking import generate_sequential_chunks, token_length
from retrax.data.stream import MapStage, Node, Serial

__all__ = ["random_spans_noise_mask", "generate_random_noise_mask", "consume_noise_mask", "MLM",
           "RandomNoiseMask", "ConsumeNoiseMask"]


def _generator(seed: Any, what: str) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"random_spans_noise_mask: {what} must be an int >= 0 or a "
                         f"numpy.random.Generator; got {seed!r}.")
    return np.random.default_rng(int(seed))


def _check_noise(noise_density: Any, mean_noise_span_length: Any, where: str) -> None:
    if not isinstance(noise_density, (int, float, np.number)) or not 0 <= noise_density <= 1:
        raise ValueError(f"{where}: noise_density is the fraction of tokens to mask, in [0, 1]; "
                         f"got {noise_density!r}.")
    if not isinstance(mean_noise_span_length, (int, float, np.number)) \
            or not mean_noise_span_length > 0:
        raise ValueError(f"{where}: mean_noise_span_length must be > 0; got "
                         f"{mean_noise_span_length!r}.")


def _segment_lengths(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Random lengths (each >= 1) of ``n_segments`` segments that add up to ``n_items``."""
    starts = np.zeros(n_items - 1, bool)
    starts[:n_segments - 1] = True
    rng.shuffle(starts)  # Which of the n_items - 1 gaps start a new segment.
    segment_id = np.concatenate([[0], np.cumsum(starts)])
    return np.bincount(segment_id, minlength=n_segments)


def random_spans_noise_mask(length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0, seed1: Any = None,
                            seed2: Any = None, example: Any = None, *,
                            rng: np.random.Generator | None = None) -> np.ndarray:
    """A boolean mask of ``length`` with noise spans (T5's ``random_spans_noise_mask``).

    ``round(length * noise_density)`` tokens are noise (at least 1, at most
    ``length - 1``), in ``round(noise_tokens / mean_noise_span_length)`` spans
    (at least 1; no more than there are noise or kept tokens, where Trax
    fails). The mask starts with kept tokens and alternates kept and noise
    spans, their lengths drawn at random.

    Args:
      length: the sequence length.
      noise_density: the fraction of noise tokens.
      mean_noise_span_length: the mean length of a noise span.
      seed1: seed (int) or ``numpy.random.Generator`` for the noise span lengths.
      seed2: the same for the kept span lengths; without it they continue from
        ``seed1``'s generator.
      example: unused (Trax passes the example for debugging).
      rng: keyword-only; the generator to use when no seed is given. Without
        seeds and ``rng`` the mask is drawn from fresh OS entropy (not
        reproducible, like Trax's unseeded calls).

    >>> mask = random_spans_noise_mask(20, 0.3, 2.0, seed1=0, seed2=1)
    >>> int(mask.sum()), mask[0]
    (6, np.False_)
    >>> bool((random_spans_noise_mask(20, 0.3, 2.0, seed1=0, seed2=1) == mask).all())
    True
    """
    del example
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"random_spans_noise_mask: length must be an int >= 0; got {length!r}.")
    _check_noise(noise_density, mean_noise_span_length, "random_spans_noise_mask")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"random_spans_noise_mask: rng must be a numpy.random.Generator; got "
                        f"{type(rng).__name__}.")
    base = rng if rng is not None else np.random.default_rng()
    rng1 = base if seed1 is None else _generator(seed1, "seed1")
    rng2 = rng1 if seed2 is None else _generator(seed2, "seed2")

    n = max(int(length), 2)  # Trax's guard against degenerate lengths; cut back below.
    n_noise = min(max(int(round(n * noise_density)), 1), n - 1)
    n_kept = n - n_noise
    n_spans = max(int(round(n_noise / mean_noise_span_length)), 1)
    n_spans = min(n_spans, n_noise, n_kept)
    noise_lengths = _segment_lengths(n_noise, n_spans, rng1)
    kept_lengths = _segment_lengths(n_kept, n_spans, rng2)
    span_lengths = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    is_noise = np.repeat(np.tile([False, True], n_spans), span_lengths)
    return is_noise[:length]


class RandomNoiseMask(MapStage):
    """The stage :func:`generate_random_noise_mask` returns: ``tokens -> (tokens, mask)``."""

    name = "RandomNoiseMask"

    def __init__(self, noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                 seed1: int | None = None, seed2: int | None = None):
        _check_noise(noise_density, mean_noise_span_length, "generate_random_noise_mask")
        for what, seed in (("seed1", seed1), ("seed2", seed2)):
            if seed is not None and (isinstance(seed, bool) or not isinstance(
                    seed, (int, np.integer)) or seed < 0):
                raise ValueError(f"generate_random_noise_mask: {what} must be an int >= 0 or "
                                 f"None; got {seed!r}.")
        self.noise_density = noise_density
        self.mean_noise_span_length = mean_noise_span_length
        self.seeds = [0 if seed1 is None else int(seed1), 0 if seed2 is None else int(seed2)]

    def apply(self, example: Any, node: Node, index: int) -> Any:
        n = token_length(example, index, "generate_random_noise_mask")
        # One generator per example, from the seeds and the example's index: reproducible,
        # different for every example, and nothing to save but the index.
        rng = np.random.default_rng([*self.seeds, index])
        mask = random_spans_noise_mask(n, self.noise_density, self.mean_noise_span_length,
                                       rng=rng)
        return (example, mask)


def generate_random_noise_mask(noise_density: float = 0.15, mean_noise_span_length: float = 3.0,
                               seed1: int | None = None,
                               seed2: int | None = None) -> RandomNoiseMask:
    """Pairs each token sequence with a :func:`random_spans_noise_mask` of its length.

    Seeds default to 0: every stream made from this stage draws the same masks.
    """
    return RandomNoiseMask(noise_density, mean_noise_span_length, seed1, seed2)


def _n_spans(mask: np.ndarray) -> int:
    return int(np.sum(mask & ~np.concatenate([[False], mask[:-1]])))


def _spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab_size: int) -> np.ndarray:
    """Replaces each span of ``mask`` by one sentinel (``vocab_size - 1``, ``- 2``, ...)."""
    previous = np.concatenate([[False], mask[:-1]])
    first = mask & ~previous
    sentinels = vocab_size - np.cumsum(first)
    return np.where(first, sentinels, tokens)[~(mask & previous)]


class ConsumeNoiseMask(MapStage):
    """The stage :func:`consume_noise_mask` returns: ``(tokens, mask) -> (inputs, targets)``."""

    name = "ConsumeNoiseMask"

    def __init__(self, vocab_size: int = 32100):
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) \
                or vocab_size < 1:
            raise ValueError(f"consume_noise_mask: vocab_size must be a positive int (sentinels "
                             f"are vocab_size - 1, vocab_size - 2, ...); got {vocab_size!r}.")
        self.vocab_size = int(vocab_size)

    def apply(self, example: Any, node: Node, index: int) -> Any:
        if not isinstance(example, (tuple, list)) or len(example) != 2:
            raise ValueError(f"consume_noise_mask: example {index} must be (tokens, noise_mask), "
                             f"e.g. from data.generate_random_noise_mask().")
        tokens, mask = np.asarray(example[0]), np.asarray(example[1])
        if tokens.ndim != 1 or mask.shape != tokens.shape or mask.dtype != bool:
            raise ValueError(
                f"consume_noise_mask: example {index} has tokens of shape {tokens.shape} and a "
                f"mask of shape {mask.shape}, dtype {mask.dtype}; it needs 1-D tokens and a "
                f"boolean mask of the same shape."
            )
        n_spans = max(_n_spans(mask), _n_spans(~mask))
        if n_spans >= self.vocab_size:
            raise ValueError(f"consume_noise_mask: example {index} has {n_spans} spans but only "
                             f"{self.vocab_size} ids for sentinels (vocab_size); raise "
                             f"vocab_size or lower the noise.")
        return (_spans_to_sentinels(tokens, mask, self.vocab_size),
                _spans_to_sentinels(tokens, ~mask, self.vocab_size))


def consume_noise_mask(vocab_size: int = 32100) -> ConsumeNoiseMask:
    """Turns ``(tokens, noise_mask)`` into ``(inputs, targets)`` with sentinels (see the module)."""
    return ConsumeNoiseMask(vocab_size)


def MLM(vocab_size: int | None = None, max_length: int | None = None,  # noqa: N802 (Trax's name)
        noise_density: float = 0.15, mean_noise_span_length: float = 3.0, *,
        seed: int = 0) -> Serial:
    """Masked-language-model examples: chunks of ``max_length``, span-corrupted.

    ``data.Serial(generate_sequential_chunks(max_length),
    generate_random_noise_mask(noise_density, mean_noise_span_length, seed),
    consume_noise_mask(vocab_size))``: a stream of 1-D token sequences becomes
    ``(inputs, targets)`` pairs. ``vocab_size`` is required (the sentinels are
    the top ids); ``max_length=None`` keeps sequences whole.

    >>> import numpy as np
    >>> inputs, targets = next(MLM(vocab_size=100, max_length=10)([np.arange(1, 31)]))
    >>> inputs.tolist(), targets.tolist()  # the first chunk, 1..10: 9 and 10 masked
    ([1, 2, 3, 4, 5, 6, 7, 8, 99], [99, 9, 10])
    """
    if vocab_size is None:
        raise ValueError("MLM: give vocab_size; the sentinels replacing masked spans are the ids "
                         "vocab_size - 1, vocab_size - 2, ...")
    return Serial(
        generate_sequential_chunks(max_length),
        generate_random_noise_mask(noise_density, mean_noise_span_length, seed1=seed),
        consume_noise_mask(vocab_size),
    )
