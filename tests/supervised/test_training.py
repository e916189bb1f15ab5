"""Tests of TrainTask / EvalTask / Loop: learning, logs, checkpoints, resume, errors."""

from __future__ import annotations

import io
import itertools
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from compile_events import xla_compiles

import retrax as trax
from retrax import layers as tl
from retrax.supervised import training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reverse_batches(batch_size=16, length=4, seed=0, vocab=31):
    """The seed notebook's reverse task, seeded."""
    rng = np.random.RandomState(seed)
    while True:
        src = rng.randint(1, vocab, (batch_size, length))
        zero = np.zeros((batch_size, 1), np.int32)
        x = np.concatenate([zero, src, zero, np.flip(src, 1)], axis=1).astype(np.int32)
        w = np.concatenate([np.zeros((batch_size, length + 2)), np.ones((batch_size, length))],
                           axis=1).astype(np.float32)
        yield x, x, w


def tiny_lm(mode="train"):
    return trax.models.TransformerLM(vocab_size=32, d_model=16, d_ff=32, n_layers=1, n_heads=2,
                                     max_len=16, mode=mode)


def small_model():
    return tl.Serial(tl.Embedding(32, 8), tl.Dense(32), tl.LogSoftmax())


def make_loop(tmp_path=None, model=None, steps_per_ckpt=5, seed=0, **kw):
    data = reverse_batches(seed=seed)
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=steps_per_ckpt)
    eval_task = training.EvalTask(data, [tl.CrossEntropyLoss(), tl.Accuracy()], n_eval_batches=2)
    return training.Loop(model or small_model(), task, eval_tasks=[eval_task],
                         output_dir=None if tmp_path is None else str(tmp_path),
                         stdout=kw.pop("stdout", io.StringIO()), **kw)


def test_seed_task_learns_short(tmp_path):
    out = io.StringIO()
    loop = make_loop(tmp_path, model=tiny_lm(), steps_per_ckpt=150, stdout=out)
    loop.run(300)
    acc = [v for _, v in loop.history.get("eval", "metrics/Accuracy")]
    assert acc[0] < 0.2 and acc[-1] > 0.8, acc
    losses = [v for _, v in loop.history.get("train", "metrics/CrossEntropyLoss")]
    assert losses[-1] < losses[0] / 2
    assert loop.step == 300


def test_stdout_format_and_files(tmp_path):
    out = io.StringIO()
    loop = make_loop(tmp_path, stdout=out)
    loop.run(5)
    lines = out.getvalue().splitlines()
    assert lines[0] == ""
    assert lines[1].startswith("Step      1: Total number of trainable weights: ")
    assert int(lines[1].split(":")[-1]) == 32 * 8 + 8 * 32 + 32
    assert lines[2].startswith("Step      1: Ran 1 train steps in ")
    assert lines[3].startswith("Step      1: train CrossEntropyLoss | ")
    assert lines[4].startswith("Step      1: eval  CrossEntropyLoss | ")
    assert lines[5].startswith("Step      1: eval          Accuracy | ")
    assert "Step      5: Ran 4 train steps" in out.getvalue()
    files = set(os.listdir(tmp_path))
    assert {"model.pkl.gz", "config.json", "metrics.jsonl",
            "checkpoint_00000005.safetensors"} <= files
    assert "model.weights.npy.gz" not in files  # the Loop keeps its weights inside model.pkl.gz
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert {"step": 5, "mode": "eval", "name": "metrics/Accuracy"}.items() <= records[-1].items()
    config = json.load(open(tmp_path / "config.json"))
    assert config["tasks"][0]["optimizer"] == "Adam"
    assert config["random_seed"] == 0
    # TensorBoard event files (tensorboardX) for train and eval summaries.
    for mode, tag in (("train", b"metrics/CrossEntropyLoss"), ("eval", b"metrics/Accuracy")):
        events = [f for f in os.listdir(tmp_path / mode) if f.startswith("events.out.tfevents")]
        assert len(events) == 1
        assert tag in (tmp_path / mode / events[0]).read_bytes()


