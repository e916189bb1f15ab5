"""Loop(..., sharding='fsdp'): weights and optimizer slots split over 8 host devices.

The multi-device checks run in one subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (the flag must be set
before JAX starts).
"""

from __future__ import annotations

import io
import json
import os
import textwrap

import numpy as np
import pytest
from host_devices import run_with_eight_devices
from jax.sharding import PartitionSpec

import retrax as trax
from retrax import layers as tl
from retrax.data import reverse_ints_task
from retrax.supervised import sharding, training

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_loop(output_dir, steps_per_ckpt=5, stdout=None, **kw):
    task = training.TrainTask(reverse_ints_task(8, seed=0), tl.CrossEntropyLoss(),
                              trax.optimizers.Adam(0.01), n_steps_per_checkpoint=steps_per_ckpt)
    return training.Loop(tl.Serial(tl.Embedding(32, 8), tl.Dense(32), tl.LogSoftmax()), task,
                         output_dir=None if output_dir is None else str(output_dir),
                         stdout=stdout or io.StringIO(), **kw)


# -- the layout rule -------------------------------------------------------------


def test_fsdp_spec_splits_the_largest_divisible_axis():
    assert sharding.fsdp_spec((64, 128), 8) == PartitionSpec(None, "data")
    assert sharding.fsdp_spec((256, 64), 8) == PartitionSpec("data")
    assert sharding.fsdp_spec((64, 64), 8) == PartitionSpec(None, "data")  # tie: the last
    assert sharding.fsdp_spec((2, 3, 1024), 8) == PartitionSpec(None, None, "data")
    assert sharding.fsdp_spec((1000, 12), 8) == PartitionSpec("data")  # 1000 = 8 * 125


def test_fsdp_spec_replicates_small_and_indivisible_arrays():
    assert sharding.fsdp_spec((128,), 8) == PartitionSpec()  # < 1024 elements
    assert sharding.fsdp_spec((), 8) == PartitionSpec()
    assert sharding.fsdp_spec((1023, 7), 8) == PartitionSpec()  # no axis divisible by 8
    assert sharding.fsdp_spec((64, 128), 1) == PartitionSpec()
    assert sharding.fsdp_spec((128,), 8, min_size=64) == PartitionSpec("data")


@pytest.mark.parametrize("bad", ["tp", "FSDP", "zero3", 8])
def test_unknown_sharding_is_refused_with_the_choices(bad):
    with pytest.raises(ValueError, match=r"sharding=.*'replicated'.*'fsdp'"):
        make_loop(None, sharding=bad)


def test_sharding_is_recorded_and_a_resume_keeps_it(tmp_path):
    loop = make_loop(tmp_path, steps_per_ckpt=2, sharding="fsdp")
    loop.run(2)
    loop.close()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["sharding"] == "fsdp" and config["compute_dtype"] == "float32"
    resumed = make_loop(tmp_path, steps_per_ckpt=2)  # sharding left at None
    assert resumed.step == 2 and resumed.sharding == "fsdp"
    resumed.close()
    out = io.StringIO()
    explicit = make_loop(tmp_path, steps_per_ckpt=2, sharding="replicated", stdout=out)
    assert explicit.sharding == "replicated"
    assert "sharding='fsdp' -> 'replicated'" in out.getvalue()
    explicit.close()
    # A fresh directory takes the default.
    assert make_loop(tmp_path / "fresh").sharding == "replicated"


# -- eight host devices ---------------------------------------------------------------

