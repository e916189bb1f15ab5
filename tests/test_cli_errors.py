"""What the ``retrax`` command promises under faults.

Every user error (bad arguments, a bad config, an input that is missing or
not a checkpoint, an output path that cannot be written) exits 2 with one line
on stderr that names the bad value; a failure while working (here: a diverged
checkpoint) exits 1 with one line and a hint to rerun with ``--debug``. The
commands run in this process (``cli.main``) except where a pipe is needed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from retrax import checkpoints, cli, pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SORT = pretrained.path("sort-transformer")
TINY_SPEC = "TransformerLM:vocab_size=8,d_model=8,d_ff=8,n_layers=1,n_heads=2"


def call(capsys, *argv: str) -> tuple[int, str, str]:
    """Runs the CLI in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def error_line(capsys, code: int, *argv: str) -> str:
    """Runs the CLI, checks the exit code and that stderr is one line; returns that line."""
    got, _, err = call(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def tiny_config(tmp_path, **changes) -> str:
    """A config file for a 1-step run of a tiny reverse model, with ``changes`` (a__b: a.b)."""
    config = {
        "model": {"name": "TransformerLM", "vocab_size": 32, "d_model": 8, "d_ff": 8,
                  "n_layers": 1, "n_heads": 2},
        "task": {"name": "reverse", "batch_size": 2, "length": 4, "seed": 0},
        "eval": None, "steps": 1, "n_steps_per_checkpoint": 1,
    }
    for key, value in changes.items():
        node = config
        *parents, last = key.split("__")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[last] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


# -- train: the config file -----------------------------------------------------


def test_config_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"steps": "caf\xe9"}')
    line = error_line(capsys, 2, "train", str(path), "--output-dir", str(tmp_path / "out"))
    assert f"config file {path} is not UTF-8 text (byte 0xe9 at offset 14)" in line


@pytest.mark.parametrize("text, pattern", [
    ('{"steps": 1,}', r"is not valid JSON: Expecting property name .* line 1 column 13"),
    ("", r"is not valid JSON: Expecting value: line 1 column 1"),
    ('{"steps": NaN}', r"is not valid JSON: NaN is not a JSON number"),
    ('{"optimizer": {"learning_rate": -Infinity}}', r"is not valid JSON: -Infinity is not a"),
    ("[1, 2]", r"the config must be a mapping of sections; got list"),
])
def test_config_that_is_not_a_json_mapping(tmp_path, capsys, text, pattern):
    path = tmp_path / "bad.json"
    path.write_text(text)
    line = error_line(capsys, 2, "train", str(path), "--output-dir", str(tmp_path / "out"))
    assert str(path) in line and re.search(pattern, line), line


def test_config_that_is_a_directory(tmp_path, capsys):
    line = error_line(capsys, 2, "train", str(tmp_path), "--output-dir", str(tmp_path / "o"))
    assert line.endswith(f"config file {tmp_path} is a directory; pass a file.")


# -- train: values in the config ------------------------------------------------