def test_trax_layout_checkpoint_loads_into_model(tmp_path):
    loop = make_loop(tmp_path)
    loop.run(5)
    fresh = small_model()
    fresh.init_from_file(str(tmp_path / "model.pkl.gz"), weights_only=True,
                         input_signature=trax.shapes.ShapeDtype((1, 10), np.int32))
    for a, b in zip(tl.flatten_weights_and_state(fresh.weights, ())[0],
                    tl.flatten_weights_and_state(loop.model.weights, ())[0]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_step_compiles_once():
    loop = make_loop(None, steps_per_ckpt=100)
    with xla_compiles() as names:
        loop.run(20)
    assert names.count("jit(step)") == 1, names
    with xla_compiles() as names:
        loop.run(5)
    assert names == []  # nothing at all is compiled once the run is warm


def test_same_seed_same_run():
    a, b = make_loop(None), make_loop(None)
    a.run(10)
    b.run(10)
    for x, y in zip(jax.tree_util.tree_leaves(a.model.weights),
                    jax.tree_util.tree_leaves(b.model.weights)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_continues_from_checkpoint(tmp_path):
    loop = make_loop(tmp_path)
    loop.run(10)
    again = make_loop(tmp_path)
    assert again.step == 10
    assert again.history.get("eval", "metrics/Accuracy")[-1][0] == 10
    again.run(2)
    assert again.step == 12


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys, io
    import numpy as np
    sys.path.insert(0, {tests!r})
    from supervised.test_training import make_loop, tiny_lm
    out_dir, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    loop = make_loop(out_dir if out_dir != 'none' else None, steps_per_ckpt=4)
    loop.run(n - loop.step)
    if mode == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    np.save(sys.argv[4], np.concatenate([np.ravel(np.asarray(w)) for w in
            __import__('jax').tree_util.tree_leaves(loop.model.weights)]))
""")


def _run_script(tmp_path, *args):
    script = tmp_path / "resume_script.py"
    script.write_text(RESUME_SCRIPT.format(tests=os.path.join(REPO, "tests")))
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(tmp_path):
    straight = tmp_path / "straight.npy"
    r = _run_script(tmp_path, "none", 12, "save", straight)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "run"
    r = _run_script(tmp_path, run_dir, 8, "kill", "unused")
    assert r.returncode == -9, r.stderr
    resumed = tmp_path / "resumed.npy"
    r = _run_script(tmp_path, run_dir, 12, "save", resumed)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(straight), np.load(resumed))


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from supervised.test_training import make_loop
    loop = make_loop(sys.argv[1], steps_per_ckpt=4)
    loop.run(4)
    leaves = jax.tree_util.tree_leaves(loop.model.weights)
    np.savez(sys.argv[2], *[np.asarray(w) for w in leaves])  # the step-4 checkpoint's weights
    real_replace = os.replace
    def dying_replace(src, dst):
        if dst.endswith('.safetensors'):
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst)
    os.replace = dying_replace
    loop.run(4)
""")


def test_kill_while_writing_checkpoint_leaves_loadable_one(tmp_path):
    script = tmp_path / "kill_write.py"
    script.write_text(KILL_DURING_WRITE.format(tests=os.path.join(REPO, "tests")))
    saved = tmp_path / "step4.npz"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "run"), str(saved)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    loop = make_loop(tmp_path / "run", steps_per_ckpt=4)
    assert loop.step == 4
    # The weights are the step-4 checkpoint's, bit for bit (not a half-written step 8,
    # nor fresh ones).
    with np.load(saved) as step4:
        want = [step4[f"arr_{i}"] for i in range(len(step4.files))]
    got = [np.asarray(w) for w in jax.tree_util.tree_leaves(loop.model.weights)]
    assert len(got) == len(want) == 3
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    fresh = jax.tree_util.tree_leaves(make_loop(None).model.weights)
    assert not np.array_equal(np.asarray(fresh[0]), got[0])  # (training moved them)


DATA_PARALLEL = textwrap.dedent("""
    import os, sys, json
    sys.path.insert(0, {tests!r})
    import jax
    from supervised.test_training import make_loop
    loop = make_loop(None, steps_per_ckpt=3, n_devices=int(sys.argv[1]))
    loop.run(6)
    print(json.dumps([v for _, v in loop.history.get('train', 'metrics/CrossEntropyLoss')]))
""")


