"""The Loop under faults: foreign output dirs, two writers, divergence, no eval tasks."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import retrax as trax
from retrax import checkpoints
from retrax import layers as tl
from retrax.compat.trax_pickle import read_trax_checkpoint
from retrax.supervised import run_dir, training

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "trax"


def batches(scale=1.0):
    rng = np.random.RandomState(0)
    while True:
        x = (rng.randn(8, 6) * scale).astype(np.float32)
        y = rng.randint(0, 4, (8,)).astype(np.int32)
        yield x, y, np.ones((8,), np.float32)


def loop_in(path, *, lr=0.01, lr_schedule=None, steps_per_ckpt=2, eval_tasks=True, scale=1.0,
            optimizer=None, **kw):
    data = batches(scale)
    task = training.TrainTask(data, tl.CrossEntropyLoss(), optimizer or trax.optimizers.Adam(lr),
                              lr_schedule=lr_schedule, n_steps_per_checkpoint=steps_per_ckpt)
    evals = [training.EvalTask(data, [tl.CrossEntropyLoss()], n_eval_batches=1)]
    model = tl.Serial(tl.Dense(4), tl.LogSoftmax())
    return training.Loop(model, task, eval_tasks=evals if eval_tasks else None,
                         output_dir=None if path is None else str(path),
                         stdout=kw.pop("stdout", io.StringIO()), **kw)


# -- Never overwrite what retrax did not write -------------------------------------------


def _users_files(directory: Path) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    files = {"config.json": b'{"my": "experiment"}', "train_config.json": b"{}",
             "checkpoint_00000001.safetensors": b"my own weights"}
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def test_a_directory_of_someone_elses_files_is_refused_and_left_alone(tmp_path):
    files = _users_files(tmp_path / "mine")
    with pytest.raises(run_dir.ForeignOutputDirError) as err:
        loop_in(tmp_path / "mine")
    message = str(err.value)
    assert isinstance(err.value, FileExistsError)
    assert str(tmp_path / "mine") in message and "config.json" in message
    assert "overwrite=True" in message
    for name, data in files.items():
        assert (tmp_path / "mine" / name).read_bytes() == data
    assert sorted(os.listdir(tmp_path / "mine")) == sorted([*files, run_dir.LOCK_NAME])


def test_overwrite_true_writes_there_anyway(tmp_path):
    _users_files(tmp_path / "mine")
    loop = loop_in(tmp_path / "mine", overwrite=True)
    loop.run(2)
    assert run_dir.is_retrax_run(str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "checkpoint_00000002.safetensors").exists()


def test_an_empty_or_new_directory_and_a_retrax_run_are_used(tmp_path):
    (tmp_path / "empty").mkdir()
    first = loop_in(tmp_path / "empty")
    first.run(2)
    first.close()
    again = loop_in(tmp_path / "empty")  # a retrax run: resumed, not refused
    assert again.step == 2


def test_a_trax_loop_directory_is_resumed_not_refused(tmp_path):
    src = FIXTURES / "trax-1.4.1" / "transformerlm_seed_loop_ckpt"
    run = tmp_path / "trax_run"
    run.mkdir()
    for name in ("model.pkl.gz", "model.weights.npy.gz"):
        shutil.copy(src / name, run / name)
    (run / "train").mkdir()  # Trax's TensorBoard folders
    data = iter(lambda: (np.zeros((1, 8), np.int32),) * 2 + (np.ones((1, 8), np.float32),), None)
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01))
    model = trax.models.TransformerLM(d_model=32, d_ff=128, n_layers=2, vocab_size=32)
    loop = training.Loop(model, task, output_dir=str(run), stdout=io.StringIO())
    saved = read_trax_checkpoint(src / "model.pkl.gz")
    assert loop.step == saved.step > 0
    first = tl.flatten_weights_and_state(loop.model.weights, ())[0][0]
    np.testing.assert_array_equal(np.asarray(first), saved.flat_weights[0])


# -- One writer at a time ------------------------------------------------------------------


HOLDER = textwrap.dedent("""
    import sys, time
    from retrax.supervised import run_dir
    try:
        lock = run_dir.claim(sys.argv[1], object())
    except run_dir.OutputDirLockedError as err:
        print('locked:', err, flush=True)
        sys.exit(3)
    print('ready', flush=True)
    if sys.argv[2] == 'hold':
        time.sleep(600)