@pytest.mark.parametrize("changes, message", [
    ({"random_seed": 2**70}, "config random_seed must be in [0, 2**32 - 1] = [0, 4294967295]; "
                             "got 1180591620717411303424."),
    ({"random_seed": -1}, "config random_seed must be in [0, 2**32 - 1] = [0, 4294967295]; "
                          "got -1."),
    ({"random_seed": True}, "config random_seed must be an integer; got true."),
    ({"task__seed": 2**70}, "config task.seed must be in [0, 2**32 - 1] = [0, 4294967295]; "
                            "got 1180591620717411303424."),
    ({"task__seed": -5}, "config task.seed must be in [0, 2**32 - 1] = [0, 4294967295]; got -5."),
    ({"task__seed": "x"}, 'config task.seed must be an integer; got "x".'),
    ({"eval__every": 0}, "config eval.every must be a positive integer; got 0."),
    ({"eval__every": -3}, "config eval.every must be a positive integer; got -3."),
    ({"eval__every": "often"}, 'config eval.every must be a positive integer; got "often".'),
    ({"eval__every": 1.5}, "config eval.every must be a positive integer; got 1.5."),
    ({"eval__seed": -1}, "config eval.seed must be in [0, 2**32 - 1] = [0, 4294967295]; got -1."),
    ({"eval__final_batches": "x"}, 'config eval.final_batches must be a positive integer; '
                                   'got "x".'),
    ({"eval__metrics": "Accuracy"}, 'config eval.metrics must be a non-empty list of metric '
                                    'layer names, e.g. ["CrossEntropyLoss", "Accuracy"]; got '
                                    '"Accuracy".'),
    ({"plot": 5}, 'config plot must be true, false or a file name such as "history.png"; got 5.'),
])
def test_bad_config_values_are_named(tmp_path, capsys, changes, message):
    config = tiny_config(tmp_path, **changes)
    line = error_line(capsys, 2, "train", config, "--output-dir", str(tmp_path / "out"))
    assert line == f"retrax train: error: {message}"
    assert not (tmp_path / "out").exists()  # Refused before any work.


@pytest.mark.parametrize("changes, message", [
    ({"model__vocab_size": 3}, "config model vocab_size is 3 but the reverse task's token ids go "
                               "up to 30; set model.vocab_size to 31 or more (the examples use "
                               "32)."),
    ({"task__length": 2**70}, "config task.length is 1180591620717411303424: the reverse task's "
                              "rows hold 2 * length + 2 = 2361183241434822606850 tokens but the "
                              "model's max_len is 2048; set task.length to 1023 or less, or "
                              "raise model.max_len."),
    ({"task__length": 8, "model__max_len": 16}, "config task.length is 8: the reverse task's "
                                                "rows hold 2 * length + 2 = 18 tokens but the "
                                                "model's max_len is 16; set task.length to 7 or "
                                                "less, or raise model.max_len."),
])
def test_toy_task_that_the_model_cannot_hold(tmp_path, capsys, changes, message):
    config = tiny_config(tmp_path, **changes)
    line = error_line(capsys, 2, "train", config, "--output-dir", str(tmp_path / "out"))
    assert line == f"retrax train: error: {message}"
    assert not (tmp_path / "out").exists()


def test_seed_given_by_set_is_checked_too(tmp_path, capsys):
    line = error_line(capsys, 2, "train", tiny_config(tmp_path), "--output-dir",
                      str(tmp_path / "out"), "--set", f"random_seed={2**70}")
    assert "config random_seed must be in [0, 2**32 - 1]" in line


def test_output_dir_that_is_not_a_path(tmp_path, capsys):
    line = error_line(capsys, 2, "train", tiny_config(tmp_path, output_dir=5))
    assert "config output_dir must be a directory path (a string); got 5." in line


# -- train: the output directory ------------------------------------------------