def _data_parallel_losses(tmp_path, n_devices):
    script = tmp_path / "dp.py"
    script.write_text(DATA_PARALLEL.format(tests=os.path.join(REPO, "tests")))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    r = subprocess.run([sys.executable, str(script), str(n_devices)], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_data_parallel_matches_single_device(tmp_path):
    one = _data_parallel_losses(tmp_path, 1)
    eight = _data_parallel_losses(tmp_path, 8)
    np.testing.assert_allclose(one, eight, rtol=1e-5, atol=1e-6)


# -- bad input -----------------------------------------------------------------


def _loop_with_batches(batches, tmp_path=None, model=None):
    it = iter(batches)
    task = training.TrainTask(it, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01))
    return training.Loop(model or small_model(), task,
                         output_dir=None if tmp_path is None else str(tmp_path),
                         stdout=io.StringIO())


def _good(n=4):
    return next(reverse_batches(batch_size=n))


def test_wrong_rank_batch():
    x, y, w = _good()
    loop = _loop_with_batches([(x, y, w), (x[0], y[0], w[0])])
    with pytest.raises(ValueError, match=r"batch item 0 has shape \(10,\) \(rank 1\).*rank 2"):
        loop.run(1)


def test_wrong_dtype_batch():
    x, y, w = _good()
    loop = _loop_with_batches([(x, y, w), (x.astype(np.float32), y, w)])
    with pytest.raises(TypeError, match="batch item 0 has dtype float32.*int"):
        loop.run(1)


def test_inconsistent_batch_shapes():
    x, y, w = _good()
    loop = _loop_with_batches([(x, y, w), (x, y[:2], w[:2])])
    with pytest.raises(ValueError, match=r"share their first \(batch\) dimension.*\(2, 10\)"):
        loop.run(1)
    loop = _loop_with_batches([(x, y, w), (x, y, w[:, :5])])
    with pytest.raises(ValueError, match=r"loss weights have shape \(4, 5\).*\(4, 10\)"):
        loop.run(1)


def test_token_ids_outside_vocab():
    x, y, w = _good()
    bad = x.copy()
    bad[0, 1] = 40
    loop = _loop_with_batches([(x, y, w), (bad, y, w)])
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 32\).*40"):
        loop.run(1)


def test_exhausted_generator_saves_and_explains(tmp_path):
    batches = [_good() for _ in range(4)]
    loop = _loop_with_batches(batches, tmp_path)
    with pytest.raises(ValueError, match="ran out at step 4 after 3 batches.*checkpoint of step 3"):
        loop.run(10)
    assert "checkpoint_00000003.safetensors" in os.listdir(tmp_path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    x, y, w = _good()
    data = reverse_batches(batch_size=4)
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.SGD(0.1),
                              n_steps_per_checkpoint=2)
    loop = training.Loop(small_model(), task, output_dir=str(tmp_path), stdout=io.StringIO())
    loop.run(2)
    bad_weights = jax.tree_util.tree_map(lambda a: a * np.nan, loop.model.weights)
    loop.update_weights_and_state(weights=bad_weights)
    with pytest.raises(FloatingPointError, match=r"Loss became nan at step 3.*checkpoint_00000002"):
        loop.run(2)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("checkpoint_"))[-1] == \
        "checkpoint_00000002.safetensors"


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="cannot write to output_dir"):
        _loop_with_batches([_good(), _good()], blocker / "sub")


def test_batch_not_divisible_by_devices(tmp_path):
    script = tmp_path / "div.py"
    script.write_text(textwrap.dedent(f"""
        import sys, io
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from supervised.test_training import _loop_with_batches, reverse_batches
        b = next(reverse_batches(batch_size=6))
        loop = _loop_with_batches([b, b])
        loop.run(1)
    """))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode != 0
    assert "must be divisible by the 4 devices" in r.stderr


def test_two_train_tasks_and_two_eval_tasks():
    d1, d2 = reverse_batches(seed=1), reverse_batches(seed=2)
    tasks = [training.TrainTask(d1, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01)),
             training.TrainTask(d2, tl.CrossEntropyLoss(), trax.optimizers.SGD(0.1))]
    e1, e2 = next(reverse_batches(seed=3)), next(reverse_batches(seed=4))
    evals = [training.EvalTask(itertools.repeat(e1), [tl.Accuracy()]),
             training.EvalTask(itertools.repeat(e2), [tl.CrossEntropyLoss()],
                               metric_names=["ce2"])]
    loop = training.Loop(small_model(), tasks, eval_tasks=evals, stdout=io.StringIO())
    loop.run(1)
    # Each eval task ran its own metric on its own data, with the weights of step 1.
    log_probs = np.asarray(loop.model(e1[0]))
    x2, y2, w2 = e2
    out2 = np.asarray(loop.model(x2))
    acc = ((log_probs.argmax(-1) == e1[1]) * e1[2]).sum() / e1[2].sum()
    picked = np.take_along_axis(out2, y2[..., None], axis=-1)[..., 0]
    ce = -(picked * w2).sum() / w2.sum()
    assert loop.history.get("eval", "metrics/Accuracy") == [(1, pytest.approx(acc, abs=1e-6))]
    assert loop.history.get("eval", "metrics/ce2") == [(1, pytest.approx(ce, rel=1e-5))]
    loop.run(3)
    assert loop.step == 4
    assert [s for s, _ in loop.history.get("eval", "metrics/ce2")] == [1]