EIGHT_DEVICES = textwrap.dedent("""
    import io, json, sys
    sys.path.insert(0, {tests!r})
    import jax
    import numpy as np
    from retrax import layers as tl
    from retrax.supervised import sharding
    from supervised.test_training import make_loop

    def model():
        return tl.Serial(tl.Embedding(32, 64), tl.Dense(128), tl.Relu(), tl.Dense(32),
                         tl.LogSoftmax())

    def losses(loop):
        return [v for _, v in loop.history.get('train', 'metrics/CrossEntropyLoss')]

    def leaves(tree):
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]

    out = {{}}
    runs = {{}}
    for mode in ('replicated', 'fsdp'):
        loop = make_loop(sys.argv[1] + '/' + mode, model=model(), steps_per_ckpt=3,
                         sharding=mode)
        loop.run(6)
        held = sharding.bytes_per_device((loop._weights, loop._slots))
        total = sum(x.nbytes for x in jax.tree_util.tree_leaves((loop._weights, loop._slots)))
        out[mode] = dict(losses=losses(loop), most_held=max(held.values()) / total,
                         least_held=min(held.values()) / total, n_held=len(held),
                         specs=[list(x.sharding.spec) for x in
                                jax.tree_util.tree_leaves(loop._weights)])
        runs[mode] = leaves(loop.model.weights)
        loop.close()
    # Each run's step-6 checkpoint resumes in the other layout, whole and exact.
    for saved, other in (('fsdp', 'replicated'), ('replicated', 'fsdp')):
        loop = make_loop(sys.argv[1] + '/' + saved, model=model(), steps_per_ckpt=3,
                         sharding=other)
        assert loop.step == 6 and loop.sharding == other
        same = all(np.array_equal(a, b) for a, b in zip(leaves(loop._weights), runs[saved]))
        specs = [list(x.sharding.spec) for x in jax.tree_util.tree_leaves(loop._weights)]
        loop.run(3)  # step 9 is logged
        out['resumed_' + saved] = dict(exact=same, specs=specs, losses=losses(loop))
    # Both options at once: bfloat16 compute on sharded float32 masters.
    for mode in ('replicated', 'fsdp'):
        loop = make_loop(None, model=model(), steps_per_ckpt=3, sharding=mode,
                         compute_dtype='bfloat16')
        loop.run(6)
        out['bf16_' + mode] = losses(loop)
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    return run_with_eight_devices(EIGHT_DEVICES.format(tests=os.path.join(REPO, "tests")),
                                  tmp, timeout=300)


@pytest.mark.slow  # one 8-device subprocess, ~10 s of CPU
def test_fsdp_losses_equal_replicated_ones(eight_devices):
    rep, fsdp = eight_devices["replicated"]["losses"], eight_devices["fsdp"]["losses"]
    assert len(rep) == len(fsdp) == 3  # steps 1, 3, 6
    np.testing.assert_allclose(fsdp, rep, rtol=1e-5)
    assert rep[-1] < rep[0]  # it trains


@pytest.mark.slow  # one 8-device subprocess, ~10 s of CPU
def test_fsdp_holds_an_eighth_per_device(eight_devices):
    fsdp, rep = eight_devices["fsdp"], eight_devices["replicated"]
    assert fsdp["n_held"] == rep["n_held"] == 8
    assert rep["most_held"] == rep["least_held"] == 1.0
    # Weights and Adam's two slots: 3 x (2048 + 8192 + 4096) split 8 ways, plus the
    # replicated biases (128 + 32) and Adam's step counter: 0.1346 of the total.
    assert 1 / 8 <= fsdp["least_held"] <= fsdp["most_held"] < 0.14
    # Embedding (32, 64), Dense (64, 128) + bias, Dense (128, 32) + bias.
    assert fsdp["specs"] == [[None, "data"], [None, "data"], [], ["data"], []]


@pytest.mark.slow  # one 8-device subprocess, ~10 s of CPU
def test_fsdp_with_bfloat16_compute_matches_replicated(eight_devices):
    rep, fsdp = eight_devices["bf16_replicated"], eight_devices["bf16_fsdp"]
    assert len(rep) == 3
    np.testing.assert_allclose(fsdp, rep, rtol=1e-3)  # bfloat16 sums in another order
    np.testing.assert_allclose(rep, eight_devices["replicated"]["losses"], rtol=3e-2)


@pytest.mark.slow  # one 8-device subprocess, ~10 s of CPU
def test_checkpoints_load_across_layouts(eight_devices):
    from_fsdp, from_rep = eight_devices["resumed_fsdp"], eight_devices["resumed_replicated"]
    assert from_fsdp["exact"] and from_rep["exact"]
    assert all(spec == [] for spec in from_fsdp["specs"])
    assert from_rep["specs"] == eight_devices["fsdp"]["specs"]
    # Both continue from the same weights (to float summation order): the same losses,
    # steps 1, 3 and 6 from the resumed history, step 9 trained after the resume.
    assert len(from_fsdp["losses"]) == len(from_rep["losses"]) == 4
    np.testing.assert_allclose(from_fsdp["losses"], from_rep["losses"], rtol=1e-5)


# -- two processes: sharded arrays are gathered before process 0 writes -------------------

TWO_PROCESSES = textwrap.dedent("""
    import io, json, sys
    import numpy as np
    args = json.loads(sys.argv[1])
    from retrax.supervised import distributed
    if args["num_processes"] > 1:
        distributed.initialize(args["coordinator"], args["num_processes"], args["process_id"])
    import jax
    import retrax as trax
    from retrax import layers as tl
    from retrax.quickstart import reverse_ints_task
    from retrax.supervised import training

    assert jax.device_count() == 8, jax.devices()
    model = tl.Serial(tl.Embedding(32, 64), tl.Dense(128), tl.Relu(), tl.Dense(32),
                      tl.LogSoftmax())
    data = distributed.local_batches(reverse_ints_task(16, rng=np.random.RandomState(0)))
    task = training.TrainTask(data, tl.CrossEntropyLoss(), trax.optimizers.Adam(0.01),
                              n_steps_per_checkpoint=2)
    loop = training.Loop(model, task, output_dir=args["output_dir"], eval_at=lambda s: True,
                         write_trax_checkpoint=False, stdout=io.StringIO(),
                         sharding=args["sharding"])
    loop.run(args["steps"] - loop.step)
    specs = [list(x.sharding.spec) for x in jax.tree_util.tree_leaves(loop.model.weights)]
    weights = loop._placement.to_host(loop.model.weights)  # a collective: every process
    np.savez(args["result"], *jax.tree_util.tree_leaves(weights))
    with open(args["result"] + ".json", "w") as f:
        json.dump({"losses": [v for _, v in loop.history.get("train",
                                                            "metrics/CrossEntropyLoss")],
                   "specs": specs, "step": loop.step, "sharding": loop.sharding}, f)
""")


def _fsdp_run(tmp_path, name, n_processes, sharding, steps, output_dir=None):
    from multihost_launch import COORDINATOR, launch

    worker = tmp_path / "fsdp_worker.py"
    worker.write_text(TWO_PROCESSES)
    out = []
    commands = []
    for i in range(n_processes):
        result = str(tmp_path / f"{name}{i}")
        # Process 1 leaves sharding at None: it takes process 0's.
        args = {"output_dir": str(output_dir or tmp_path / name),
                "sharding": sharding if i == 0 else None,
                "steps": steps, "result": result, "num_processes": n_processes,
                "coordinator": COORDINATOR, "process_id": i}
        commands.append([str(worker), json.dumps(args)])
        out.append(result)
    launch(commands, n_devices=8 // n_processes, timeout=600)
    runs = []
    for result in out:
        with open(result + ".json") as f:
            info = json.load(f)
        with np.load(result + ".npz") as z:
            info["weights"] = [z[f"arr_{i}"] for i in range(len(z.files))]
        runs.append(info)
    return runs


@pytest.mark.slow  # three multi-process launches, ~1 minute
def test_two_process_fsdp_checkpoints_are_whole_and_resume_unsharded(tmp_path):
    (ref,) = _fsdp_run(tmp_path, "one", 1, "fsdp", 4)
    two = _fsdp_run(tmp_path, "two", 2, "fsdp", 4)
    assert two[0]["specs"] == [[None, "data"], [None, "data"], [], ["data"], []]
    assert two[0]["sharding"] == two[1]["sharding"] == "fsdp"  # process 1 took process 0's
    assert two[0]["losses"] == two[1]["losses"]
    np.testing.assert_allclose(two[0]["losses"], ref["losses"], rtol=1e-5)
    for a, b, c in zip(two[0]["weights"], two[1]["weights"], ref["weights"]):
        np.testing.assert_array_equal(a, b)  # the gathered arrays, whole in both processes
        np.testing.assert_allclose(a, c, rtol=0, atol=1e-5)
    # Process 0 wrote whole arrays: one replicated process resumes from them exactly.
    (resumed,) = _fsdp_run(tmp_path, "resumed", 1, "replicated", 4,
                           output_dir=tmp_path / "two")
    assert resumed["step"] == 4 and all(spec == [] for spec in resumed["specs"])
    for a, b in zip(resumed["weights"], two[0]["weights"]):
        np.testing.assert_array_equal(a, b)
