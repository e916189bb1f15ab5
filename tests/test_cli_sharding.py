"""``retrax train`` passes the config's ``sharding`` and ``compute_dtype`` to the Loop."""

from __future__ import annotations

import json
import os

import pytest

from retrax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVERSE_CONFIG = os.path.join(REPO, "examples", "configs", "reverse.json")
SMALL = ["--set", "model.d_model=16", "--set", "model.d_ff=32", "--set", "model.n_layers=1",
         "--set", "task.batch_size=4", "--set", "eval=null",
         "--set", "n_steps_per_checkpoint=2"]


def call(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _config(out) -> dict:
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)


def test_defaults_are_null_and_resolve_to_the_loops_defaults(tmp_path, capsys):
    with open(REVERSE_CONFIG) as f:
        run = cli.resolve_train_config({**json.load(f), "output_dir": str(tmp_path)})
    assert run["sharding"] is None and run["compute_dtype"] is None


@pytest.mark.parametrize("key,value,choices", [
    ("sharding", '"tp"', r'\["replicated", "fsdp", "tensor:K"\]'),
    ("compute_dtype", '"float16"', r'\["float32", "bfloat16"\]'),
    ("sharding", "3", r'\["replicated", "fsdp", "tensor:K"\]'),
])
def test_bad_values_are_usage_errors_naming_the_key_and_choices(tmp_path, capsys, key, value,
                                                                choices):
    code, _, err = call(capsys, "train", REVERSE_CONFIG, "--output-dir", str(tmp_path / "o"),
                        "--steps", "1", *SMALL, "--set", f"{key}={value}")
    assert code == 2
    assert "Traceback" not in err
    import re

    line = err.strip().splitlines()[-1]
    assert re.search(rf"config {key} must be one of {choices} or null.*got {value}\. "
                     rf"Set it with --set {key}=VALUE\.", line), line
    assert not (tmp_path / "o").exists()  # refused before anything was written


class _StopError(Exception):
    pass


def test_the_values_reach_the_loop(tmp_path, capsys, monkeypatch):
    from retrax.supervised import training

    seen = {}

    def fake_loop(*args, **kwargs):
        seen.update(kwargs)
        raise _StopError

    monkeypatch.setattr(training, "Loop", fake_loop)
    argv = ["train", "--debug", REVERSE_CONFIG, "--output-dir", str(tmp_path / "o"),
            "--steps", "1", *SMALL]
    with pytest.raises(_StopError):
        cli.main([*argv, "--set", "sharding=fsdp", "--set", "compute_dtype=bfloat16"])
    assert (seen["sharding"], seen["compute_dtype"]) == ("fsdp", "bfloat16")
    assert (seen["run_config"]["sharding"], seen["run_config"]["compute_dtype"]) == (
        "fsdp", "bfloat16")
    seen.clear()
    with pytest.raises(_StopError):
        cli.main(argv)
    assert seen["sharding"] is None and seen["compute_dtype"] is None


@pytest.mark.slow
def test_train_with_fsdp_and_bfloat16_records_them_and_resumes_with_them(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = call(capsys, "train", REVERSE_CONFIG, "--output-dir", str(out),
                           "--steps", "2", *SMALL, "--set", "sharding=fsdp",
                           "--set", "compute_dtype=bfloat16")
    assert code == 0, stdout
    config = _config(out)
    assert (config["sharding"], config["compute_dtype"]) == ("fsdp", "bfloat16")
    assert (config["run"]["sharding"], config["run"]["compute_dtype"]) == ("fsdp", "bfloat16")
    # Resumed without the keys (null): the Loop takes the recorded values.
    code, stdout, _ = call(capsys, "train", REVERSE_CONFIG, "--output-dir", str(out),
                           "--steps", "3", *SMALL)
    assert code == 0 and "Resuming from step 2" in stdout
    config = _config(out)
    assert (config["sharding"], config["compute_dtype"]) == ("fsdp", "bfloat16")
    assert config["run"]["sharding"] is None