def test_output_dir_that_is_a_file(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    line = error_line(capsys, 2, "train", tiny_config(tmp_path), "--output-dir", str(a_file))
    assert line.endswith(f"output directory {a_file} is a file, not a directory; choose a "
                         f"directory.")
    line = error_line(capsys, 2, "train", tiny_config(tmp_path), "--output-dir",
                      str(a_file / "run"))
    assert f"output directory {a_file / 'run'} cannot be created: {a_file} is a file" in line
    assert a_file.read_text() == "mine"


def test_foreign_output_dir_is_refused_and_force_trains_there(tmp_path, capsys, monkeypatch):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8 not retrax")
    config = tiny_config(tmp_path)
    line = error_line(capsys, 2, "train", config, "--output-dir", str(foreign))
    assert str(foreign) in line and "cat.jpg" in line and "--force" in line
    assert sorted(p.name for p in foreign.iterdir() if p.name != ".retrax.lock") == ["cat.jpg"]

    written = []  # config.json goes through the atomic writer (no half-written file).
    real = checkpoints.write_bytes_atomic
    monkeypatch.setattr(checkpoints, "write_bytes_atomic",
                        lambda path, data: written.append(os.fspath(path)) or real(path, data))
    code, out, err = call(capsys, "train", config, "--output-dir", str(foreign), "--force")
    assert code == 0, err
    assert "Trained to step 1" in out
    assert (foreign / "cat.jpg").read_bytes() == b"\xff\xd8 not retrax"
    assert str(foreign / "config.json") in written
    assert json.loads((foreign / "config.json").read_text())["run"]["steps"] == 1
    assert not (foreign / "train_config.json").exists()


def test_output_dir_held_by_another_run(tmp_path, capsys):
    fcntl = pytest.importorskip("fcntl")
    from retrax.supervised import run_dir

    out = tmp_path / "busy"
    out.mkdir()
    with open(out / run_dir.LOCK_NAME, "w") as lock:  # As a Loop in another process would.
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        line = error_line(capsys, 2, "train", tiny_config(tmp_path), "--output-dir", str(out))
    assert str(out) in line and "in use" in line


# -- sample ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [str(2**70), "-1", str(-2**70), str(2**32)])
def test_sample_seed_out_of_range(capsys, seed):
    line = error_line(capsys, 2, "sample", "sort-transformer", "--prompt", "0 1", "--seed", seed)
    assert f"argument --seed: the seed must be in [0, 2**32 - 1] = [0, 4294967295], got {seed}" \
        in line


def test_sample_largest_seed_works(capsys):
    code, out, err = call(capsys, "sample", "sort-transformer", "--prompt", "0 3 15 14 9 0",
                          "--seed", str(2**32 - 1))
    assert (code, out, err) == (0, "3 9 14 15\n", "")


def test_prompt_longer_than_the_model_allows(capsys):
    line = error_line(capsys, 2, "sample", "sort-transformer", "--prompt", " ".join(["1"] * 2047))
    assert line.endswith("--prompt has 2047 tokens but the model holds at most max_len=2048 "
                         "positions (the start token, the prompt and at least one new token); "
                         "shorten it to 2046 tokens or fewer.")


@pytest.mark.parametrize("max_length", ["2046", str(2**70)])
def test_prompt_plus_max_length_beyond_max_len(capsys, max_length):
    line = error_line(capsys, 2, "sample", "sort-transformer", "--prompt", "0 1",
                      "--max-length", max_length)
    assert f"--max-length is {max_length}, too long after 2 prompt tokens" in line
    assert "model's max_len is 2048; use --max-length 2045 or less." in line


def test_a_prompt_that_fits_exactly_runs(capsys):
    code, out, _ = call(capsys, "sample", "sort-transformer", "--prompt", " ".join(["1"] * 2046),
                        "--max-length", "1")
    assert code == 0 and len(out.split()) == 1


def test_encoder_decoder_prompt_and_max_length_beyond_max_len(tmp_path, capsys):
    from retrax import models, shapes

    model = models.Transformer(input_vocab_size=10, output_vocab_size=12, d_model=8, d_ff=8,
                               n_encoder_layers=1, n_decoder_layers=1, n_heads=2, max_len=16,
                               mode="predict")
    sig = (shapes.ShapeDtype((1, 5), np.int32), shapes.ShapeDtype((1, 1), np.int32))
    model.init(sig)
    path = str(tmp_path / "translate.safetensors")
    model.save_to_file(path, weights_only=True, input_signature=sig)
    line = error_line(capsys, 2, "sample", path, "--prompt", " ".join(["1"] * 17))
    assert line.endswith("--prompt has 17 tokens but the model reads at most max_len=16; "
                         "shorten it to 16 tokens or fewer.")
    line = error_line(capsys, 2, "sample", path, "--prompt", "1 2", "--max-length", "16")
    assert "--max-length is 16 but the model's decoder holds at most max_len=16" in line
    line = error_line(capsys, 2, "sample", path, "--prompt", "1 10")
    assert line.endswith("--prompt token 10 is outside the model's vocabulary [0, 10).")


@pytest.mark.parametrize("prompt, pattern", [
    (f"0 {2**70}", r"--prompt token 1180591620717411303424 is outside the model's vocabulary "
                   r"\[0, 32\)\.$"),
    ("0 32", r"--prompt token 32 is outside the model's vocabulary \[0, 32\)\.$"),
    ("0 -1", r"--prompt needs at least one non-negative token id; got '0 -1'\.$"),
    ("0 1.5", r"--prompt must be token ids .*; got '0 1\.5'\.$"),
    ("3 x", r"--prompt must be token ids .*; got '3 x'\.$"),
    ("", r"--prompt needs at least one non-negative token id; got ''\.$"),
])
def test_prompt_ids_outside_the_vocabulary_or_not_integers(capsys, prompt, pattern):
    line = error_line(capsys, 2, "sample", "sort-transformer", "--prompt", prompt)
    assert re.search(pattern, line), line


def test_vocabulary_is_read_off_the_model_when_the_config_does_not_say(tmp_path, capsys):
    bare = tmp_path / "bare.safetensors"
    ckpt = checkpoints.read_any(SORT)
    checkpoints.save_native(str(bare), tuple(ckpt["flat_weights"]),
                            input_signature=ckpt["input_signature"])
    spec = "TransformerLM:vocab_size=32,d_model=32,d_ff=128,n_layers=2"
    line = error_line(capsys, 2, "sample", str(bare), "--model", spec, "--config", "{}",
                      "--prompt", "0 40")
    assert "--prompt token 40 is outside the model's vocabulary [0, 32)." in line
    assert cli.model_limits(pretrained.load("sort-transformer")) == (32, 2048)


@pytest.mark.parametrize("eos", ["32", str(2**70)])
def test_eos_id_outside_the_vocabulary(capsys, eos):
    line = error_line(capsys, 2, "sample", "sort-transformer", "--prompt", "0 1", "--eos-id", eos)
    assert f"--eos-id {eos} is outside the model's vocabulary [0, 32)" in line


@pytest.mark.parametrize("flag, value, message", [
    ("--temperature", "inf", "argument --temperature: expected a finite number >= 0, got 'inf'"),
    ("--temperature", "nan", "argument --temperature: expected a finite number >= 0, got 'nan'"),
    ("--top-p", "nan", r"argument --top-p: expected a number in (0, 1], got 'nan'"),
])
def test_non_finite_sampling_numbers(capsys, flag, value, message):
    line = error_line(capsys, 2, "sample", "sort-transformer", "--prompt", "0 1", flag, value)
    assert message in line


def test_config_file_for_the_model_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "model.json"
    path.write_bytes(b"\xff{}")
    line = error_line(capsys, 2, "sample", SORT, "--prompt", "0 1", "--config", str(path))
    assert f"--config file {path} is not UTF-8 text (byte 0xff at offset 0)" in line


# -- missing and unreadable checkpoints -----------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["sample", "{p}", "--prompt", "0 1"], "'{p}' is not a checkpoint file, an output directory"),
    (["show", "{p}"], "'{p}' is not a checkpoint file, an output directory, a pretrained model"),
    (["convert", "{p}", "{d}/x.pkl.gz"], "input checkpoint not found: {p}"),
])
def test_missing_checkpoint(tmp_path, capsys, argv, message):
    path = str(tmp_path / "gone" / "model.safetensors")
    argv = [a.format(p=path, d=tmp_path) for a in argv]
    line = error_line(capsys, 2, *argv)
    assert message.format(p=path) in line


