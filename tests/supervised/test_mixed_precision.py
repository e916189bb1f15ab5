"""Loop(..., compute_dtype='bfloat16'): float32 masters, bfloat16 forward and backward."""

from __future__ import annotations

import io
import json
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import retrax as trax
from retrax import layers as tl
from retrax.data import reverse_ints_task
from retrax.supervised import decoding, mixed_precision, training
from retrax.supervised import train_step as ts

CONFIG = dict(d_model=32, d_ff=128, n_layers=2, vocab_size=32)  # the seed notebook's model


def small_model():
    return tl.Serial(tl.Embedding(32, 16), tl.Dense(64), tl.Relu(), tl.Dense(32),
                     tl.LogSoftmax())


def make_loop(output_dir=None, steps_per_ckpt=5, seed=0, stdout=None, model=None,
              n_eval_batches=0, **kw):
    """The seed task; by default a small model (fast to compile) and no eval task."""
    data = reverse_ints_task(16, seed=seed)
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=steps_per_ckpt)
    evals = [training.EvalTask(data, [tl.CrossEntropyLoss(), tl.Accuracy()],
                               n_eval_batches=n_eval_batches)] if n_eval_batches else []
    return training.Loop(model or small_model(), task, eval_tasks=evals,
                         output_dir=None if output_dir is None else str(output_dir),
                         random_seed=seed, stdout=stdout or io.StringIO(),
                         write_trax_checkpoint=False, **kw)


@pytest.mark.parametrize("bad", ["float16", "fp8", "int8", np.float64])
def test_unknown_compute_dtype_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"compute_dtype=.*'float32'.*'bfloat16'"):
        make_loop(compute_dtype=bad)


def test_cast_helpers():
    tree = (np.ones(2, np.float32), np.arange(3, dtype=np.int32), (np.zeros(1, np.float64),))
    low = mixed_precision.cast_floats(tree, "bfloat16")
    assert [x.dtype for x in jax.tree_util.tree_leaves(low)] == [jnp.bfloat16, np.int32,
                                                                  jnp.bfloat16]
    back = mixed_precision.like_dtypes(low, tree)
    assert [x.dtype for x in jax.tree_util.tree_leaves(back)] == [np.float32, np.int32,
                                                                   np.float64]


def test_bfloat16_step_computes_in_bfloat16_with_float32_masters(tmp_path):
    low = make_loop(tmp_path / "bf16", compute_dtype="bfloat16")
    high = make_loop()
    low.run(1)
    high.run(1)
    # Every matmul of the compiled step (forward and backward) runs in bfloat16.
    batch = low._placement.put_batch(next(reverse_ints_task(16, seed=5)), "test")
    opt = dict(low._opt_params[0], learning_rate=np.float32(0.01))
    text = low._train_fns[0].lower(low._weights, low._state, low._slots[0], opt, batch,
                                   2).as_text()
    dots = re.findall(r"stablehlo.dot_general.*?-> tensor<[0-9x]*x(\w+)>", text)
    assert len(dots) >= 6 and set(dots) == {"bf16"}  # 2 forward, 4 backward
    # The masters and Adam's slots stay float32 (the step counter int32).
    assert {x.dtype for x in jax.tree_util.tree_leaves(low.model.weights)} == {
        np.dtype(np.float32)}
    assert {x.dtype for x in jax.tree_util.tree_leaves(low._slots[0])} == {
        np.dtype(np.float32), np.dtype(np.int32)}
    # Same initial weights, same first batch: the loss agrees to bfloat16's precision.
    (_, l_low), = low.history.get("train", "metrics/CrossEntropyLoss")
    (_, l_high), = high.history.get("train", "metrics/CrossEntropyLoss")
    assert l_low != l_high and l_low == pytest.approx(l_high, rel=2e-2)
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["compute_dtype"] == "bfloat16" and config["sharding"] == "replicated"
    low.save_checkpoint()
    low.close()
    resumed = make_loop(tmp_path / "bf16")  # compute_dtype left at None: the recorded one
    assert resumed.step == 1 and resumed.compute_dtype == "bfloat16"


@pytest.mark.slow
def test_bfloat16_gradient_is_float32_and_near_the_float32_one():
    model = small_model()
    batch = next(reverse_ints_task(8, seed=3))
    model.init(trax.shapes.signature(batch[0]))
    loss = tl.CrossEntropyLoss()
    lw, ls = loss.init(trax.shapes.signature((model(batch[0]), batch[1], batch[2])))

    def grads(dtype):
        def value(weights):
            (out,), _ = ts.apply_model_and_ends(model, [loss], [lw], [ls], weights, model.state,
                                                batch, None, dtype)
            return out
        return jax.tree_util.tree_leaves(jax.jit(jax.grad(value))(model.weights))

    high, low = grads("float32"), grads("bfloat16")
    assert {g.dtype for g in low} == {np.dtype(np.float32)}
    for g_low, g_high in zip(low, high):
        a, b = np.ravel(g_low), np.ravel(g_high)
        cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cosine > 0.999, cosine
        assert not np.array_equal(a, b)


def reversed_fraction(model, n=200, seed=99):
    src = np.random.default_rng(seed).integers(1, 31, (n, 4)).astype(np.int32)
    zero = np.zeros((n, 1), np.int32)
    out = decoding.autoregressive_sample(model, np.concatenate([zero, src, zero], 1),
                                         batch_size=n, temperature=0.0, max_length=4,
                                         eos_id=None)
    return float((out == src[:, ::-1]).all(1).mean())


@pytest.mark.slow
def test_bfloat16_learns_the_seed_task(tmp_path, capsys):
    loop = make_loop(tmp_path, steps_per_ckpt=500, compute_dtype="bfloat16",
                     model=trax.models.TransformerLM(**CONFIG), n_eval_batches=20)
    start = time.perf_counter()
    loop.run(1000)
    jax.block_until_ready(loop.model.weights)
    seconds = time.perf_counter() - start
    model = trax.models.TransformerLM(**CONFIG, mode="predict")
    model.init_from_file(str(tmp_path / "checkpoint_00001000.safetensors"), weights_only=True,
                         input_signature=trax.shapes.ShapeDtype((1, 1), np.int32))
    fraction = reversed_fraction(model)
    with capsys.disabled():  # a figure for the record, not an assertion (shared CPUs)
        print(f"\nbfloat16 seed task: {fraction:.1%} reversed after 1000 steps; "
              f"{1000 / seconds:.0f} steps/s including evals and checkpoints (machine "
              f"possibly contended)")
    assert fraction >= 0.95
    (_, accuracy), = loop.history.get("eval", "metrics/Accuracy")[-1:]
    assert accuracy >= 0.95
