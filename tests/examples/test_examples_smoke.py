"""The Trax-style example programs in ``examples/`` (issue 14 item 4) run and learn.

Each example is a Trax program with only its imports changed; ``main(argv)``
is run in this process. The default tests run each one small (a few dozen
steps, tiny sizes) and check that the loss fell and that the final evaluation
or decoding is sane; the ``slow`` tests run each at its default settings and
check the quality it reaches.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = ["gru_char_lm", "lstm_ner_tagger", "siamese_lstm", "lstm_translator",
            "image_classifiers"]


def load(name):
    spec = importlib.util.spec_from_file_location(
        f"retrax_example_{name}", os.path.join(REPO, "examples", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name, argv, tmp_path, capsys):
    result = load(name).main([*argv, "--output-dir", str(tmp_path)])
    return result, capsys.readouterr().out


def losses(result, mode, metric):
    return [value for _, value in result["loop"].history.get(mode, f"metrics/{metric}")]


def check_run(result, out, tmp_path, metric, steps, factor):
    """Trax's Loop output was printed and written; train and eval ``metric`` fell."""
    assert result["loop"].step == steps
    assert f"Step      1: train {metric} |" in out and f"eval  {metric} |" in out
    with open(tmp_path / "metrics.jsonl") as f:
        logged = [json.loads(line) for line in f]
    assert {row["step"] for row in logged} >= {1, steps}
    assert (tmp_path / "model.pkl.gz").exists()
    for mode in ("train", "eval"):
        values = losses(result, mode, metric)
        assert len(values) >= 2 and values[-1] < factor * values[0], (mode, values)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_a_trax_program_with_only_the_imports_changed(name):
    with open(os.path.join(REPO, "examples", f"{name}.py"), encoding="utf-8") as f:
        code = f.read().split('"""', 2)[2]  # Past the module docstring.
    lines = [line for line in (c.split("#")[0].rstrip() for c in code.splitlines())
             if "retrax" in line]
    assert lines and all(re.fullmatch(r"(import retrax as trax|from retrax[\w.]* import .*)", line)
                         for line in lines), lines
    assert "import retrax as trax" in lines
    assert "def main(argv" in code and '"--steps"' in code and '"--output-dir"' in code


def test_gru_char_lm_small(tmp_path, capsys):
    argv = ["--steps", "40", "--eval-every", "20", "--d-model", "32", "--n-layers", "1",
            "--batch-size", "16", "--max-length", "40", "--n-samples", "4"]
    result, out = run("gru_char_lm", argv, tmp_path, capsys)
    check_run(result, out, tmp_path, "CrossEntropyLoss", 40, factor=0.7)
    ids = np.asarray(result["sample_ids"])
    assert ids.shape[0] == 4 and 1 <= ids.shape[1] <= 40
    assert ids.dtype.kind == "i" and ids.min() >= 0 and ids.max() < 256
    assert all(s.startswith("the") for s in result["samples"])
    assert 0.0 <= result["grammatical"] <= 1.0
    assert out.rstrip().splitlines()[-1].startswith("grammatical samples:")


@pytest.mark.slow
def test_lstm_ner_tagger_small(tmp_path, capsys):
    argv = ["--steps", "40", "--eval-every", "20", "--d-model", "16", "--batch-size", "32"]
    result, out = run("lstm_ner_tagger", argv, tmp_path, capsys)
    check_run(result, out, tmp_path, "CrossEntropyLoss", 40, factor=0.5)
    # Well above always answering "O" (the commonest tag, ~61% of the words).
    assert result["majority_accuracy"] < 0.7 and result["accuracy"] > 0.85
    assert out.rstrip().splitlines()[-1].startswith("masked accuracy on 500")


def test_lstm_ner_tagger_padding_has_weight_zero():
    ner = load("lstm_ner_tagger")
    vocab = ner.make_vocab()
    sentences, labels = ner.make_dataset(10, vocab, seed=0)
    x, y, w = next(ner.data_generator(10, sentences, labels, max_len=24, shuffle=False))
    lengths = [len(s) for s in sentences]
    np.testing.assert_array_equal(w.sum(1), lengths)
    np.testing.assert_array_equal(w, (x != 0).astype(np.float32))
    assert all((y[i, n:] == 0).all() and (y[i, :n] > 0).all() for i, n in enumerate(lengths))
    # The masked accuracy counts real words only.
    pred = np.zeros((*y.shape, len(ner.TAGS)), np.float32)
    pred[..., ner.TAG_MAP["O"]] = 1.0
    expected = np.mean(np.concatenate(labels) == ner.TAG_MAP["O"])
    assert ner.evaluate_prediction(pred, y) == pytest.approx(expected)


