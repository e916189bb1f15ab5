"""The ``retrax`` command line: each command as a subprocess, plus in-process usage errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from retrax import checkpoints, cli, models, pretrained

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVERSE_CONFIG = os.path.join(REPO, "examples", "configs", "reverse.json")
SMALL = ["--set", "model.d_model=16", "--set", "model.d_ff=32", "--set", "model.n_layers=1",
         "--set", "task.batch_size=4", "--set", "eval=null",
         "--set", "n_steps_per_checkpoint=2"]


_ENV: dict[str, str] = dict(os.environ)


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Subprocesses share JAX's compilation cache: the same model compiles once (~2 s each)."""
    _ENV.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax-cache")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    yield
    _ENV.clear()
    _ENV.update(os.environ)


def run(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "retrax", *args], capture_output=True,
                          text=True, cwd=cwd or REPO, env=_ENV, timeout=300)


def call(capsys, *argv: str) -> tuple[int, str, str]:
    """Runs the CLI in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_usage_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, compilation_cache):
    """A tiny reverse model trained for 3 steps by `retrax train` (checkpoints at 1, 2)."""
    out = tmp_path_factory.mktemp("run")
    result = run("train", REVERSE_CONFIG, "--output-dir", str(out), "--steps", "3", *SMALL)
    assert result.returncode == 0, result.stderr
    return out, result


# -- help and usage -------------------------------------------------------------


def test_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for command in ("quickstart", "train", "sample", "show", "convert"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["quickstart", "train", "sample", "show", "convert"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: retrax {command}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, pattern", [
    ([], "missing command"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["sample"], "required: CHECKPOINT"),
    (["sample", "sort-transformer", "--max-length", "0"], "--max-length: expected a positive"),
    (["sample", "sort-transformer", "--temperature", "hot"], "--temperature: expected a number"),
    (["sample", "sort-transformer", "--top-p", "1.5"], r"--top-p: expected a number in \(0, 1\]"),
    (["train", "no/such/config.json"], "config file not found"),
    (["train", REVERSE_CONFIG, "--set", "model.d_model"], "--set expects key=value"),
    (["train", REVERSE_CONFIG, "--set", "modle.d_model=3"], r"unknown key\(s\) \['modle'\]"),
    (["train", REVERSE_CONFIG, "--set", "task.name=shuffle"], "task.*name.*one of"),
    (["train", REVERSE_CONFIG, "--set", "steps=-1"], "steps must be a positive integer"),
    (["train", REVERSE_CONFIG, "--set", "optimizer.name=Adamm"], "unknown optimizer"),
    (["train", REVERSE_CONFIG, "--set", "model.d_modle=8"], "unexpected keyword argument"),
    (["sample", "sort-transformer", "--prompt", "0 3 x"], "--prompt must be token ids"),
    (["sample", "sort-transformer", "--prompt", "0 99 0"], "outside the model's vocabulary"),
    (["sample", "no-such-model", "--prompt", "0"], "not a checkpoint file"),
    (["show", "--svg"], "expected one argument"),
    (["show", "NoSuchModel:d_model=3"], "unknown model 'NoSuchModel'"),
    (["show", "missing.safetensors"], "not a checkpoint file"),
    (["show", "TransformerLM:d_model"], "expected Name:key=value"),
    (["convert", "missing.pkl.gz", "out.safetensors"], "input checkpoint not found"),
    (["convert", os.path.join(REPO, "retrax", "pretrained", "sort-transformer.safetensors"),
      "out.safetensors"], "output must be a Trax .pkl.gz"),
])
def test_bad_usage_exits_2_with_one_line(argv, pattern, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    assert re.search(pattern, err), err


def test_bad_usage_in_a_subprocess_is_one_line_without_traceback():
    assert_usage_error(run("sample", "sort-transformer", "--prompt", "zero"), "--prompt must be")


def test_unreadable_checkpoint_exits_2_with_one_line_and_debug_shows_traceback(tmp_path):
    # A file that is no checkpoint is bad input (exit 2); tests/test_cli_errors.py has a
    # failure while working (exit 1) and more faults.
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    assert_usage_error(run("show", str(bad)), f"{re.escape(str(bad))} is neither a retrax "
                                              f"checkpoint")
    with pytest.raises(cli.UsageError, match="neither a retrax checkpoint"):
        cli.main(["--debug", "show", str(bad)])  # --debug: the exception itself.
    with pytest.raises(cli.UsageError, match="neither a retrax checkpoint"):
        cli.main(["show", str(bad), "--debug"])


def test_console_script_entry_point():
    from importlib import metadata

    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    if "retrax" not in scripts:
        pytest.skip("retrax is not installed with its entry points (pip install -e .)")
    assert scripts["retrax"] == "retrax.cli:main"


# -- quickstart -----------------------------------------------------------------


def test_quickstart_command_calls_the_module(monkeypatch, tmp_path):
    # The real run (a subprocess, ~25 s) is the slow test below; tests/test_quickstart.py
    # runs examples/quick_start.py, and the module's cells are checked there too.
    from retrax import quickstart

    calls = []
    monkeypatch.setattr(quickstart, "main", lambda **kw: calls.append(kw))
    assert cli.main(["quickstart", "--output-dir", str(tmp_path), "--steps", "7"]) == 0
    assert calls == [{"output_dir": str(tmp_path), "steps": 7}]


@pytest.mark.slow
def test_quickstart_runs_every_cell(tmp_path):
    result = run("quickstart", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "[[ 3  9 14 15]]" in result.stdout
    assert "Step   1000: eval          Accuracy |  1.00000000" in result.stdout
    assert "[[10  8  6  4]]" in result.stdout
    assert "Residual output shape: (1, 5)" in result.stdout
    assert "quick start finished" in result.stdout


# -- train ----------------------------------------------------------------------


def test_train_writes_checkpoints_with_the_model_config(trained):
    out, result = trained
    assert "Trained to step 3" in result.stdout
    config = json.loads((out / "config.json").read_text())
    # The model is built by models.from_config, so it records every argument.
    assert config["model"] == models.config_of(models.TransformerLM(
        vocab_size=32, d_model=16, d_ff=32, n_layers=1))
    # One config file: the resolved train config is config.json's "run".
    assert not (out / "train_config.json").exists()
    assert config["run"]["steps"] == 3 and config["run"]["task"]["batch_size"] == 4
    assert config["run"]["model"] == {"name": "TransformerLM", "vocab_size": 32,
                                      "d_model": 16, "d_ff": 32, "n_layers": 1}
    native = sorted(out.glob("checkpoint_*.safetensors"))
    assert [p.name for p in native] == ["checkpoint_00000001.safetensors",
                                        "checkpoint_00000002.safetensors"]
    meta = checkpoints.read_any(str(native[-1]))["meta"]
    assert meta["model"] == config["model"]
    assert (out / "model.pkl.gz").exists()


@pytest.mark.slow
def test_train_resumes_from_the_last_checkpoint(trained, tmp_path, capsys):
    out, _ = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for p in out.iterdir():
        if p.is_file():
            (copy / p.name).write_bytes(p.read_bytes())
    argv = ["train", REVERSE_CONFIG, "--output-dir", str(copy), "--steps", "4", *SMALL]
    code, stdout, _ = call(capsys, *argv)
    assert code == 0
    assert "Resuming from step 2" in stdout and "Trained to step 4" in stdout
    assert "Step      1:" not in stdout
    code, stdout, _ = call(capsys, *argv)
    assert code == 0 and "already at step 4" in stdout


def test_train_reads_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    with open(REVERSE_CONFIG) as f:
        config = json.load(f)
    config.update(steps=1, eval=None, output_dir=str(tmp_path / "out"))
    config["model"].update(d_model=8, d_ff=8, n_layers=1)
    config["task"]["batch_size"] = 2
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    cfg = cli.resolve_train_config(cli.load_config(str(path)))
    assert cfg["model"]["d_model"] == 8 and cfg["eval"] is None


# -- sample ---------------------------------------------------------------------


def test_sample_pretrained_sorts():
    result = run("sample", "sort-transformer", "--prompt", "0 3 15 14 9 0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 9 14 15\n"


def test_sample_and_show_the_shipped_file_by_its_path(capsys):
    # The file records its model config, so its path alone is enough (it was not).
    path = pretrained.path("sort-transformer")
    result = run("sample", path, "--prompt", "0 3 15 14 9 0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "3 9 14 15\n"
    code, out, err = call(capsys, "show", path)
    assert (code, err) == (0, "")
    assert out.startswith("Serial[\n  Serial[\n    ShiftRight(1)\n  ]\n  Embedding_32_32\n")
    assert "Total: 93,088 parameters in 38 arrays" in out


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_sample_agrees_across_checkpoint_formats(trained, tmp_path, capsys):
    out, _ = trained
    args = ["--prompt", "0,4,6,8,10,0", "--temperature", "0.7", "--top-k", "5", "--top-p",
            "0.9", "--seed", "3", "--max-length", "6"]
    code, from_dir, _ = call(capsys, "sample", str(out), *args)
    assert code == 0
    ids = [int(t) for t in from_dir.split()]
    assert len(ids) == 6 and all(0 <= t < 32 for t in ids)
    # The Trax file (model.pkl.gz) and the native checkpoint of the same step agree.
    native = str(out / "checkpoint_00000002.safetensors")
    assert call(capsys, "sample", native, *args) == (0, from_dir, "")
    # A Trax file converted to native keeps the arrays and gains the model config
    # (from config.json next to it), so it samples alone too.
    converted = tmp_path / "converted.safetensors"
    assert call(capsys, "convert", str(out / "model.pkl.gz"), str(converted))[0] == 0
    ckpt = checkpoints.read_any(str(converted))
    assert ckpt["meta"]["model"] == json.loads((out / "config.json").read_text())["model"]
    for x, y in zip(ckpt["flat_weights"], checkpoints.read_any(native)["flat_weights"]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_sample_reads_the_run_config_and_an_old_runs_train_config(trained, tmp_path, capsys):
    # --max-length defaults to the trained task's length: config.json's "run", or, in a run
    # written before the one config file, train_config.json.
    out, _ = trained
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("config.json", "model.pkl.gz"):
        (run_dir / name).write_bytes((out / name).read_bytes())
    config = json.loads((run_dir / "config.json").read_text())
    config["run"]["task"]["length"] = 3
    (run_dir / "config.json").write_text(json.dumps(config))
    assert cli.read_run_config(str(run_dir))["task"]["length"] == 3
    code, stdout, _ = call(capsys, "sample", str(run_dir), "--prompt", "0 4 6 0")
    assert code == 0 and len(stdout.split()) == 3
    # An old run: no "run" in config.json, the train config in train_config.json.
    old_run = {**config.pop("run"), "task": {"name": "reverse", "length": 2}}
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "train_config.json").write_text(json.dumps(old_run))
    assert cli.read_run_config(str(run_dir)) == old_run
    code, stdout, _ = call(capsys, "sample", str(run_dir), "--prompt", "0 4 6 0")
    assert code == 0 and len(stdout.split()) == 2
    # Both: config.json's "run" wins.
    config["run"] = {**old_run, "task": {"name": "reverse", "length": 5}}
    (run_dir / "config.json").write_text(json.dumps(config))
    code, stdout, _ = call(capsys, "sample", str(run_dir), "--prompt", "0 4 6 0")
    assert code == 0 and len(stdout.split()) == 5


def test_a_bare_trax_file_needs_model(trained, tmp_path, capsys):
    out, _ = trained
    lone = tmp_path / "lone.pkl.gz"
    lone.write_bytes((out / "model.pkl.gz").read_bytes())
    for name in ("model.weights.npy.gz", "model.opt_slots0.npy.gz"):
        if (out / name).exists():
            (tmp_path / name.replace("model", "lone")).write_bytes((out / name).read_bytes())
    code, _, err = call(capsys, "sample", str(lone), "--prompt", "0 1 2 3 4 0")
    assert code == 2 and "does not say which model" in err
    wrong = "TransformerLM:vocab_size=32,d_model=8,d_ff=32,n_layers=1"
    code, _, err = call(capsys, "sample", str(lone), "--prompt", "0 1 0", "--model", wrong)
    assert code == 2 and "shape" in err
    right = "TransformerLM:vocab_size=32,d_model=16,d_ff=32,n_layers=1"
    code, out, _ = call(capsys, "show", str(lone), "--model", right)  # No decoding: faster.
    assert code == 0 and "Embedding_32_16" in out and "Total: 36,080 parameters" in out


# -- show -----------------------------------------------------------------------


def test_show_spec_prints_tree_params_and_svg(tmp_path):
    svg = tmp_path / "model.svg"
    result = run("show", "TransformerLM:d_model=32,n_layers=2,vocab_size=32,d_ff=128",
                 "--svg", str(svg))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Serial[\n  Serial[\n    ShiftRight(1)\n  ]\n  Embedding_32_32\n")
    assert re.search(r"^  1 +Embedding_32_32 +\(32, 32\) +1,024$", out, re.M)
    assert re.search(r"^  8 +LayerNorm +\(32,\) \(32,\) +64$", out, re.M)
    assert "Total: 93,088 parameters in 38 arrays" in out
    text = svg.read_text()
    n_layers = int(re.search(r"(\d+) layers in the tree", out).group(1))
    assert text.count('<rect class="layer') == n_layers
    assert "Embedding_32_32" in text and "(32, 32)" in text


def test_show_pretrained_and_checkpoints(trained, capsys):
    out, _ = trained
    code, stdout, _ = call(capsys, "show", "sort-transformer")
    assert code == 0 and "Total: 93,088 parameters" in stdout
    code, stdout, _ = call(capsys, "show", str(out), "--mode", "predict")
    assert code == 0 and "Embedding_32_16" in stdout


def test_show_lists_arrays_of_a_file_without_model_config(tmp_path, capsys):
    from retrax import layers as tl
    from retrax import shapes

    layer = tl.Serial(tl.Dense(3), tl.Dense(2))
    layer.init(shapes.ShapeDtype((1, 4)))
    path = tmp_path / "plain.safetensors"
    layer.save_to_file(str(path), input_signature=shapes.ShapeDtype((1, 4)))
    code, out, _ = call(capsys, "show", str(path))
    assert code == 0
    assert "no model config" in out and "4 weight arrays" in out
    assert "Total: 23 parameters" in out
    code, _, err = call(capsys, "show", str(path), "--svg", str(tmp_path / "x.svg"))
    assert code == 2 and "drawing needs the model" in err


# -- convert --------------------------------------------------------------------


@pytest.mark.slow
def test_convert_round_trip(trained, tmp_path):
    out, _ = trained
    native = tmp_path / "m.safetensors"
    result = run("convert", str(out / "model.pkl.gz"), str(native))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Wrote {native} (native)")
    back = tmp_path / "back.pkl.gz"
    result = run("convert", str(native), str(back))
    assert result.returncode == 0, result.stderr
    a = checkpoints.read_any(str(out / "model.pkl.gz"))["flat_weights"]
    b = checkpoints.read_any(str(back))["flat_weights"]
    assert len(a) == len(b) == 22
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert_usage_error(run("convert", str(back), str(tmp_path / "x.pkl.gz")),
                       "output must be a native .safetensors")


@pytest.mark.slow
def test_sample_text_with_the_tokenizer_saved_next_to_the_checkpoint(tmp_path):
    import io

    import numpy as np

    import retrax as trax
    from retrax import layers as tl
    from retrax.data import ByteTokenizer
    from retrax.supervised import training

    tok = ByteTokenizer()
    text = np.array([tok.encode("abcabcabcabc")] * 4, np.int32)
    batches = iter([(text, text, np.ones_like(text, np.float32))] * 3)
    task = training.TrainTask(batches, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=1)
    model = trax.models.TransformerLM(vocab_size=tok.vocab_size, d_model=16, d_ff=32,
                                      n_layers=1, n_heads=2, max_len=64)
    training.Loop(model, task, output_dir=str(tmp_path), stdout=io.StringIO()).run(1)
    tok.save(str(tmp_path))
    result = run("sample", str(tmp_path), "--text", "abc", "--max-length", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout.rstrip("\n")
    assert out.startswith("abc") and len(out.encode("utf-8", "replace")) >= 3
    no_tok = run("sample", str(tmp_path), "--text", "abc", "--tokenizer", str(tmp_path / "x"))
    assert_usage_error(no_tok, "holds no tokenizer.json")
    both = run("sample", str(tmp_path), "--text", "abc", "--prompt", "1 2")
    assert_usage_error(both, "either --prompt")


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_train_text_lm_then_sample_text(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"f{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    config = tmp_path / "lm.json"
    config.write_text(json.dumps({
        "model": {"name": "TransformerLM", "d_model": 16, "d_ff": 32, "n_layers": 1,
                  "n_heads": 2},
        "task": {"name": "text_lm", "corpus": str(corpus / "*.py"), "seq_len": 32,
                 "batch_size": 4, "held_out_percent": 34},
        "eval": {"metrics": ["CrossEntropyLoss"], "n_batches": 1, "every": 2},
        "steps": 2, "n_steps_per_checkpoint": 2}))
    out = tmp_path / "out"
    result = run("train", str(config), "--output-dir", str(out))
    assert result.returncode == 0, result.stderr
    assert "Step      2: eval  CrossEntropyLoss |" in result.stdout
    saved = json.loads((out / "config.json").read_text())["model"]["kwargs"]
    assert saved["vocab_size"] == 258 and saved["max_len"] == 32  # bytes + pad + EOS
    assert (out / "tokenizer.json").exists()
    sample = run("sample", str(out), "--text", "def ", "--max-length", "4")
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("def ")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"name": "TransformerLM"},
                               "task": {"name": "text_lm", "corpus": str(tmp_path / "none*")}}))
    assert_usage_error(run("train", str(bad), "--output-dir", str(out)), "matches no files")


def test_text_lm_eval_data_is_held_out_whatever_its_seed(tmp_path, monkeypatch):
    from retrax import data

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"f{i}.py").write_text(f"x = {i}\n")
    seen = []
    monkeypatch.setattr(data, "text_lm_batches",
                        lambda files, *a, **k: seen.append(sorted(files)) or (lambda: iter(())))
    make_data, _, _ = cli.text_lm_data({"name": "text_lm", "corpus": str(corpus / "*.py"),
                                         "held_out_percent": 34, "seed": 3})
    make_data(3)
    make_data(3, held_out=True)  # the same seed as training: still the held-out files
    make_data(4)
    train, held, train_again = seen
    assert train and held and not set(train) & set(held)
    assert train_again == train
