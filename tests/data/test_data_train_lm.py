"""examples/train_lm.py: a few steps of the stdlib language model, end to end."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_example():
    path = os.path.join(REPO, "examples", "train_lm.py")
    spec = importlib.util.spec_from_file_location("train_lm_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stdlib_split_is_by_file_and_deterministic():
    from retrax import data

    root, files = data.stdlib_files()
    assert all(f.endswith(".py") and "site-packages" not in f for f in files)
    train, held = data.split_by_hash(root, files, 10)
    assert sorted(train + held) == sorted(files) and not set(train) & set(held)
    assert 0.05 < len(held) / len(files) < 0.15
    assert data.split_by_hash(root, files, 10) == (train, held)
    assert os.path.join(root, "os.py") in train + held


@pytest.mark.slow
def test_train_lm_quick_smoke_run(tmp_path):
    lm = load_example()
    out = tmp_path / "lm"
    results = lm.main(["--steps", "3", "--quick", "--output-dir", str(out)])
    assert results["steps"] == 3 and results["tokens_per_step"] == 4 * 32
    assert math.isfinite(results["heldout_loss_nats"])
    assert results["heldout_loss_nats"] < math.log(258) + 1  # Near uniform after 3 steps.
    assert results["heldout_bits_per_byte"] == pytest.approx(
        results["heldout_loss_nats"] / math.log(2), abs=1e-3)
    assert results["sample"].startswith("def ")
    assert results["train_data"]["TextDocuments"]["files_read"] >= 1
    assert json.loads((out / "results.json").read_text())["steps"] == 3
    assert json.loads((out / "tokenizer.json").read_text()) == {"type": "byte",
                                                                "n_reserved_ids": 2}
    for name in ("model.pkl.gz", "checkpoint_00000003.safetensors"):
        assert (out / name).exists(), name
    # One config file: the example's run config is config.json's "run".
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["steps"] == 3 and config["run"]["task"]["seq_len"] == 32
    assert config["model"]["name"] == "TransformerLM"
    assert config["model"]["kwargs"]["vocab_size"] == 258
    assert not (out / "run_config.json").exists()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "loss.png").stat().st_size > 1000