@pytest.mark.parametrize("content, message", [
    (b"", "{p} is neither a retrax checkpoint (safetensors) nor a Trax .pkl.gz file: file too "
          "short"),
    (b"\x00" * 64, "{p} is neither a retrax checkpoint (safetensors) nor a Trax .pkl.gz file"),
    (b"\x1f\x8b" + b"\x00" * 64, "{p}"),  # (read_any's own message names the file.)
])
@pytest.mark.parametrize("command", ["sample", "show", "convert"])
def test_a_file_that_is_no_checkpoint(tmp_path, capsys, content, message, command):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    argv = {"sample": ["sample", str(path), "--prompt", "0 1"], "show": ["show", str(path)],
            "convert": ["convert", str(path), str(tmp_path / "x.pkl.gz")]}[command]
    line = error_line(capsys, 2, *argv)
    assert message.format(p=path) in line
    if content.startswith(b"\x1f\x8b"):
        assert "Unknown compression method" in line


def test_a_directory_given_as_the_checkpoint_to_convert(tmp_path, capsys):
    line = error_line(capsys, 2, "convert", str(tmp_path), str(tmp_path / "x.pkl.gz"))
    assert f"input checkpoint {tmp_path} is a directory" in line


# -- output files: --svg and convert's output ------------------------------------


