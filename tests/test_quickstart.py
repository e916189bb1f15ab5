"""The quick start: the example script, its notebook, and ``retrax.quickstart``'s cells."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from retrax import quickstart

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "quick_start.py")
NOTEBOOK = os.path.join(REPO, "examples", "quick_start.ipynb")


def _converter():
    spec = importlib.util.spec_from_file_location(
        "py_to_ipynb", os.path.join(REPO, "scripts", "py_to_ipynb.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_prints_the_notebook_results(tmp_path):
    # About 25 s on a 2-core CPU: 1000 training steps plus compilation.
    env = {**os.environ, "RETRAX_TRAIN_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, env=env,
                            cwd=str(tmp_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "[[ 3  9 14 15]]" in out  # The pretrained sort model.
    assert "[[10  8  6  4]]" in out  # The model trained on the reverse task.
    assert "Step   1000: eval          Accuracy |  1.00000000" in out
    assert out.index("[[ 3  9 14 15]]") < out.index("Step      1:") < out.index("[[10  8  6  4]]")
    assert "quick start finished" in out
    assert (tmp_path / "model.pkl.gz").exists()


def test_notebook_is_generated_from_the_script():
    with open(SCRIPT, encoding="utf-8") as f:
        wanted = _converter().render(f.read())
    with open(NOTEBOOK, encoding="utf-8") as f:
        committed = f.read()
    assert committed == wanted, (
        "examples/quick_start.ipynb is out of date; run: "
        "python scripts/py_to_ipynb.py examples/quick_start.py")


def test_notebook_holds_every_cell_of_the_seed_notebook():
    with open(NOTEBOOK, encoding="utf-8") as f:
        nb = json.load(f)
    assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("outputs") == [] for c in nb["cells"] if c["cell_type"] == "code")
    text = "\n".join(code)
    assert "import retrax as trax" in text and "import trax" not in text.replace(
        "import retrax as trax", "")
    for needle in ("model.init_from_file('gs://ml-intro/models/sort-transformer.pkl.gz'",
                   "def tiny_transformer_lm(mode='train')", "def reverse_ints_task(",
                   "sequence_batch, _, masks = next(a)", "training.TrainTask(",
                   "training.EvalTask(", "training.Loop(", "training_loop.run(1000)",
                   "tiny_transformer_lm(mode='predict')", "print(tiny_transformer_lm())"):
        assert sum(needle in c for c in code) == 1, needle
    markdown = [c for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert markdown and markdown[0]["source"][0].startswith("# TransformerLM Quick Start")


def test_notebook_is_valid_nbformat():
    nbformat = pytest.importorskip("nbformat")
    nbformat.validate(nbformat.read(NOTEBOOK, as_version=4))


def test_converter_cells():
    text = "# ---\n# jupyter:\n#   x: 1\n# ---\n\n# %% [markdown]\n# # Title\n#\n# Text\n\n" \
           "# %%\nx = 1\n\ny = 2\n\n\n# %%\nprint(x)\n"
    cells = _converter().convert(text)["cells"]
    assert [(c["cell_type"], c["source"]) for c in cells] == [
        ("markdown", ["# Title\n", "\n", "Text"]),
        ("code", ["x = 1\n", "\n", "y = 2"]),
        ("code", ["print(x)"]),
    ]


def test_module_reverse_task_draws_what_the_notebook_draws():
    def notebook_task(batch_size, length=4):  # The seed notebook's generator.
        while True:
            source = np.random.randint(1, 31, (batch_size, length))
            target = np.flip(source, 1)
            zero = np.zeros([batch_size, 1], np.int32)
            x = np.concatenate([zero, source, zero, target], axis=1)
            w = np.concatenate([np.zeros((batch_size, length + 2)),
                                np.ones((batch_size, length))], axis=1)
            yield (x, x, w)

    state = np.random.get_state()
    try:
        np.random.seed(0)
        expected = [next(notebook_task(8)) for _ in range(2)]
    finally:
        np.random.set_state(state)
    rng = np.random.RandomState(0)
    got = [next(quickstart.reverse_ints_task(8, rng=rng)) for _ in range(2)]
    for e, g in zip(expected, got):
        for a, b in zip(e, g):
            np.testing.assert_array_equal(a, b)


def test_module_pretrained_cell_sorts(capsys):
    out = quickstart.sort_with_pretrained()
    np.testing.assert_array_equal(out, [[3, 9, 14, 15]])
    printed = capsys.readouterr().out
    assert "[[ 3  9 14 15]]" in printed
    if importlib.util.find_spec("gcsfs") is None:  # Then gs:// falls back, and says so.
        assert "note:" in printed and "not Google's file" in printed


def test_module_layer_concepts(capsys):
    quickstart.layer_concepts()
    out = capsys.readouterr().out
    assert "Relu: 1 in, 1 out; [[0. 0. 0. 1. 2.]]" in out
    assert "Dense_3: W (5, 3), b (3,)" in out
    assert "Concatenate: n_in=2, n_out=1" in out
    assert "Branch_out2[\n  Dense_2\n  Dense_3\n] -> [(1, 2), (1, 3)]" in out
    assert "Residual output shape: (1, 5)" in out
