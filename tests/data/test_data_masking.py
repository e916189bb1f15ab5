"""Trax's pretraining stages: chunks, PrefixLM, span-corruption masks, MLM."""

from __future__ import annotations

import numpy as np
import pytest

from retrax import data


def spans(mask):
    """Lengths of the runs of True in a boolean mask."""
    out, run = [], 0
    for m in list(mask) + [False]:
        if m:
            run += 1
        elif run:
            out.append(run)
            run = 0
    return out


def reconstruct(inputs, targets, vocab_size):
    """The original tokens from MLM's (inputs, targets): each sentinel in the inputs is
    replaced by the tokens after the same sentinel in the targets (NumPy reference)."""
    fills, current = {}, None
    for t in targets.tolist():
        if t >= vocab_size - 50:
            current = t
            fills[current] = []
        else:
            fills[current].append(t)
    out = []
    for t in inputs.tolist():
        out.extend(fills.get(t, [])) if t >= vocab_size - 50 else out.append(t)
    return out


# -- Chunks and PrefixLM ---------------------------------------------------------------


def test_sequential_chunks_keep_the_example_type():
    chunks = list(data.generate_sequential_chunks(4)([np.arange(10), [1, 2], np.arange(4)]))
    assert [c.tolist() if isinstance(c, np.ndarray) else c for c in chunks] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [1, 2], [0, 1, 2, 3]]
    assert isinstance(chunks[3], list) and isinstance(chunks[0], np.ndarray)
    assert list(data.generate_sequential_chunks()([[5] * 9])) == [[5] * 9]  # None: whole.


def test_prefix_lm_pairs_and_its_tail_rule():
    f = data.PrefixLM(input_length=3, output_length=2)
    # 0..10 (11 tokens): (0 1 2 | 3 4), (5 6 7 | 8 9); 10 alone has no complete inputs.
    assert list(f([list(range(11))])) == [([0, 1, 2], [3, 4]), ([5, 6, 7], [8, 9])]
    # 9 tokens: the second pair's targets are just 8; 8 tokens: 5 6 7 has no target.
    assert list(f([list(range(9))]))[-1] == ([5, 6, 7], [8])
    assert list(f([list(range(8))])) == [([0, 1, 2], [3, 4])]
    stream = f([list(range(11)), list(range(8))])
    assert len(list(stream)) == 3 and stream.stats() == {"PrefixLM": {"dropped_tokens": 1 + 3}}
    with pytest.raises(data.EmptyStreamError, match="dropped_tokens=3"):
        next(f([[1, 2, 3]]))  # Inputs but no target: nothing at all comes out.
    x, y = next(f([np.arange(5)]))
    assert x.tolist() == [0, 1, 2] and y.tolist() == [3, 4]
    assert list(data.PrefixLM()([list(range(700))]))[0][1] == list(range(128, 640))  # Defaults.


def test_prefix_lm_stream_position_is_exact():
    make = lambda: data.Serial([list(range(20)), list(range(100, 120))],  # noqa: E731
                               data.PrefixLM(2, 3))
    reference = list(make()())
    stream = make()()
    [next(stream) for _ in range(3)]  # Stops inside the first example's pairs.
    fresh = make()()
    fresh.load_state_dict(stream.state_dict())
    assert list(fresh) == reference[3:]


@pytest.mark.parametrize("stage, example, match", [
    (data.PrefixLM(2, 3), (np.arange(5), np.arange(5)), "tuple of 2 components"),
    (data.PrefixLM(2, 3), "some text", "Tokenize text first"),
    (data.generate_sequential_chunks(3), np.zeros((2, 4)), r"shape \(2, 4\)"),
])
def test_chunk_stages_reject_what_is_not_a_token_sequence(stage, example, match):
    with pytest.raises((TypeError, ValueError), match=match):
        next(stage([example]))


@pytest.mark.parametrize("make", [lambda: data.PrefixLM(0, 3), lambda: data.PrefixLM(2, -1),
                                  lambda: data.generate_sequential_chunks(2.5)])
def test_chunk_stages_bad_lengths(make):
    with pytest.raises(ValueError, match="must be a positive int"):
        make()