def test_svg_that_is_a_directory_or_under_a_file(tmp_path, capsys):
    line = error_line(capsys, 2, "show", TINY_SPEC, "--svg", str(tmp_path))
    assert line.endswith(f"--svg {tmp_path} is a directory; give a file path inside it instead.")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    target = a_file / "model.svg"
    line = error_line(capsys, 2, "show", TINY_SPEC, "--svg", str(target))
    assert line.endswith(f"--svg {target} cannot be created: {a_file} is a file, not a "
                         f"directory.")


def test_svg_that_the_system_refuses_to_write(tmp_path, capsys, monkeypatch):
    from retrax import visualize

    target = tmp_path / "ro" / "model.svg"

    def refuse(model, path):
        raise PermissionError(13, "Permission denied", os.path.join(tmp_path, ".model.svg.tmp"))

    monkeypatch.setattr(visualize, "layer_diagram", refuse)
    line = error_line(capsys, 2, "show", TINY_SPEC, "--svg", str(target))
    assert line.endswith(f"cannot write the --svg diagram {target}: Permission denied; choose a "
                         f"path you can write to.")


def test_convert_output_that_is_a_directory_or_under_a_file(tmp_path, capsys):
    out_dir = tmp_path / "x.pkl.gz"
    out_dir.mkdir()
    line = error_line(capsys, 2, "convert", SORT, str(out_dir))
    assert line.endswith(f"output {out_dir} is a directory; give a file path inside it instead.")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    line = error_line(capsys, 2, "convert", SORT, str(a_file / "x.pkl.gz"))
    assert f"output {a_file / 'x.pkl.gz'} cannot be created: {a_file} is a file" in line


def test_quickstart_output_dir_that_is_a_file(tmp_path, capsys, monkeypatch):
    from retrax import quickstart

    monkeypatch.setattr(quickstart, "main", lambda **kw: pytest.fail("should not start"))
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    line = error_line(capsys, 2, "quickstart", "--output-dir", str(a_file))
    assert line.endswith(f"--output-dir {a_file} is a file, not a directory; choose a directory.")


# -- failures while working, and a closed pipe -----------------------------------


def test_a_diverged_checkpoint_exits_1_with_one_line(tmp_path, capsys):
    import jax

    from retrax import models, shapes

    model = models.TransformerLM(vocab_size=8, d_model=8, d_ff=8, n_layers=1, n_heads=2,
                                 mode="predict")
    sig = shapes.ShapeDtype((1, 1), np.int32)
    model.init(sig)
    model.weights = jax.tree_util.tree_map(lambda w: np.full(np.shape(w), np.nan, np.float32),
                                           model.weights)
    path = str(tmp_path / "nan.safetensors")
    model.save_to_file(path, weights_only=True, input_signature=sig)
    line = error_line(capsys, 1, "sample", path, "--prompt", "0 1")
    assert line.startswith("retrax sample: error: FloatingPointError: ")
    assert line.endswith("(run with --debug for the traceback)")
    with pytest.raises(FloatingPointError, match="NaN"):
        cli.main(["sample", path, "--prompt", "0 1", "--debug"])


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "retrax", "show",
                             TINY_SPEC], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # Like `retrax show ... | true`: nobody reads.
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert err == b""