def _hand_grad(model, batch):
    """The gradient of the weighted cross-entropy at ``batch``, by jax.grad of the layers."""
    loss = tl.CrossEntropyLoss()
    x, y, w = batch

    def value(weights):
        out, _ = model.pure_fn(x, weights, model.state, None)
        return loss((out, y, w))

    return jax.jit(jax.grad(value))


@pytest.mark.parametrize("which_task, order", [(None, [1, 0, 1, 0, 1]),
                                               (lambda n: int(n > 2), [0, 0, 1, 1, 1])],
                         ids=["alternating", "custom"])
@pytest.mark.slow  # default-suite budget: runs in CI's slow step
def test_tasks_alternate_and_each_keeps_its_own_optimizer(which_task, order):
    # Task 0: SGD (no slots), task 1: Adam (its moments persist across its own steps
    # only). Each step's new weights are checked against the step computed by hand.
    batches = [[next(reverse_batches(batch_size=8, seed=s)) for s in (10 * t, 10 * t + 1)]
               for t in (1, 2)]
    sgd_lr, adam_lr = 0.5, 0.01
    tasks = [training.TrainTask(itertools.cycle(batches[0]), tl.CrossEntropyLoss(),
                                trax.optimizers.SGD(sgd_lr), sample_batch=batches[0][0]),
             training.TrainTask(itertools.cycle(batches[1]), tl.CrossEntropyLoss(),
                                trax.optimizers.Adam(adam_lr), sample_batch=batches[1][0])]
    loop = training.Loop(small_model(), tasks, which_task=which_task, stdout=io.StringIO(),
                         prefetch=False)
    model = loop.model
    weights = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.weights)
    m = jax.tree_util.tree_map(np.zeros_like, weights)
    v = jax.tree_util.tree_map(np.zeros_like, weights)
    b1, b2, eps, decay = 0.9, 0.999, 1e-5, 1e-5  # Adam's defaults (Trax's)
    used, adam_steps = [0, 0], 0
    for step, task in enumerate(order, 1):
        batch = batches[task][used[task] % 2]  # each task reads its own stream, in order
        used[task] += 1
        f32 = jax.tree_util.tree_map(lambda a: a.astype(np.float32), weights)
        g = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64),
                                   _hand_grad(model, batch)(f32))
        if task == 0:  # w - lr g
            weights = jax.tree_util.tree_map(lambda w, g: w - sgd_lr * g, weights, g)
        else:
            adam_steps += 1
            c1, c2 = 1 - b1**adam_steps, 1 - b2**adam_steps  # bias corrections
            m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, g)
            weights = jax.tree_util.tree_map(
                lambda w, m, v, c1=c1, c2=c2: (1 - decay) * w - adam_lr * (m / c1) / (
                    np.sqrt(v / c2) + eps), weights, m, v)
        loop.run(1)
        assert loop.step == step
        for got, want in zip(jax.tree_util.tree_leaves(loop.model.weights),
                             jax.tree_util.tree_leaves(weights)):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {step} (task {task})")
    assert used == [order.count(0), order.count(1)]


def test_task_argument_errors():
    with pytest.raises(TypeError, match="optimizer must be a retrax optimizer"):
        training.TrainTask(reverse_batches(), tl.CrossEntropyLoss(), "adam")
    with pytest.raises(ValueError, match="Number of metrics"):
        training.EvalTask(reverse_batches(), [tl.Accuracy()], metric_names=["a", "b"])
    with pytest.raises(ValueError, match="labeled_data is empty"):
        training.TrainTask(iter([]), tl.CrossEntropyLoss(), trax.optimizers.Adam())
    with pytest.raises(ValueError, match="at least one TrainTask"):
        training.Loop(small_model(), [])