# -- random_spans_noise_mask ------------------------------------------------------------


@pytest.mark.parametrize("seed1, seed2", [(0, 1), (5, 5), (17, 3), (40, 99)])
def test_noise_mask_has_exactly_the_noise_and_span_counts(seed1, seed2):
    mask = data.random_spans_noise_mask(100, 0.15, 3.0, seed1=seed1, seed2=seed2)
    assert mask.dtype == bool and mask.shape == (100,)
    assert mask.sum() == 15 and len(spans(mask)) == 5 and not mask[0]
    assert np.array_equal(mask, data.random_spans_noise_mask(100, 0.15, 3.0, seed1, seed2))
    mask = data.random_spans_noise_mask(64, 0.5, 4.0, seed1=seed1)
    assert mask.sum() == 32 and len(spans(mask)) == 8 and len(spans(~mask)) == 8


def test_noise_mask_seeds_and_generators():
    a = data.random_spans_noise_mask(200, 0.2, 2.0, seed1=1, seed2=2)
    assert not np.array_equal(a, data.random_spans_noise_mask(200, 0.2, 2.0, seed1=1, seed2=3))
    # Without seed2 the kept spans continue seed1's generator; a Generator works as a seed.
    b = data.random_spans_noise_mask(200, 0.2, 2.0, seed1=1)
    c = data.random_spans_noise_mask(200, 0.2, 2.0, seed1=np.random.default_rng(1))
    assert np.array_equal(b, c)
    d = data.random_spans_noise_mask(200, 0.2, 2.0, rng=np.random.default_rng(1))
    assert np.array_equal(b, d)
    # Unseeded: still the exact counts.
    assert data.random_spans_noise_mask(200, 0.2, 2.0).sum() == 40


def test_noise_mask_degenerate_lengths():
    assert data.random_spans_noise_mask(0).shape == (0,)
    assert data.random_spans_noise_mask(1, seed1=0).tolist() == [False]
    # Length 2: one kept, one noise token.
    assert data.random_spans_noise_mask(2, seed1=0).tolist() == [False, True]
    # 9 noise tokens but only 1 kept token: 1 span (Trax fails here).
    assert data.random_spans_noise_mask(10, 0.9, 3.0, seed1=0).tolist() == [False] + [True] * 9
    # Density 0 still masks one token; density 1 keeps one.
    assert data.random_spans_noise_mask(10, 0.0, seed1=0).sum() == 1
    assert data.random_spans_noise_mask(10, 1.0, seed1=0).sum() == 9


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=-1), "length must be an int >= 0"),
    (dict(length=10, noise_density=1.5), r"noise_density .* in \[0, 1\]"),
    (dict(length=10, mean_noise_span_length=0), "mean_noise_span_length must be > 0"),
    (dict(length=10, seed1=-3), "seed1 must be an int >= 0"),
    (dict(length=10, rng=42), "rng must be a numpy.random.Generator"),
])
def test_noise_mask_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        data.random_spans_noise_mask(**kwargs)


# -- Masking stages and MLM -------------------------------------------------------------


def test_consume_noise_mask_by_hand():
    tokens = np.array([5, 6, 7, 8, 9, 10, 11])
    mask = np.array([True, True, False, False, True, False, True])
    inputs, targets = next(data.consume_noise_mask(vocab_size=50)([(tokens, mask)]))
    assert inputs.tolist() == [49, 7, 8, 48, 10, 47]
    assert targets.tolist() == [5, 6, 49, 9, 48, 11]
    with pytest.raises(ValueError, match="must be \\(tokens, noise_mask\\)"):
        next(data.consume_noise_mask(50)([tokens]))
    with pytest.raises(ValueError, match="boolean mask of the same shape"):
        next(data.consume_noise_mask(50)([(tokens, mask[:3])]))
    with pytest.raises(ValueError, match="3 spans but only 3 ids"):
        next(data.consume_noise_mask(3)([(tokens, mask)]))
    with pytest.raises(ValueError, match="vocab_size must be a positive int"):
        data.consume_noise_mask(0)