@pytest.mark.slow
def test_siamese_lstm_small(tmp_path, capsys):
    argv = ["--steps", "60", "--eval-every", "30", "--d-model", "32"]
    result, out = run("siamese_lstm", argv, tmp_path, capsys)
    check_run(result, out, tmp_path, "TripletLoss", 60, factor=0.9)
    similarity, labels = result["similarity"], result["labels"]
    assert np.all(np.abs(similarity) <= 1.0 + 1e-5)  # Unit vectors.
    assert similarity[labels].mean() > similarity[~labels].mean() + 0.2
    assert result["accuracy"] > 0.6  # Half the pairs are duplicates.
    # Parallel(q_processor, q_processor): one encoder's weights, shared.
    model = result["loop"].model
    assert model.sublayers[0] is model.sublayers[1]


def test_siamese_triplet_loss_by_hand():
    siamese = load("siamese_lstm")
    v1 = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    v2 = np.array([[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]], np.float32)
    scores = v1 @ v2.T  # [[.8, 0, 1], [.6, 1, 0], [.96, .8, .6]]
    positive = np.array([0.8, 1.0, 0.6])
    np.testing.assert_allclose(np.diag(scores), positive, rtol=1e-6)
    closest = np.array([1.0, 0.6, 0.96])
    mean = np.array([0.5, 0.3, 0.88])
    expected = np.mean(np.maximum(0, 0.25 - positive + closest)
                       + np.maximum(0, 0.25 - positive + mean))
    loss = siamese.TripletLoss()((v1, v2))
    assert float(loss) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_lstm_translator_small(tmp_path, capsys):
    argv = ["--steps", "40", "--eval-every", "20", "--d-model", "32", "--n-heads", "1",
            "--batch-size", "32", "--n-test", "8", "--max-len", "6"]
    result, out = run("lstm_translator", argv, tmp_path, capsys)
    check_run(result, out, tmp_path, "CrossEntropyLoss", 40, factor=0.9)
    decoded = np.asarray(result["decoded"])
    assert decoded.shape[0] == 8 and 1 <= decoded.shape[1] <= 8  # max_len + 2 tokens.
    assert decoded.dtype.kind == "i" and decoded.min() >= 0 and decoded.max() < 32
    assert out.rstrip().splitlines()[-1].startswith("exact greedy translations:")


def test_lstm_translator_reference():
    translator = load("lstm_translator")
    source = np.array([2, 5, 7])
    np.testing.assert_array_equal(translator.translate(source),
                                  translator.TRANSLATION[[7, 5, 2]])
    assert sorted(translator.TRANSLATION[2:]) == list(range(2, 32))


@pytest.mark.parametrize("model, argv, min_accuracy", [
    pytest.param("mlp", ["--steps", "100", "--eval-every", "50"], 0.5, marks=pytest.mark.slow),
    # The ResNet's first compile alone takes ~10 s: the slow step runs it.
    pytest.param("resnet", ["--steps", "20", "--eval-every", "10", "--batch-size", "16",
                            "--n-test", "100"], 0.5, marks=pytest.mark.slow),
])
def test_image_classifiers_small(model, argv, min_accuracy, tmp_path, capsys):
    result, out = run("image_classifiers", ["--model", model, *argv], tmp_path, capsys)
    steps = int(argv[1])
    check_run(result, out, tmp_path, "WeightedCategoryCrossEntropy", steps, factor=0.8)
    assert result["chance"] == pytest.approx(1 / 6) and result["accuracy"] > min_accuracy
    assert out.rstrip().splitlines()[-1].startswith(f"{model} accuracy on")


# -- The examples at their default settings (a few hundred steps each) ---------------


@pytest.mark.slow
def test_gru_char_lm_default_samples_grammatical_sentences(tmp_path, capsys):
    result, _ = run("gru_char_lm", [], tmp_path, capsys)
    assert result["grammatical"] >= 0.9, result["samples"]
    assert losses(result, "eval", "Accuracy")[-1] > 0.8


@pytest.mark.slow
def test_lstm_ner_tagger_default_accuracy(tmp_path, capsys):
    result, _ = run("lstm_ner_tagger", [], tmp_path, capsys)
    assert result["accuracy"] > 0.95


@pytest.mark.slow
def test_siamese_lstm_default_accuracy(tmp_path, capsys):
    result, _ = run("siamese_lstm", [], tmp_path, capsys)
    assert result["accuracy"] > 0.9


@pytest.mark.slow
def test_lstm_translator_default_translates_most_sentences_exactly(tmp_path, capsys):
    result, _ = run("lstm_translator", [], tmp_path, capsys)
    assert result["exact"] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_image_classifiers_default_accuracy(model, tmp_path, capsys):
    result, _ = run("image_classifiers", ["--model", model], tmp_path, capsys)
    assert result["accuracy"] > 0.95