""")


def _holder(directory: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_process_fails_at_once_and_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path / "run", "hold")
    try:
        assert holder.stdout.readline().strip() == "ready", holder.stderr.read()
        with pytest.raises(run_dir.OutputDirLockedError) as err:
            loop_in(tmp_path / "run")
        assert f"process {holder.pid}" in str(err.value)
        assert str(tmp_path / "run") in str(err.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    loop = loop_in(tmp_path / "run")  # the kernel dropped the dead holder's lock
    loop.run(2)
    assert loop.step == 2


def test_close_releases_the_directory_for_another_process(tmp_path):
    loop = loop_in(tmp_path / "run")
    loop.run(2)
    blocked = _holder(tmp_path / "run", "once")
    out, err = blocked.communicate(timeout=120)
    assert blocked.returncode == 3 and out.startswith("locked:"), err
    loop.close()
    free = _holder(tmp_path / "run", "once")
    out, err = free.communicate(timeout=120)
    assert free.returncode == 0 and out.strip() == "ready", err
    with pytest.raises(RuntimeError, match="closed"):
        loop.run(1)


def test_a_newer_loop_in_the_same_process_takes_over_and_the_old_one_stops(tmp_path):
    old = loop_in(tmp_path / "run")
    old.run(2)
    new = loop_in(tmp_path / "run")  # e.g. a notebook cell run again
    assert new.step == 2
    with pytest.raises(RuntimeError, match="newer Loop"):
        old.run(1)
    with pytest.raises(RuntimeError, match="newer Loop"):
        old.save_checkpoint()
    new.run(2)
    assert new.step == 4


def test_a_failed_loop_construction_releases_the_lock(tmp_path):
    data = batches()
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01))
    bad_model = tl.Serial(tl.Dense(4), tl.Fn("Broken", lambda x: x.reshape((7, -1))))
    with pytest.raises(tl.LayerError, match=r"Broken \(in init\)(.|\n)*cannot reshape"):
        training.Loop(bad_model, task, output_dir=str(tmp_path / "run"), stdout=io.StringIO())
    free = _holder(tmp_path / "run", "once")
    out, err = free.communicate(timeout=120)
    assert free.returncode == 0 and out.strip() == "ready", err


def test_stale_temporary_files_are_removed_on_start(tmp_path):
    run = tmp_path / "run"
    loop_in(run).run(2)
    stale = [run / ".checkpoint_00000004.safetensors.0123456789ab.tmp",
             run / ".model.pkl.gz.a1b2c3d4e5f6.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = run / "notes.tmp"  # not one of retrax's temp files
    keep.write_bytes(b"mine")
    loop = loop_in(run)
    assert loop.step == 2
    assert not any(p.exists() for p in stale) and keep.read_bytes() == b"mine"


# -- The last good checkpoint is good ------------------------------------------------------


def test_a_schedule_beyond_float32_is_refused_before_it_touches_the_weights(tmp_path):
    loop = loop_in(tmp_path / "run", lr_schedule=lambda step: 0.01 if step < 3 else 1e39)
    loop.run(2)
    with pytest.raises(ValueError, match=r"lr_schedule\(3\).*got 1e\+39"):
        loop.run(1)
    assert loop.step == 2
    for leaf in checkpoints.read_native(
            checkpoints.read_bytes(str(tmp_path / "run" / "checkpoint_00000002.safetensors")),
            "ckpt")["flat_weights"]:
        assert np.isfinite(leaf).all()


@pytest.mark.parametrize("bad", [float("nan"), -0.5, float("inf")])
def test_a_schedule_returning_nan_or_negative_is_refused(bad):
    loop = loop_in(None, lr_schedule=lambda step: bad)
    with pytest.raises(ValueError, match=r"lr_schedule\(1\)"):
        loop.run(1)


def test_divergence_names_a_checkpoint_that_resumes(tmp_path):
    # SGD at 3e38 (finite in float32) on inputs of size ~100: the step-4 update overflows
    # the weights to inf while step 4's loss (from step 3's weights) is still finite.
    run = tmp_path / "run"
    schedule = lambda step: 0.01 if step <= 3 else 3e38  # noqa: E731
    loop = loop_in(run, lr_schedule=schedule, steps_per_ckpt=1, scale=100.0,
                   optimizer=trax.optimizers.SGD(0.01), eval_tasks=False)
    with pytest.raises(FloatingPointError) as err:
        loop.run(6)
    message = str(err.value)
    assert "at step 4, Serial[0] > Dense_4, weights[0] (shape (6, 4)) holds" in message
    assert "no checkpoint was written" in message
    named = re.search(r"The last good checkpoint is (\S+)\.\s", message).group(1)
    assert named == str(run / "checkpoint_00000003.safetensors")
    assert not (run / "checkpoint_00000004.safetensors").exists()
    # It is good: finite, and a new Loop resumes from it and trains on.
    ckpt = checkpoints.read_native(checkpoints.read_bytes(named), named)
    assert all(np.isfinite(w).all() for w in ckpt["flat_weights"])
    loop.close()
    resumed = loop_in(run, steps_per_ckpt=1, scale=100.0, optimizer=trax.optimizers.SGD(1e-4),
                      eval_tasks=False)
    assert resumed.step == 3
    resumed.run(2)
    losses = [v for _, v in resumed.history.get("train", "metrics/CrossEntropyLoss")]
    assert resumed.step == 5 and np.isfinite(losses).all()


# -- A Loop with no eval tasks still reports -----------------------------------------------


def test_without_eval_tasks_train_metrics_are_printed_and_written(tmp_path):
    out = io.StringIO()
    loop = loop_in(tmp_path / "run", eval_tasks=False, steps_per_ckpt=2, stdout=out)
    loop.run(4)
    loop.close()
    printed = re.findall(r"Step\s+(\d+): train CrossEntropyLoss \|", out.getvalue())
    assert printed == ["1", "2", "4"]  # step 1 and every checkpoint step, as Trax
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({r["step"] for r in records
                    if r["mode"] == "train" and r["name"] == "metrics/CrossEntropyLoss"})
    assert steps == [1, 2, 4]


# -- A damaged resume point does not block the resume --------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_model_pkl_falls_back_to_the_newest_intact_native_checkpoint(tmp_path):
    run = tmp_path / "run"
    loop = loop_in(run, steps_per_ckpt=2, eval_tasks=False)
    loop.run(6)
    loop.close()
    _truncate(run / "model.pkl.gz")
    _truncate(run / "checkpoint_00000006.safetensors")
    out = io.StringIO()
    resumed = loop_in(run, steps_per_ckpt=2, eval_tasks=False, stdout=out)
    assert resumed.step == 4
    log = out.getvalue()
    assert f"{run / 'model.pkl.gz'} cannot be read" in log
    assert f"skipping {run / 'checkpoint_00000006.safetensors'}" in log
    assert f"resumed from {run / 'checkpoint_00000004.safetensors'} (step 4)" in log
    resumed.run(2)  # and trains on, writing a good resume point again
    resumed.close()
    assert loop_in(run, steps_per_ckpt=2, eval_tasks=False).step == 6


def test_when_nothing_can_be_read_the_loop_refuses_instead_of_starting_over(tmp_path):
    run = tmp_path / "run"
    loop = loop_in(run, steps_per_ckpt=2, eval_tasks=False)
    loop.run(4)
    loop.close()
    for path in [run / "model.pkl.gz", *run.glob("checkpoint_*.safetensors")]:
        path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no checkpoint in .* can be read"):
        loop_in(run, steps_per_ckpt=2, eval_tasks=False)
    assert (run / "checkpoint_00000004.safetensors").read_bytes() == b"garbage"  # untouched


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_resuming_into_a_model_of_another_config_with_the_same_shapes_is_refused(tmp_path):
    def lm(n_heads):
        return trax.models.TransformerLM(vocab_size=16, d_model=8, d_ff=16, n_layers=1,
                                         n_heads=n_heads, max_len=16)

    def run_with(model):
        data = iter(lambda: (np.ones((2, 6), np.int32),) * 2 + (np.ones((2, 6), np.float32),),
                    None)
        task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                                  n_steps_per_checkpoint=1)
        return training.Loop(model, task, output_dir=str(tmp_path / "run"), stdout=io.StringIO())

    run_with(lm(2)).run(1)
    with pytest.raises(checkpoints.CheckpointError, match="n_heads=2 .* n_heads=4"):
        run_with(lm(4))


@pytest.mark.parametrize("bad_state, bad_slots, named", [
    (True, False, "at step 7, Serial[1] > Dropout, state (shape ()) holds nan"),
    (False, True, "at step 7, optimizer slots of task 0['mu'][1] (shape (2,)) holds inf"),
])
def test_a_non_finite_state_or_optimizer_slot_is_named_and_not_checkpointed(
        bad_state, bad_slots, named):
    from retrax.supervised import loop_checkpoints, train_step

    model = tl.Serial(tl.Dense(2), tl.Dropout(0.1))
    weights, state = model.init(trax.shapes.ShapeDtype((1, 3)))
    if bad_state:
        state = ((), np.float32(np.nan))
    slots = [{"mu": (np.ones(2, np.float32), np.array([1.0, np.inf if bad_slots else 2.0],
                                                      np.float32))}]
    saver = loop_checkpoints.LoopCheckpoints(
        None, model, train_step.Placement(1), input_signature=None, seed=0, keep=1,
        write_trax=False, print_fn=print)
    saver.check_finite(6, weights, model.state, [{"mu": (np.ones(2, np.float32),)}])  # fine
    with pytest.raises(FloatingPointError) as err:
        saver.check_finite(7, weights, state, slots)
    assert named in str(err.value) and "No checkpoint was written yet." in str(err.value)