def test_noise_mask_stage_differs_per_example_and_is_seeded():
    examples = [np.arange(40)] * 4
    masks = [m for _, m in data.generate_random_noise_mask(0.25, 2.0)(examples)]
    assert all(m.sum() == 10 and len(spans(m)) == 5 for m in masks)
    assert not all(np.array_equal(masks[0], m) for m in masks[1:])
    again = [m for _, m in data.generate_random_noise_mask(0.25, 2.0)(examples)]
    assert all(np.array_equal(a, b) for a, b in zip(masks, again))
    other = [m for _, m in data.generate_random_noise_mask(0.25, 2.0, seed1=7)(examples)]
    assert not all(np.array_equal(a, b) for a, b in zip(masks, other))
    with pytest.raises(ValueError, match="seed2 must be an int >= 0 or None"):
        data.generate_random_noise_mask(seed2="x")


def test_mlm_pairs_rebuild_their_chunks():
    vocab = 1000
    docs = [np.arange(1, 251), np.arange(300, 340), np.arange(500, 503)]
    pairs = list(data.MLM(vocab_size=vocab, max_length=100)(docs))
    chunks = [np.arange(1, 101), np.arange(101, 201), np.arange(201, 251),
              np.arange(300, 340), np.arange(500, 503)]
    assert len(pairs) == len(chunks)
    for (inputs, targets), chunk in zip(pairs, chunks):
        assert reconstruct(inputs, targets, vocab) == chunk.tolist()
        n_noise = sum(1 for t in targets.tolist() if t < vocab - 50)
        assert n_noise == min(max(round(len(chunk) * 0.15), 1), len(chunk) - 1)
    # Seeded: the same pairs again; another seed, other masks.
    again = list(data.MLM(vocab_size=vocab, max_length=100)(docs))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(pairs, again))
    other = list(data.MLM(vocab_size=vocab, max_length=100, seed=1)(docs))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(pairs, other))


def test_mlm_position_is_exact_and_needs_vocab_size():
    make = lambda: data.Serial([np.arange(1, 300)], data.MLM(vocab_size=500, max_length=40))  # noqa: E731
    reference = [x.tolist() for x, _ in make()()]
    stream = make()()
    next(stream), next(stream), next(stream)
    fresh = make()()
    fresh.load_state_dict(stream.state_dict())
    assert [x.tolist() for x, _ in fresh] == reference[3:]
    with pytest.raises(ValueError, match="MLM: give vocab_size"):
        data.MLM(max_length=10)


# -- SentencePieceTokenize (Trax's c4 pipeline stage, without TensorFlow) ----------------


def test_sentencepiece_tokenize_reads_a_model_file(tmp_path):
    pytest.importorskip("sentencepiece")
    corpus = [f"the cat {w} sat on the mat number {i}" for i, w in
              enumerate(["black", "white", "grey", "small", "big"] * 20)]
    tok = data.SentencePieceTokenizer.train(corpus, vocab_size=40)
    tok.save(str(tmp_path))
    path = str(tmp_path / "sentencepiece.model")
    stage = data.SentencePieceTokenize(spm_path=path, extra_ids=5)
    out = list(stage(["the grey cat", ("the mat", "label"), b"sat on"]))
    assert [x.tolist() for x in out] == [tok.encode("the grey cat"), tok.encode("the mat"),
                                         tok.encode("sat on")]
    assert out[0].dtype == np.int32 and stage.vocab_size == 45
    pairs = list(data.Serial(data.SentencePieceTokenize(path), data.PrefixLM(2, 3))(
        ["the black cat sat on the mat"]))
    assert np.concatenate(pairs[0]).tolist() == tok.encode("the black cat sat on the mat")[:5]
    assert next(data.sentencepiece_tokenize(iter(["big"]), path)).tolist() == tok.encode("big")
    with pytest.raises(TypeError, match="example 0 is a int"):
        next(stage([3]))
    with pytest.raises(ValueError, match="extra_ids must be an int >= 0"):
        data.SentencePieceTokenize(path, extra_ids=-1)
    with pytest.raises(FileNotFoundError, match="SentencePiece model file not found"):
        next(data.SentencePieceTokenize(str(tmp_path / "none.model"))(["x"]))
