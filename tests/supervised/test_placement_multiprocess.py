"""The batch check of a Loop's Placement counts this process's devices, not all of them.

In a multi-process run each process feeds only its own rows of the global
batch, so a global batch of 8 on 2 processes x 4 devices (4 rows per process,
one per device) is valid even though 4 is not a multiple of the 8 devices.
"""

from __future__ import annotations

import pytest

from retrax.supervised import train_step as ts


def test_rows_divisible_by_local_devices_pass():
    ts.check_batch_rows((4, 7), 0, 4, "train", n_processes=2)  # global 8 on 2 x 4 devices
    ts.check_batch_rows((8,), 1, 8, "train")
    ts.check_batch_rows((3, 2), 0, 1, "train")  # one device: anything goes


def test_multi_process_refusal_names_this_process_and_the_global_multiple():
    with pytest.raises(ValueError) as err:
        ts.check_batch_rows((6, 7), 2, 4, "eval task 0", n_processes=2)
    msg = str(err.value)
    assert msg.startswith("eval task 0: batch item 2 has shape (6, 7)")
    assert "this process's 4 devices" in msg
    assert "a multiple of 8 (4 devices x 2 processes)" in msg


def test_single_process_refusal_unchanged():
    with pytest.raises(ValueError, match=r"divisible by the 4 devices .* multiple of 4 or pass "
                                         r"n_devices=\.\.\. to Loop"):
        ts.check_batch_rows((6,), 0, 4, "train")
    with pytest.raises(ValueError, match=r"shape \(\)"):
        ts.check_batch_rows((), 0, 2, "train")


def test_placement_counts_local_devices_in_one_process():
    placement = ts.Placement(1)
    assert placement.local_devices == 1


# -- Loop.host_weights ---------------------------------------------------------------


def _tiny_loop(**kw):
    import io

    import retrax as trax
    from retrax import layers as tl
    from retrax.data import reverse_ints_task
    from retrax.supervised import training

    task = training.TrainTask(reverse_ints_task(8, seed=0), tl.CrossEntropyLoss(),
                              trax.optimizers.Adam(0.01))
    return training.Loop(tl.Serial(tl.Embedding(32, 64), tl.Dense(32), tl.LogSoftmax()), task,
                         stdout=io.StringIO(), **kw)


def test_host_weights_are_the_loops_weights_as_numpy():
    import jax
    import numpy as np

    loop = _tiny_loop(n_devices=1)
    loop.run(2)
    got = loop.host_weights()
    want = jax.tree_util.tree_leaves(loop.model.weights)
    leaves = jax.tree_util.tree_leaves(got)
    assert len(leaves) == len(want) == 3
    for a, b in zip(leaves, want):
        assert type(a) is np.ndarray
        np.testing.assert_array_equal(a, np.asarray(b))
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(loop.model.weights)


SHARDED = """
import sys
sys.path.insert(0, {tests!r})
import jax, numpy as np
from supervised.test_placement_multiprocess import _tiny_loop
assert jax.device_count() == 4
loop = _tiny_loop(sharding='fsdp')
loop.run(2)
for w in jax.tree_util.tree_leaves(loop.model.weights)[:2]:  # split over the 4 devices
    assert len(w.sharding.device_set) == 4 and not w.sharding.is_fully_replicated
got = jax.tree_util.tree_leaves(loop.host_weights())
want = [np.asarray(w) for w in jax.tree_util.tree_leaves(loop.model.weights)]
assert all(type(a) is np.ndarray for a in got)
assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, want))
print("OK", [a.shape for a in got])
"""


@pytest.mark.slow
def test_host_weights_of_an_fsdp_run_on_4_devices(tmp_path):
    import os
    import subprocess
    import sys

    tests = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SHARDED.format(tests=tests)], capture_output=True,
                       text=True, env=env, timeout=300, cwd=os.path.dirname(tests))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "OK [(32, 64), (64, 32), (32,)]", r.stdout


# -- two processes x 4 devices, global batch 8 (4 rows per process) -------------------

TWO_PROCESS_WORKER = """
import json, sys
import numpy as np
args = json.loads(sys.argv[1])
from retrax.supervised import distributed
if args["num_processes"] > 1:
    distributed.initialize(args["coordinator"], args["num_processes"], args["process_id"])
import io
import jax
import retrax as trax
from retrax import layers as tl
from retrax.data import reverse_ints_task
from retrax.supervised import training

assert jax.device_count() == 8
data = distributed.local_batches(reverse_ints_task(8, seed=0))  # 4 rows per process
task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01))
model = tl.Serial(tl.Embedding(32, 64), tl.Dense(32), tl.LogSoftmax())
loop = training.Loop(model, task, sharding="fsdp", eval_at=lambda step: True,
                     stdout=io.StringIO())
loop.run(3)
np.savez(args["result"], *jax.tree_util.tree_leaves(loop.host_weights()))
with open(args["result"] + ".json", "w") as f:
    json.dump([v for _, v in loop.history.get("train", "metrics/CrossEntropyLoss")], f)
"""


@pytest.mark.slow
def test_global_batch_8_on_two_processes_of_4_devices_trains_as_one_process(tmp_path):
    import json

    import numpy as np
    from multihost_launch import COORDINATOR, launch, run_one

    worker = tmp_path / "worker.py"
    worker.write_text(TWO_PROCESS_WORKER)

    def read(result):
        with open(result + ".json") as f:
            losses = json.load(f)
        with np.load(result + ".npz") as z:
            return losses, [z[f"arr_{i}"] for i in range(len(z.files))]

    ref = str(tmp_path / "ref")
    run_one([str(worker), json.dumps({"num_processes": 1, "result": ref})], n_devices=8)
    results = [str(tmp_path / f"p{i}") for i in range(2)]
    launch([[str(worker), json.dumps({"coordinator": COORDINATOR, "num_processes": 2,
                                      "process_id": i, "result": results[i]})]
            for i in range(2)])
    ref_losses, ref_weights = read(ref)
    (l0, w0), (l1, w1) = read(results[0]), read(results[1])
    assert len(ref_losses) == 3 and l0 == l1
    np.testing.assert_allclose(l0, ref_losses, rtol=1e-5)
    for a, b, c in zip(w0, w1, ref_weights):  # whole arrays in both processes
        assert a.shape == c.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
