"""A run's one config file: the Loop's config.json, with the caller's run_config under "run"."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax import models
from retrax.supervised import training


def batches():
    x = np.ones((2, 6), np.int32)
    while True:
        yield x, x, np.ones((2, 6), np.float32)


def make_loop(output_dir, **kw):
    model = models.from_config({"name": "TransformerLM", "kwargs": {
        "vocab_size": 8, "d_model": 8, "d_ff": 8, "n_layers": 1, "n_heads": 2, "max_len": 8}})
    task = training.TrainTask(batches(), tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=1)
    return training.Loop(model, task, output_dir=str(output_dir), stdout=io.StringIO(), **kw)


@pytest.mark.slow
def test_run_config_goes_into_config_json_with_the_model_config(tmp_path):
    run = {"task": {"name": "reverse", "length": 2}, "steps": 3, "note": [1.5, None, "x"]}
    loop = make_loop(tmp_path, run_config=run)
    run["steps"] = 99  # The Loop keeps a copy.
    loop.run(1)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["run"] == {"task": {"name": "reverse", "length": 2}, "steps": 3,
                             "note": [1.5, None, "x"]}
    assert config["model"] == models.config_of(loop.model)
    assert config["model"]["kwargs"]["max_len"] == 8
    assert sorted(p.name for p in tmp_path.glob("*config*.json")) == ["config.json"]
    loop.close()


def test_without_run_config_run_is_null(tmp_path):
    loop = make_loop(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["run"] is None
    loop.close()


@pytest.mark.parametrize("run_config, pattern", [
    (["steps", 3], "run_config must be a dict; got list"),
    ({"optimizer": object()}, "run_config must hold only JSON values"),
])
def test_a_run_config_that_json_cannot_hold_is_refused_before_any_file(tmp_path, run_config,
                                                                        pattern):
    with pytest.raises(TypeError, match=pattern):
        make_loop(tmp_path / "out", run_config=run_config)
    assert not (tmp_path / "out").exists()
